"""Training and evaluating the `ConvVAE`."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfajax._batching import map_batches
from cfajax._models import ConvVAE
from cfajax._models import bernoulli_bce
from cfajax._models import gaussian_kl
from cfajax._train._epochs import History
from cfajax._train._epochs import _checked_images
from cfajax._train._epochs import _fit


@nnx.jit
def _vae_train_step(vae: ConvVAE, optimizer: nnx.Optimizer, x, _, key):
  def loss_fn(vae):
    return vae.loss(x, nnx.Rngs(sample=key))
  (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(vae)
  optimizer.update(vae, grads)
  return metrics


@nnx.jit
def _vae_example_metrics(vae: ConvVAE, x, key):
  """Per-example (B,) metrics: reconstruction of the mean latent, and the sampled loss."""
  mean, logvar = vae.encode_stats(x)
  logits = vae.decode_logits(mean)
  bce = jnp.mean(bernoulli_bce(logits, x), axis=(1, 2, 3))
  mse = jnp.mean(jnp.square(jax.nn.sigmoid(logits) - x), axis=(1, 2, 3))
  kl = gaussian_kl(mean, logvar)
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
  sampled_bce = jnp.sum(bernoulli_bce(vae.decode_logits(z), x), axis=(1, 2, 3))
  return {"loss": sampled_bce + vae.config.beta * kl, "recon_bce": bce, "mse": mse, "kl": kl}


def evaluate_vae(vae: ConvVAE, data, *, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
  """Held-out metrics of a VAE, averaged over the images.

  Args:
    vae: the model.
    data: an `ImageDataset` or (n, H, W, C) images in [0, 1].
    batch_size: images per compiled call.
    seed: the noise of the sampled loss.

  Returns:
    "recon_bce" and "mse": per-pixel binary cross-entropy (nats) and squared
    error of the deterministic reconstruction `decode(encode(x))`; "kl": KL
    to the prior (nats per image); "loss": the negative beta-ELBO per image
    with one posterior sample.
  """
  dataset = _checked_images(data, "images", vae.config.image_shape)
  key = jax.random.key(seed)
  counter = itertools.count()
  per_example = map_batches(
      lambda x: _vae_example_metrics(vae, jnp.asarray(x), jax.random.fold_in(key, next(counter))),
      [dataset.images], batch_size)
  return {k: float(np.mean(v)) for k, v in per_example.items()}


def train_vae(
    vae: ConvVAE,
    train,
    test=None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ConvVAE, History]:
  """Trains a VAE in place on the negative beta-ELBO (`ConvVAE.loss`).

  Args:
    vae: the model to train (its weights are updated in place).
    train: an `ImageDataset` or (n, H, W, C) images in [0, 1].
    test: held-out data evaluated after each epoch (`evaluate_vae`), or None.
    epochs: passes over `train`.
    batch_size: images per step; the last partial batch of an epoch is dropped.
    learning_rate: peak Adam learning rate (warmup over the first 5% of
      steps, then cosine decay to 1% of it).
    weight_decay: decoupled weight decay (AdamW) if > 0.
    seed: seeds the batch order and the posterior samples.
    progress: show a progress bar.
    on_epoch: called with each epoch's metrics record.

  Returns:
    `(vae, history)`: the trained model and one record per epoch with
    "epoch", "train_loss", "train_recon_bce", "train_mse", "train_kl", the
    same with "test_" when `test` is given, and "seconds".
  """
  train = _checked_images(train, "train", vae.config.image_shape)
  if test is not None:
    test = _checked_images(test, "test", vae.config.image_shape)
  evaluate = (lambda: {}) if test is None else (
      lambda: evaluate_vae(vae, test, batch_size=max(batch_size, 256), seed=seed))
  history = _fit(
      vae, train, None, _vae_train_step, evaluate, epochs=epochs, batch_size=batch_size,
      learning_rate=learning_rate, weight_decay=weight_decay, seed=seed, progress=progress,
      on_epoch=on_epoch, desc="train vae")
  return vae, history
