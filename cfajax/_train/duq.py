"""Training and evaluating `DUQ` (centroids by moving average, gradient penalty)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfajax._batching import map_batches
from cfajax._data import ImageDataset
from cfajax._models import DUQ
from cfajax._models import Centroid
from cfajax._train._epochs import History
from cfajax._train._epochs import _check_images
from cfajax._train._epochs import _fit
from cfajax._train._epochs import make_optimizer


def _class_labels(dataset: ImageDataset, num_classes: int, model_name: str) -> np.ndarray:
  """The dataset's int32 class labels, checked to lie in [0, num_classes)."""
  if dataset.labels is None:
    raise ValueError(f"{dataset.name or 'dataset'} has no class labels; a {model_name} "
                     "learns classes")
  labels = np.asarray(dataset.labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{dataset.name or 'dataset'} labels must be (n,) integers; got "
                     f"{labels.dtype} of shape {labels.shape}")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels lie in [{labels.min()}, {labels.max()}]; the {model_name} has "
                     f"{num_classes} classes")
  return labels.astype(np.int32)


_DUQ_WEIGHTS = nnx.All(nnx.Param, nnx.Not(Centroid))  # what the optimizer moves


@nnx.jit
def _duq_train_step(duq: DUQ, optimizer: nnx.Optimizer, x, y, _, gradient_penalty):
  def loss_fn(duq):
    return duq.loss(x, y, gradient_penalty)
  (_, metrics), grads = nnx.value_and_grad(
      loss_fn, argnums=nnx.DiffState(0, _DUQ_WEIGHTS), has_aux=True)(duq)
  optimizer.update(duq, grads)
  duq.update_centroids(x, y)  # with the weights just updated, as DUQ's reference code does
  return metrics


@nnx.jit
def _duq_example_metrics(duq: DUQ, x, y):
  log_certainty = duq.log_certainty(x)
  return {"correct": jnp.argmax(log_certainty, -1) == y,
          "certainty": jnp.exp(jnp.max(log_certainty, -1))}


def evaluate_duq(duq: DUQ, dataset: ImageDataset, *, batch_size: int = 256) -> dict[str, float]:
  """Held-out "accuracy" (argmax certainty) and mean "certainty" of the chosen class."""
  _check_images(duq.config.image_shape, dataset)
  if dataset.labels is None:
    raise ValueError(f"{dataset.name or 'dataset'} has no class labels to evaluate DUQ on")
  per_example = map_batches(
      lambda x, y: _duq_example_metrics(duq, jnp.asarray(x), jnp.asarray(y)),
      [dataset.images, np.asarray(dataset.labels, np.int32)], batch_size)
  return {"accuracy": float(np.mean(per_example["correct"])),
          "certainty": float(np.mean(per_example["certainty"]))}


def train_duq(
    duq: DUQ,
    train: ImageDataset,
    test: ImageDataset | None = None,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    gradient_penalty: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[DUQ, History]:
  """Trains a DUQ model in place on a dataset's class labels.

  Each step takes an Adam step on DUQ's loss (per-class binary cross-entropy
  of the certainties plus `gradient_penalty` times the two-sided penalty on
  the input gradient's norm, which keeps the features sensitive to the
  input so that inputs far from the data are told apart), then moves the
  centroids toward the batch's embeddings.

  Returns:
    `(duq, history)`: one record per epoch with "train_loss", "train_bce",
    "train_penalty", "train_accuracy", "test_accuracy", "test_certainty"
    (when `test` is given) and "seconds".
  """
  _check_images(duq.config.image_shape, train)
  labels = _class_labels(train, duq.config.num_classes, "DUQ model")
  if test is not None:
    _check_images(duq.config.image_shape, test)
  penalty = float(gradient_penalty)
  steps = epochs * (len(train) // min(int(batch_size), len(train)))
  optimizer = nnx.Optimizer(duq, make_optimizer(learning_rate, max(steps, 1)), wrt=_DUQ_WEIGHTS)
  step = lambda model, opt, x, y, key: _duq_train_step(model, opt, x, y, key, penalty)
  evaluate = (lambda: {}) if test is None else (lambda: evaluate_duq(duq, test))
  history = _fit(duq, train, labels, step, evaluate, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate, weight_decay=0.0, seed=seed, progress=progress,
                 on_epoch=on_epoch, desc="train duq", optimizer=optimizer)
  return duq, history
