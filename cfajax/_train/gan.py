"""Training and evaluating the `ConvGAN` (non-saturating loss, R1 penalty)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfajax._batching import map_batches
from cfajax._inversion import invert
from cfajax._models import ConvGAN
from cfajax._train._epochs import History
from cfajax._train._epochs import _checked_images
from cfajax._train._epochs import _fit


def _d_loss(discriminator, generator, x, z, r1_gamma):
  """Non-saturating discriminator loss plus the R1 penalty on real images."""
  fake = jax.lax.stop_gradient(generator(z))
  real_logits, fake_logits = discriminator(x), discriminator(fake)
  loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  # R1 (Mescheder et al. 2018): gamma / 2 * E |grad_x D(x)|^2 on real data.
  grad_x = jax.grad(lambda images: jnp.sum(discriminator(images)))(x)
  r1 = jnp.mean(jnp.sum(jnp.square(grad_x), axis=(1, 2, 3)))
  metrics = {"d_loss": loss, "r1": r1, "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
             "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits))}
  return loss + 0.5 * r1_gamma * r1, metrics


@nnx.jit
def _gan_train_step(gan: ConvGAN, optimizers, x, _, key, r1_gamma):
  d_optimizer, g_optimizer = optimizers
  z_d, z_g = jax.random.normal(key, (2, x.shape[0], gan.config.latent_dim), x.dtype)
  grads, metrics = nnx.grad(_d_loss, has_aux=True)(gan.discriminator, gan.generator, x, z_d,
                                                   r1_gamma)
  d_optimizer.update(gan.discriminator, grads)

  def g_loss(generator):
    return jnp.mean(jax.nn.softplus(-gan.discriminator(generator(z_g))))

  loss, grads = nnx.value_and_grad(g_loss)(gan.generator)
  g_optimizer.update(gan.generator, grads)
  return {"loss": loss + metrics["d_loss"], "g_loss": loss, **metrics}


@nnx.jit
def _gan_scores(gan: ConvGAN, x, key):
  z = jax.random.normal(key, (x.shape[0], gan.config.latent_dim), x.dtype)
  return {"d_real": jax.nn.sigmoid(gan.discriminate(x)),
          "d_fake": jax.nn.sigmoid(gan.discriminate(gan.decode(z)))}


def evaluate_gan(gan: ConvGAN, data, *, batch_size: int = 256, seed: int = 0,
                 inversion_images: int = 64, inversion_steps: int = 100) -> dict[str, float]:
  """Held-out checks of a GAN.

  Returns:
    "d_real" and "d_fake": the discriminator's mean probability of "real"
    on held-out images and on as many generated ones; "inversion_mse": the
    median pixel MSE of the best latent `invert` finds (2 starts,
    `inversion_steps` Adam steps) for the first `inversion_images` held-out
    images, which says how well the generator covers real data (0 images:
    not measured).
  """
  dataset = _checked_images(data, "images", gan.config.image_shape)
  key = jax.random.key(seed)
  counter = itertools.count()
  scores = map_batches(
      lambda x: _gan_scores(gan, jnp.asarray(x), jax.random.fold_in(key, next(counter))),
      [dataset.images], batch_size)
  out = {k: float(np.mean(v)) for k, v in scores.items()}
  if inversion_images:
    images = dataset.images[:inversion_images]
    result = invert(gan.decode, images, latent_dim=gan.config.latent_dim, starts=2,
                    max_steps=inversion_steps, seed=seed, batch_size=len(images) * 2)
    out["inversion_mse"] = float(np.median(result.pixel_mse))
  return out


def train_gan(
    gan: ConvGAN,
    train,
    test=None,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 2e-4,
    r1_gamma: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ConvGAN, History]:
  """Trains a GAN in place: the non-saturating loss with an R1 penalty.

  Each step updates the discriminator once (softplus losses on real and
  generated images, plus `r1_gamma / 2` times the squared norm of its
  gradient on real images), then the generator once (softplus(-D(G(z)))).
  Both use Adam(b1 = 0.5, b2 = 0.999) at a constant `learning_rate`, the
  usual DCGAN settings.

  Args:
    gan: the model (its weights are updated in place).
    train: an `ImageDataset` or (n, H, W, C) images in [0, 1].
    test: held-out images checked after each epoch (`evaluate_gan`), or None.
    epochs, batch_size, seed, progress, on_epoch: as in `train_vae`.
    learning_rate: both optimizers' learning rate.
    r1_gamma: weight of the R1 penalty.

  Returns:
    `(gan, history)`: one record per epoch with "epoch", "train_d_loss",
    "train_g_loss", "train_r1", "train_d_real", "train_d_fake", the
    `evaluate_gan` numbers with "test_" when `test` is given, and "seconds".
  """
  train = _checked_images(train, "train", gan.config.image_shape)
  if test is not None:
    test = _checked_images(test, "test", gan.config.image_shape)
  r1 = float(r1_gamma)
  tx = optax.adam(learning_rate, b1=0.5, b2=0.999)
  optimizers = (nnx.Optimizer(gan.discriminator, tx, wrt=nnx.Param),
                nnx.Optimizer(gan.generator, tx, wrt=nnx.Param))
  step = lambda model, pair, x, y, key: _gan_train_step(model, pair, x, y, key, r1)
  evaluate = (lambda: {}) if test is None else (lambda: evaluate_gan(gan, test, seed=seed))
  history = _fit(gan, train, None, step, evaluate, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate, weight_decay=0.0, seed=seed, progress=progress,
                 on_epoch=on_epoch, desc="train gan", optimizer=optimizers)
  return gan, history
