"""Training and evaluating the `Translator` and its critic."""

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
from cfajax._data import ImageDataset
from cfajax._models import Translator
from cfajax._models import translate_with
from cfajax._train._epochs import History
from cfajax._train._epochs import _check_images
from cfajax._train._epochs import _fit
from cfajax._train.duq import _class_labels


def other_classes(key: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """(B,) targets drawn uniformly from the classes other than each label."""
  shift = jax.random.randint(key, labels.shape, 1, num_classes)
  return (labels + shift) % num_classes


def _critic_loss(critic, generator, x, y, target):
  """Cross-entropy over K + 1 outputs: real images as their class, translated ones as "fake"."""
  fake = jax.lax.stop_gradient(translate_with(generator, x, target))
  real_logits, fake_logits = critic(x), critic(fake)
  k = real_logits.shape[-1] - 1
  real = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(real_logits, y))
  flagged = -jnp.mean(jax.nn.log_softmax(fake_logits)[:, k])
  accuracy = jnp.mean(jnp.argmax(real_logits[:, :k], -1) == y)
  return real + flagged, {"critic_real": real, "critic_fake": flagged,
                          "accuracy": accuracy}


def _translation_loss(generator, critic, x, y, target, weights):
  """What the translation network minimises: the critic's cross-entropy of the
  target (over K + 1 outputs: the image must look real and of class `target`),
  `cycle` times the mean |G(G(x, t), y) - x|, and `change` times the mean
  |G(x, t) - x| and |G(G(x, t), y) - G(x, t)| (small changes, in few pixels)."""
  adversarial_weight, cycle_weight, change_weight = weights
  translated = translate_with(generator, x, target)
  logits = critic(translated)
  adversarial = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, target))
  back = translate_with(generator, translated, y)
  cycle = jnp.mean(jnp.abs(back - x))
  change = 0.5 * (jnp.mean(jnp.abs(translated - x)) + jnp.mean(jnp.abs(back - translated)))
  loss = adversarial_weight * adversarial + cycle_weight * cycle + change_weight * change
  flipped = jnp.mean(jnp.argmax(logits, -1) == target)
  return loss, {"g_loss": loss, "adversarial": adversarial, "cycle": cycle, "change": change,
                "flipped": flipped}


@nnx.jit
def _translator_train_step(translator: Translator, optimizers, x, y, key, weights):
  critic_optimizer, generator_optimizer = optimizers
  critic, generator = translator.critic, translator.generator
  target = other_classes(key, y, translator.config.num_classes)
  grads, critic_metrics = nnx.grad(_critic_loss, has_aux=True)(critic, generator, x, y, target)
  critic_optimizer.update(critic, grads)
  grads, metrics = nnx.grad(_translation_loss, has_aux=True)(generator, critic, x, y, target,
                                                             weights)
  generator_optimizer.update(generator, grads)
  loss = metrics["g_loss"] + critic_metrics["critic_real"] + critic_metrics["critic_fake"]
  return {"loss": loss, **critic_metrics, **metrics}


@nnx.jit
def _translator_example_metrics(translator: Translator, x, y, key):
  target = other_classes(key, y, translator.config.num_classes)
  translated = translator.translate(x, target)
  real_logits, logits = translator.critic_logits(x), translator.critic_logits(translated)
  return {"accuracy": jnp.argmax(real_logits[:, :-1], -1) == y,
          "fakeness_real": jax.nn.softmax(real_logits)[:, -1],
          "fakeness_translated": jax.nn.softmax(logits)[:, -1],
          "flipped": jnp.argmax(logits[:, :-1], -1) == target,
          "change": jnp.mean(jnp.abs(translated - x), axis=(1, 2, 3))}


def evaluate_translator(translator: Translator, dataset: ImageDataset, *, batch_size: int = 256,
                        seed: int = 0) -> dict[str, float]:
  """Held-out checks of a translator, each image translated to a random other class.

  Returns:
    "accuracy" (the critic's class of real images), "flipped" (the critic's
    class of the translations is their target), "fakeness_real" and
    "fakeness_translated" (the critic's mean probability of "fake") and
    "change" (mean |x' - x| per pixel).
  """
  _check_images(translator.config.image_shape, dataset)
  labels = _class_labels(dataset, translator.config.num_classes, "translator")
  key = jax.random.key(seed)
  counter = itertools.count()
  per_example = map_batches(
      lambda x, y: _translator_example_metrics(translator, jnp.asarray(x), jnp.asarray(y),
                                               jax.random.fold_in(key, next(counter))),
      [dataset.images, labels], batch_size)
  return {k: float(np.mean(v)) for k, v in per_example.items()}


def train_translator(
    translator: Translator,
    train: ImageDataset,
    test: ImageDataset | None = None,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 2e-4,
    adversarial_weight: float = 1.0,
    cycle_weight: float = 10.0,
    change_weight: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Translator, History]:
  """Trains a translator and its classifier-discriminator in place (Bischof et al.).

  Each step draws for every image a target among the other classes, then
  updates the critic once (cross-entropy over K + 1 outputs: real images as
  their labels, their translations as "fake"), then the translation network
  once (`_translation_loss`: the critic must call the translation real and of
  the target class; translating back must give the image again; the change
  should be small, so that only what decides the class is changed). Both use
  Adam(b1 = 0.5, b2 = 0.999) at a constant `learning_rate`.

  Args:
    translator: the model (its weights are updated in place).
    train: images with int class labels in [0, K).
    test: held-out labelled images checked after each epoch
      (`evaluate_translator`), or None.
    adversarial_weight, cycle_weight, change_weight: the translation loss's terms.
    epochs, batch_size, learning_rate, seed, progress, on_epoch: as in `train_gan`.

  Returns:
    `(translator, history)`: one record per epoch with the step metrics
    ("train_critic_real", "train_critic_fake", "train_accuracy",
    "train_adversarial", "train_cycle", "train_change", "train_flipped"), the
    `evaluate_translator` numbers with "test_" when `test` is given, and
    "seconds".
  """
  k = translator.config.num_classes
  _check_images(translator.config.image_shape, train)
  labels = _class_labels(train, k, "translator")
  if test is not None:
    _check_images(translator.config.image_shape, test)
    _class_labels(test, k, "translator")
  weights = tuple(float(w) for w in (adversarial_weight, cycle_weight, change_weight))
  if not all(np.isfinite(w) and w >= 0 for w in weights):
    raise ValueError(f"the loss weights must be finite and >= 0; got {weights}")
  tx = optax.adam(learning_rate, b1=0.5, b2=0.999)
  optimizers = (nnx.Optimizer(translator.critic, tx, wrt=nnx.Param),
                nnx.Optimizer(translator.generator, tx, wrt=nnx.Param))
  step = lambda model, pair, x, y, key: _translator_train_step(model, pair, x, y, key, weights)
  evaluate = (lambda: {}) if test is None else (
      lambda: evaluate_translator(translator, test, seed=seed))
  history = _fit(translator, train, labels, step, evaluate, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate, weight_decay=0.0, seed=seed, progress=progress,
                 on_epoch=on_epoch, desc="train translator", optimizer=optimizers)
  return translator, history
