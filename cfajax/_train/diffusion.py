"""Training and evaluating a `DiffusionGenerator`'s noise predictor: DDPM's epsilon
objective, with an exponential moving average (EMA) of the weights as the model kept."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfajax._batching import map_batches
from cfajax._models import DiffusionGenerator
from cfajax._models.diffusion import alphas_like
from cfajax._train._epochs import History
from cfajax._train._epochs import _checked_images
from cfajax._train._epochs import _fit

RECONSTRUCTION_IMAGES = 256  # held-out images reconstructed after each epoch


def _noised(schedule, x: jax.Array, key: jax.Array):
  """(x_t, t, noise): images (B, H, W, C) in [0, 1] noised at uniform timesteps."""
  t_key, noise_key = jax.random.split(key)
  t = jax.random.randint(t_key, (x.shape[0],), 0, schedule.num_train_timesteps)
  noise = jax.random.normal(noise_key, x.shape, x.dtype)
  alpha = alphas_like(schedule, x)[t][:, None, None, None]
  return jnp.sqrt(alpha) * (2 * x - 1) + jnp.sqrt(1 - alpha) * noise, t, noise


def epsilon_errors(model: DiffusionGenerator, x: jax.Array, key: jax.Array) -> jax.Array:
  """(B,) mean squared error of the predicted noise, at a uniform timestep per image."""
  x_t, t, noise = _noised(model.schedule, x, key)
  return jnp.mean(jnp.square(model.unet(x_t, t) - noise), axis=(1, 2, 3))


@nnx.jit
def _diffusion_train_step(model: DiffusionGenerator, optimizer: nnx.Optimizer, ema, x, key,
                          step, ema_decay):
  def loss_fn(model):
    return jnp.mean(epsilon_errors(model, x, key))
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  # The average's decay warms up, so the first steps' weights fade out of it.
  decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
  params = nnx.state(model, nnx.Param)
  ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
  return {"loss": loss}, ema


@nnx.jit
def _epsilon_metrics(model: DiffusionGenerator, x, key):
  return {"loss": epsilon_errors(model, x, key)}


@nnx.jit
def _reconstruction_errors(model: DiffusionGenerator, x):
  return jnp.mean(jnp.square(model.decode(model.encode(x)) - x), axis=(1, 2, 3))


def evaluate_diffusion(model: DiffusionGenerator, data, *, batch_size: int = 256, seed: int = 0,
                       reconstruction_images: int = RECONSTRUCTION_IMAGES) -> dict[str, float]:
  """Held-out metrics of a diffusion generator, averaged over the images.

  Args:
    model: the generator.
    data: an `ImageDataset` or (n, H, W, C) images in [0, 1].
    batch_size: images per compiled call.
    seed: the timesteps and noise of the epsilon loss.
    reconstruction_images: how many of the first images to reconstruct (0: none).

  Returns:
    "loss": the noise predictor's mean squared error at uniform timesteps
    (DDPM's training objective); "recon_mse": the pixel MSE of
    `decode(encode(x))` at the model's edit (steps and depth), over the first
    `reconstruction_images` images.
  """
  dataset = _checked_images(data, "images", model.image_shape)
  key = jax.random.key(seed)
  counter = itertools.count()
  per_example = map_batches(
      lambda x: _epsilon_metrics(model, jnp.asarray(x), jax.random.fold_in(key, next(counter))),
      [dataset.images], batch_size)
  metrics = {"loss": float(np.mean(per_example["loss"]))}
  if reconstruction_images:
    images = dataset.images[:reconstruction_images]
    errors = map_batches(lambda x: _reconstruction_errors(model, jnp.asarray(x)), [images],
                         batch_size)
    metrics["recon_mse"] = float(np.mean(errors))
  return metrics


def train_diffusion(
    model: DiffusionGenerator,
    train,
    test=None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    ema_decay: float = 0.999,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[DiffusionGenerator, History]:
  """Trains a diffusion generator's noise predictor on DDPM's epsilon objective.

  Each step noises a batch at uniform timesteps of the model's schedule and
  regresses the noise; an exponential moving average of the weights (decay
  `ema_decay`, warmed up as (1 + k) / (10 + k) over the first steps k) is
  kept beside them and is what the returned model holds.

  Args:
    model: the generator whose UNet is trained; its schedule's prediction
      type must be "epsilon".
    train: an `ImageDataset` or (n, H, W, C) images in [0, 1].
    test: held-out data evaluated with the averaged weights after each epoch
      (`evaluate_diffusion`), or None.
    epochs: passes over `train`.
    batch_size: images per step; the last partial batch of an epoch is dropped.
    learning_rate: peak Adam learning rate (warmup over the first 5% of
      steps, then cosine decay to 1% of it).
    ema_decay: the moving average's decay, in [0, 1).
    seed: seeds the batch order, timesteps and noise.
    progress: show a progress bar.
    on_epoch: called with each epoch's metrics record.

  Returns:
    `(model, history)`: the model holding the averaged weights, and one
    record per epoch with "epoch", "train_loss" (the trained weights'),
    "test_loss" and "test_recon_mse" (the averaged weights') when `test` is
    given, and "seconds".
  """
  if not isinstance(model, DiffusionGenerator):
    raise TypeError(f"train_diffusion trains a DiffusionGenerator; got {type(model).__name__}")
  if model.schedule.prediction_type != "epsilon":
    raise ValueError(f"train_diffusion trains noise predictors (prediction_type 'epsilon'); "
                     f"this model's schedule predicts {model.schedule.prediction_type!r}")
  if not 0 <= ema_decay < 1:
    raise ValueError(f"ema_decay must be in [0, 1); got {ema_decay}")
  train = _checked_images(train, "train", model.image_shape)
  if test is not None:
    test = _checked_images(test, "test", model.image_shape)
  average = {"params": jax.tree_util.tree_map(jnp.copy, nnx.state(model, nnx.Param)),
             "step": 0}

  def step(model, optimizer, x, _, key):
    metrics, average["params"] = _diffusion_train_step(model, optimizer, average["params"], x,
                                                       key, average["step"], ema_decay)
    average["step"] += 1
    return metrics

  def averaged() -> DiffusionGenerator:
    copy = nnx.clone(model)
    nnx.update(copy, average["params"])
    return copy

  evaluate = (lambda: {}) if test is None else (
      lambda: evaluate_diffusion(averaged(), test, batch_size=max(batch_size, 256), seed=seed))
  history = _fit(model, train, None, step, evaluate, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate, weight_decay=0.0, seed=seed, progress=progress,
                 on_epoch=on_epoch, desc="train diffusion")
  nnx.update(model, average["params"])
  return model, history
