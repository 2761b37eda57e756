"""Training and evaluation of `ConvVAE` and `Classifier` on `ImageDataset`s.

The steps are `@nnx.jit` functions of the model and an `nnx.Optimizer`
(Adam with a warmup-cosine learning rate). Batches are drawn on the host from
a seeded permutation per epoch, so a run is reproducible from its seed; the
last partial batch of an epoch is dropped, and evaluation pads its last batch,
so every step has the same shapes and compiles once. Nothing here names a
device: the same code runs on CPU, GPU or TPU.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cfajax import _checks
from cfajax._batching import map_batches
from cfajax._callables import as_pure_callable
from cfajax._data import ImageDataset
from cfajax._inversion import invert
from cfajax._models import DUQ
from cfajax._models import Centroid
from cfajax._models import Classifier
from cfajax._models import ConvGAN
from cfajax._models import ConvVAE
from cfajax._models import Translator
from cfajax._models import bernoulli_bce
from cfajax._models import gaussian_kl
from cfajax._models import translate_with
from cfajax._pgd import NORMS
from cfajax._pgd import pgd_images
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


# -- VAE ----------------------------------------------------------------------


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


# -- classifier ---------------------------------------------------------------


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


# -- GAN ----------------------------------------------------------------------


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


# -- DUQ ----------------------------------------------------------------------


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


# -- translator ---------------------------------------------------------------


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


# -- applying a generator to many images --------------------------------------


@jax.jit
def _reconstruct_batch(encode, decode, x):
  return decode(encode(x))


def reconstruct(generator, images, *, batch_size: int = 256) -> np.ndarray:
  """decode(encode(images)) in fixed-size batches, as a host array.

  Args:
    generator: anything with `encode` and `decode` methods, e.g. a `ConvVAE`
      or a `Generator`.
    images: (n, H, W, C).
    batch_size: images per compiled call.

  Returns:
    (n, H, W, C) float32 reconstructions.
  """
  encode, decode = as_pure_callable(generator.encode), as_pure_callable(generator.decode)
  images = np.asarray(images, np.float32)
  return map_batches(lambda x: _reconstruct_batch(encode, decode, jnp.asarray(x)),
                      [images], batch_size)
