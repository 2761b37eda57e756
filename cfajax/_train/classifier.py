"""Training and evaluating the `Classifier`, plainly or against PGD (adversarial training)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfajax import _checks
from cfajax._batching import map_batches
from cfajax._data import ImageDataset
from cfajax._models import Classifier
from cfajax._models import bernoulli_bce
from cfajax._pgd import NORMS
from cfajax._pgd import pgd_images
from cfajax._train._epochs import History
from cfajax._train._epochs import _check_images
from cfajax._train._epochs import _fit
from cfajax._train._epochs import _flatten


def classifier_targets(classifier: Classifier, dataset: ImageDataset) -> np.ndarray:
  """The labels a classifier learns from a dataset.

  A softmax head takes `dataset.labels` (n,). A sigmoid head takes the
  attribute columns named by `config.output_names` (n, K), or all attributes
  if K matches and no names are set, or the labels as one binary attribute
  (n, 1) when K == 1.

  Raises:
    ValueError: if the dataset has no such labels or attributes.
  """
  config = classifier.config
  what = dataset.name or "dataset"
  if config.head == "softmax":
    if dataset.labels is None:
      raise ValueError(f"a softmax classifier needs class labels; {what} has none")
    labels = np.asarray(dataset.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= config.num_outputs):
      raise ValueError(f"{what} has labels in [{labels.min()}, {labels.max()}]; the "
                       f"classifier has {config.num_outputs} classes")
    return labels.astype(np.int32)
  if dataset.attributes is not None:
    if config.output_names:
      missing = [n for n in config.output_names if n not in dataset.attribute_names]
      if missing:
        raise ValueError(f"{what} has no attributes {missing}; it has "
                         f"{list(dataset.attribute_names)}")
      columns = [dataset.attribute_index(n) for n in config.output_names]
      return np.asarray(dataset.attributes[:, columns], np.int32)
    if dataset.attributes.shape[1] == config.num_outputs:
      return np.asarray(dataset.attributes, np.int32)
  if (config.num_outputs == 1 and dataset.labels is not None
      and np.isin(dataset.labels, (0, 1)).all()):
    return np.asarray(dataset.labels, np.int32)[:, None]
  raise ValueError(
      f"a sigmoid classifier with {config.num_outputs} outputs "
      f"{list(config.output_names) or ''} needs matching binary attributes; {what} has "
      f"{list(dataset.attribute_names) or 'no attributes'}")


def _classifier_update(classifier: Classifier, optimizer: nnx.Optimizer, x, y):
  def loss_fn(classifier):
    return classifier.loss(x, y)
  (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(classifier)
  optimizer.update(classifier, grads)
  return metrics


@nnx.jit
def _classifier_train_step(classifier: Classifier, optimizer: nnx.Optimizer, x, y, _):
  return _classifier_update(classifier, optimizer, x, y)


@functools.partial(nnx.jit, static_argnames=("steps", "norm"))
def _adversarial_train_step(classifier: Classifier, optimizer: nnx.Optimizer, x, y, key,
                            epsilon, *, steps, norm):
  """One step on the batch's PGD images (Madry et al.): the worst case within epsilon of
  each image under the current weights, from a random start."""
  keys = jax.random.split(key, x.shape[0])
  labels = y if y.ndim == 1 else y[:, 0].astype(jnp.int32)  # one sigmoid logit: (B, 1)
  adversarial = pgd_images(classifier, x, labels, keys, epsilon, 2.5 * epsilon / steps,
                           steps=steps, norm=norm)
  return _classifier_update(classifier, optimizer, jax.lax.stop_gradient(adversarial), y)


@nnx.jit
def _classifier_example_metrics(classifier: Classifier, x, y):
  logits = classifier(x)
  if classifier.config.head == "softmax":
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)[:, 0]
    return {"loss": loss, "correct": (jnp.argmax(logits, -1) == y)[:, None]}
  y = y.astype(logits.dtype)
  return {"loss": jnp.mean(bernoulli_bce(logits, y), axis=-1), "correct": (logits > 0) == (y > 0.5)}


def evaluate_classifier(
    classifier: Classifier, dataset: ImageDataset, *, batch_size: int = 256,
) -> dict[str, float]:
  """Held-out loss and accuracy of a classifier.

  Returns:
    "loss" (mean cross-entropy) and "accuracy"; for a sigmoid head also
    "accuracy/<name>" per attribute ("accuracy" is then their mean).
  """
  _check_images(classifier.config.image_shape, dataset)
  targets = classifier_targets(classifier, dataset)
  per_example = map_batches(
      lambda x, y: _classifier_example_metrics(classifier, jnp.asarray(x), jnp.asarray(y)),
      [dataset.images, targets], batch_size)
  out = {"loss": float(np.mean(per_example["loss"])),
         "accuracy": float(np.mean(per_example["correct"]))}
  if classifier.config.head == "sigmoid":
    out.update(_flatten({"accuracy_per_output": per_example["correct"].mean(0)},
                        classifier.config.output_names))
  return out


def train_classifier(
    classifier: Classifier,
    train: ImageDataset,
    test: ImageDataset | None = None,
    *,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    pgd_epsilon: float = 0.0,
    pgd_norm: str = "linf",
    pgd_steps: int = 7,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Classifier, History]:
  """Trains a classifier in place: softmax cross-entropy, or sigmoid BCE per attribute.

  The targets come from `classifier_targets` (labels for a softmax head,
  the attributes named in `config.output_names` for a sigmoid head).

  Args:
    classifier: the model to train (its weights are updated in place).
    train: the training examples.
    test: held-out examples evaluated after each epoch, or None.
    epochs, batch_size, learning_rate, weight_decay, seed, progress,
      on_epoch: as in `train_vae`.
    pgd_epsilon: above 0, PGD adversarial training (Madry et al., ICLR 2018):
      every step learns from its batch's `pgd_attack` images instead (radius
      `pgd_epsilon` in `pgd_norm`, `pgd_steps` steps of 2.5 epsilon / steps,
      a random start), found against the weights of that step; it costs
      about `pgd_steps + 1` plain steps. One-label heads only (softmax, or
      one sigmoid logit). `test` is evaluated on clean images.

  Returns:
    `(classifier, history)`: the trained model and one record per epoch with
    "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"
    (and "test_accuracy/<name>" per attribute), and "seconds".
  """
  step = _classifier_train_step
  if pgd_epsilon:
    step = _adversarial_step(classifier, pgd_epsilon, pgd_norm, pgd_steps)
  _check_images(classifier.config.image_shape, train)
  targets = classifier_targets(classifier, train)
  if test is not None:
    _check_images(classifier.config.image_shape, test)
    classifier_targets(classifier, test)  # fail before training, not after
  evaluate = (lambda: {}) if test is None else (
      lambda: evaluate_classifier(classifier, test, batch_size=max(batch_size, 256)))
  history = _fit(
      classifier, train, targets, step, evaluate, epochs=epochs, batch_size=batch_size,
      learning_rate=learning_rate, weight_decay=weight_decay, seed=seed, progress=progress,
      on_epoch=on_epoch, desc="train classifier", names=classifier.config.output_names)
  return classifier, history


def _adversarial_step(classifier: Classifier, epsilon, norm, steps):
  """The training step of PGD adversarial training, its options checked."""
  epsilon = _checks.number("pgd_epsilon", epsilon, low=0.0)
  _checks.choice("pgd_norm", norm, NORMS)
  steps = _checks.integer("pgd_steps", steps, low=1)
  config = classifier.config
  if config.head == "sigmoid" and config.num_outputs > 1:
    raise ValueError(f"PGD training needs one label per image: a softmax head or one sigmoid "
                     f"logit; this classifier has {config.num_outputs} sigmoid attributes")
  return lambda model, optimizer, x, y, key: _adversarial_train_step(
      model, optimizer, x, y, key, jnp.float32(epsilon), steps=steps,
      norm=norm)
