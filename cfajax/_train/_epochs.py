"""What every trainer shares: the checked dataset, the optimizer, the epoch loop with its
progress bar, and the metrics' reduction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfajax._data import ImageDataset
from cfajax._progress import progress_bar

History = list[dict[str, Any]]


def _as_dataset(data, name: str) -> ImageDataset:
  if isinstance(data, ImageDataset):
    return data
  images = np.asarray(data, np.float32)
  return ImageDataset(images, name=name)


def _check_images(model_shape, dataset: ImageDataset):
  if dataset.image_shape != tuple(model_shape):
    raise ValueError(
        f"{dataset.name or 'dataset'} has images of shape {dataset.image_shape}; the model "
        f"expects {tuple(model_shape)}")
  if len(dataset) == 0:
    raise ValueError(f"{dataset.name or 'dataset'} is empty")


def _checked_images(data, name: str, model_shape) -> ImageDataset:
  """`data` (an `ImageDataset` or an image array) as a non-empty dataset whose images fit
  the model."""
  dataset = _as_dataset(data, name)
  _check_images(model_shape, dataset)
  return dataset


def make_optimizer(
    learning_rate: float, total_steps: int, warmup_fraction: float = 0.05,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  """Adam(W) with a linear warmup to `learning_rate`, then cosine decay to 1% of it."""
  warmup = max(1, int(warmup_fraction * total_steps))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=learning_rate * 0.01)
  if weight_decay:
    return optax.adamw(schedule, weight_decay=weight_decay)
  return optax.adam(schedule)


def _mean_metrics(per_step: list[dict[str, jax.Array]]) -> dict[str, np.ndarray]:
  return jax.tree_util.tree_map(lambda *a: np.mean(np.stack(a), axis=0), *per_step)


def _fit(model, dataset: ImageDataset, targets, step_fn, evaluate, *, epochs, batch_size,
         learning_rate, weight_decay, seed, progress, on_epoch, desc, names=(),
         optimizer=None) -> History:
  """The epoch loop shared by the trainers.

  `step_fn(model, optimizer, x, y, key)` gets `optimizer`: by default one
  (Adam)W of the model's parameters from `learning_rate` and `weight_decay`;
  the GAN passes its own pair.
  """
  n = len(dataset)
  batch_size = min(int(batch_size), n)
  steps_per_epoch = n // batch_size
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1; got {epochs}")
  if optimizer is None:
    tx = make_optimizer(learning_rate, epochs * steps_per_epoch, weight_decay=weight_decay)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  order_rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  history: History = []
  with progress_bar(progress, total=epochs * steps_per_epoch, desc=desc, unit="step") as bar:
    for epoch in range(1, epochs + 1):
      start = time.perf_counter()
      order = order_rng.permutation(n)
      per_step = []
      for i in range(steps_per_epoch):
        rows = np.sort(order[i * batch_size:(i + 1) * batch_size])
        y = None if targets is None else jnp.asarray(targets[rows])
        step_key = jax.random.fold_in(key, (epoch - 1) * steps_per_epoch + i)
        per_step.append(step_fn(model, optimizer, jnp.asarray(dataset.images[rows]), y,
                                step_key))
        if bar is not None:
          bar.update()
          if i % 50 == 0:
            bar.set_postfix(epoch=epoch, loss=f"{float(per_step[-1]['loss']):.4g}")
      record: dict[str, Any] = {"epoch": epoch}
      record.update({f"train_{k}": v
                     for k, v in _flatten(_mean_metrics(per_step), names).items()})
      record.update({f"test_{k}": v for k, v in evaluate().items()})
      record["seconds"] = time.perf_counter() - start
      history.append(record)
      if on_epoch is not None:
        on_epoch(record)
  return history


def _flatten(metrics: dict[str, Any], names: Sequence[str] = ()) -> dict[str, float]:
  """Scalars as floats; a per-output vector "x_per_output" as "x/<name>" entries."""
  out = {}
  for key, value in metrics.items():
    value = np.asarray(value)
    if value.ndim == 0:
      out[key] = float(value)
      continue
    base = key.removesuffix("_per_output")
    labels = names if len(names) == value.size else range(value.size)
    out.update({f"{base}/{label}": float(v) for label, v in zip(labels, value, strict=True)})
  return out
