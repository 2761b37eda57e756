"""Per-dataset recipes: the splits, architectures and training lengths cfajax uses.

`cfajax train` and `cfajax explain` both train their models through
`train_model`, so a model trained by one is, bit for bit, the model the other
would have trained with the same options.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
  from cfajax import _data
  from cfajax import _models

# The recipes' table is read by the command line before any model is built: the
# modules that load data and build and train models (JAX with them) are imported
# by the functions that use them, so `cfajax --help` starts without JAX.
CELEBA_DEFAULT_ATTRIBUTES = ("Young", "Attractive", "Male", "Smiling")
CELEBA_HOLDOUT = 1000
TRAIN_PARTS = ("all", "first-half", "second-half")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Defaults for one dataset.

  Attributes:
    latent_dim, vae_widths, beta: the `VAEConfig`.
    classifier_widths: the `ClassifierConfig` widths (depth 1, dense 128).
    oracle_widths: the independent oracle's widths (depth 2, dense 256), a
      different architecture from the classifier it judges.
    vae_epochs, classifier_epochs, batch_size: training lengths.
    gan_latent_dim, gan_widths, gan_epochs, gan_r1: the `GANConfig` and
      `train_gan`'s length and R1 weight.
    quick_vae_epochs, quick_classifier_epochs: training lengths for
      `explain(quick=True)`, a first look in minutes on a CPU.
    duq_epochs: training length of a `DUQ` (the classifier's widths), the
      data-free attack's manifold model.
    translator_epochs: training length of a `Translator` (its critic has the
      classifier's widths).
    diffusion_widths, diffusion_attention: a diffusion generator's UNet: its
      widths, and which levels have attention (the up blocks mirror them).
    diffusion_epochs, diffusion_steps, diffusion_depth: its training length,
      and its edit's DDIM steps and depth (both can be changed when explaining).
  """

  latent_dim: int
  vae_widths: tuple[int, ...]
  beta: float
  classifier_widths: tuple[int, ...]
  oracle_widths: tuple[int, ...]
  vae_epochs: int
  classifier_epochs: int
  batch_size: int
  gan_latent_dim: int = 32
  gan_widths: tuple[int, ...] = (32, 64)
  gan_epochs: int = 10
  gan_r1: float = 1.0
  quick_vae_epochs: int = 2
  quick_classifier_epochs: int = 1
  duq_epochs: int = 3
  translator_epochs: int = 3
  diffusion_widths: tuple[int, ...] = (16, 32)
  diffusion_attention: tuple[bool, ...] = (False, True)
  diffusion_epochs: int = 1
  diffusion_steps: int = 10
  diffusion_depth: float = 0.5


RECIPES = {
    # beta < 1 keeps more of each 8x8 digit in the latent: a classifier agrees
    # with 93% of the VAE's reconstructions at 0.25 against 86% at 1.
    # The GAN: 60 epochs take 2.5 minutes on 2 CPU cores; its inversions of
    # held-out digits reach a median pixel MSE of 0.021 (the VAE's encoder: 0.014).
    "digits": Recipe(8, (32, 64), 0.25, (32, 64), (24, 48, 96), 60, 40, 128,
                     gan_latent_dim=8, gan_widths=(32, 64), gan_epochs=60,
                     quick_vae_epochs=20, quick_classifier_epochs=10, duq_epochs=20,
                     translator_epochs=20, diffusion_widths=(32, 64), diffusion_epochs=30),
    # At beta 0.5 the classifier (99.0% on the test digits) agrees with 96.8%
    # of the VAE's test reconstructions (experiments/RESULTS.md, "Models").
    "mnist": Recipe(16, (32, 64), 0.5, (32, 64), (24, 48, 96), 10, 5, 128,
                    gan_latent_dim=32, gan_widths=(32, 64), gan_epochs=10),
    "celeba": Recipe(128, (32, 64, 128, 256), 1.0, (32, 64, 128, 256), (24, 48, 96, 192),
                     20, 10, 64, gan_latent_dim=128, gan_widths=(32, 64, 128, 256),
                     gan_epochs=20, diffusion_widths=(32, 64, 64, 128),
                     diffusion_attention=(False, False, True, False), diffusion_epochs=5),
}


def recipe(dataset: str) -> Recipe:
  if dataset not in RECIPES:
    raise ValueError(f"dataset must be one of {sorted(RECIPES)}; got {dataset!r}")
  return RECIPES[dataset]


def load_train_test(dataset: str, data_dir=None, *, image_size: int = 64,
                    holdout: int = CELEBA_HOLDOUT, progress: bool = True, log=print):
  """(train, test) for a dataset; says through `log` where the test set came from.

  digits: a fixed 80/20 split (seed 0). MNIST: the official split. CelebA: the
  official validation split when its images are present, else the last
  `holdout` images of the training split (as with the first 10,000 faces).
  """
  from cfajax import _data
  recipe(dataset)
  log = log or (lambda message: None)
  if dataset == "digits":
    train, test = _data.split_dataset(_data.load_digits(), 0.2, seed=0)
    log(f"digits: {len(train)} train, {len(test)} test (split_dataset seed 0)")
    return train, test
  if dataset == "mnist":
    train = _data.load_mnist(data_dir, "train")
    test = _data.load_mnist(data_dir, "test")
    log(f"mnist: {len(train)} train, {len(test)} test (official split)")
    return train, test
  train = _data.load_celeba(data_dir, "train", image_size, progress=progress)
  try:
    test = _data.load_celeba(data_dir, "valid", image_size, progress=progress)
    log(f"celeba: train from {train.name}; test = official validation split, {test.name}")
  except ValueError:  # no validation images present (e.g. only the first 10,000 faces)
    train, test = _data.split_dataset(train, holdout, seed=None)
    log(f"celeba: no validation images present; held out the last {len(test)} of the "
        # CelebA's images carry their ids.
        f"training split (ids {test.ids[0]}..{test.ids[-1]}) for evaluation, "  # pyright: ignore[reportOptionalSubscript]
        f"{len(train)} remain for training")
  return train, test


def vae_config(dataset: str, image_shape, *, latent_dim=None, widths=None,
               beta=None) -> _models.VAEConfig:
  """The dataset's `VAEConfig`, with any of its fields overridden."""
  from cfajax import _models
  r = recipe(dataset)
  return _models.VAEConfig(image_shape=image_shape, latent_dim=latent_dim or r.latent_dim,
                           widths=tuple(widths or r.vae_widths),
                           beta=r.beta if beta is None else beta)


def diffusion_config(dataset: str, image_shape, *, widths=None, steps=None,
                     depth=None) -> _models.DiffusionConfig:
  """The dataset's `DiffusionConfig`: a UNet with the recipe's widths and attention, DDPM's
  linear schedule over 1,000 timesteps, and the recipe's edit; any of them overridden."""
  from cfajax import _models
  r = recipe(dataset)
  widths = tuple(widths or r.diffusion_widths)
  attention = (r.diffusion_attention if len(widths) == len(r.diffusion_attention)
               else (False,) * (len(widths) - 1) + (True,))
  groups = 8 if all(w % 8 == 0 for w in widths) else 1
  unet = _models.UNetConfig(image_shape=tuple(image_shape), widths=widths,
                            down_attention=attention, up_attention=attention[::-1],
                            groups=groups)
  return _models.DiffusionConfig(unet, _models.NoiseSchedule(), steps=steps or r.diffusion_steps,
                                 depth=depth or r.diffusion_depth)


def classifier_config(dataset: str, image_shape, *, attributes=None, oracle: bool = False,
                      widths=None, depth=None, dense_width=None) -> _models.ClassifierConfig:
  """The dataset's `ClassifierConfig`: 10 softmax classes, or CelebA attributes.

  Args:
    attributes: CelebA attribute names, one sigmoid head each (default
      `CELEBA_DEFAULT_ATTRIBUTES`); not allowed for datasets with class labels.
    oracle: the oracle's architecture (other widths, depth 2, dense 256).
    widths, depth, dense_width: overrides.
  """
  from cfajax import _models
  r = recipe(dataset)
  if dataset == "celeba":
    names = tuple(attributes or CELEBA_DEFAULT_ATTRIBUTES)
    head: dict[str, Any] = dict(num_outputs=len(names), head="sigmoid", output_names=names)
  else:
    if attributes:
      raise ValueError(f"attributes apply to CelebA; {dataset} has class labels")
    head = dict(num_outputs=10, head="softmax", output_names=tuple(str(i) for i in range(10)))
  return _models.ClassifierConfig(
      image_shape=image_shape,
      widths=tuple(widths or (r.oracle_widths if oracle else r.classifier_widths)),
      depth=depth or (2 if oracle else 1), dense_width=dense_width or (256 if oracle else 128),
      **head)


def image_shape(dataset: str, image_size: int = 64) -> tuple[int, int, int]:
  """The (H, W, C) of a dataset's images as cfajax loads them."""
  recipe(dataset)
  return {"digits": (8, 8, 1), "mnist": (28, 28, 1)}.get(dataset, (image_size, image_size, 3))


def default_train_part(kind: str, oracle: bool = False) -> str:
  """A VAE learns from all of the training split, a classifier from its first
  half and the oracle from its second half, so the oracle never saw the
  classifier's examples."""
  if kind in ("vae", "gan", "duq", "translator", "diffusion"):
    return "all"
  return "second-half" if oracle else "first-half"


def train_part(dataset: _data.ImageDataset, part: str) -> _data.ImageDataset:
  """All of `dataset`, or its first or second half."""
  if part not in TRAIN_PARTS:
    raise ValueError(f"part must be one of {TRAIN_PARTS}; got {part!r}")
  if part == "all":
    return dataset
  half = len(dataset) // 2
  rows = slice(0, half) if part == "first-half" else slice(half, None)
  return dataset.subset(rows, f"{dataset.name} [{part}]")


def train_model(kind: str, dataset: str, train, test, *, oracle: bool = False,
                part: str | None = None, seed: int | None = None, epochs: int | None = None,
                batch_size: int | None = None, learning_rate: float | None = None,
                weight_decay: float = 0.0, latent_dim=None, beta=None, widths=None,
                depth=None, dense_width=None, attributes=None, r1_gamma=None,
                ema_decay=None, steps=None, edit_depth=None, progress: bool = True,
                on_epoch=None):
  """Builds and trains a model by the dataset's recipe; any option overrides it.

  Args:
    kind: "vae", "classifier", "gan", "diffusion", "duq" (a manifold model
      for the data-free attack) or "translator" (a counterfactual generator
      and its classifier-discriminator); the last two learn the dataset's
      classes, or for CelebA the two values of the one attribute in
      `attributes`.
    dataset: the recipe's dataset name.
    train, test: the whole training split and the held-out set.
    oracle: the independent oracle classifier (another architecture; seed 1
      and the second half of the training split by default).
    part: which part of `train` to learn from (`default_train_part`).
    seed: initialises the weights and orders the batches (default 0, or 1
      for the oracle).
    epochs, batch_size: default the recipe's; learning_rate: 1e-3 (2e-4 for a GAN).
    ema_decay: a diffusion model's weight average (default 0.999).
    steps, edit_depth: a diffusion model's edit (`diffusion_config`).
    others: as in `train_vae`/`train_classifier`, `vae_config` and
      `classifier_config`.

  Returns:
    `(model, history, info)`, info holding the part, seed and examples used.
  """
  from cfajax import _models
  from cfajax import _train
  r = recipe(dataset)
  if oracle and kind != "classifier":
    raise ValueError("oracle applies to classifiers")
  if kind == "gan":
    data = train_part(train, part or default_train_part(kind))
    seed = 0 if seed is None else seed
    config = _models.GANConfig(data.image_shape, latent_dim=latent_dim or r.gan_latent_dim,
                               widths=tuple(widths or r.gan_widths))
    epochs = epochs or r.gan_epochs
    model, history = _train.train_gan(
        _models.build_model("gan", config, seed), data, test, epochs=epochs,
        batch_size=batch_size or r.batch_size, learning_rate=learning_rate or 2e-4,
        r1_gamma=r.gan_r1 if r1_gamma is None else r1_gamma, seed=seed, progress=progress,
        on_epoch=on_epoch)
    return model, history, _training_info(data, part or default_train_part(kind), seed, epochs,
                                          batch_size or r.batch_size)
  if kind == "diffusion":
    data = train_part(train, part or default_train_part(kind))
    seed = 0 if seed is None else seed
    config = diffusion_config(dataset, data.image_shape, widths=widths, steps=steps,
                              depth=edit_depth)
    epochs = epochs or r.diffusion_epochs
    model, history = _train.train_diffusion(
        _models.build_model("diffusion", config, seed), data, test, epochs=epochs,
        batch_size=batch_size or r.batch_size, learning_rate=learning_rate or 1e-3,
        ema_decay=0.999 if ema_decay is None else ema_decay, seed=seed, progress=progress,
        on_epoch=on_epoch)
    return model, history, _training_info(data, part or default_train_part(kind), seed, epochs,
                                          batch_size or r.batch_size)
  if kind in ("duq", "translator"):
    return _train_on_classes(kind, dataset, train, test, part=part, seed=seed, epochs=epochs,
                             batch_size=batch_size, learning_rate=learning_rate, widths=widths,
                             attributes=attributes, progress=progress, on_epoch=on_epoch)
  seed = (1 if oracle else 0) if seed is None else seed
  part = part or default_train_part(kind, oracle)
  data = train_part(train, part)
  options: dict[str, Any] = dict(
      epochs=epochs or (r.vae_epochs if kind == "vae" else r.classifier_epochs),
      batch_size=batch_size or r.batch_size, learning_rate=learning_rate or 1e-3,
      weight_decay=weight_decay, seed=seed, progress=progress, on_epoch=on_epoch)
  if kind == "vae":
    config = vae_config(dataset, data.image_shape, latent_dim=latent_dim, widths=widths, beta=beta)
    model, history = _train.train_vae(_models.build_model("vae", config, seed), data, test,
                                      **options)
  else:
    config = classifier_config(dataset, data.image_shape, attributes=attributes, oracle=oracle,
                               widths=widths, depth=depth, dense_width=dense_width)
    model, history = _train.train_classifier(
        _models.build_model("classifier", config, seed), data, test, **options)
  return model, history, _training_info(data, part, seed, options["epochs"],
                                        options["batch_size"])


def _training_info(data, part: str, seed: int, epochs: int, batch_size: int) -> dict:
  """What `train_model` reports of a run: the examples, part, seed and lengths used."""
  return {"train": data.name, "train_examples": len(data), "train_part": part, "seed": seed,
          "epochs": epochs, "batch_size": batch_size}


def _with_attribute_labels(dataset: _data.ImageDataset, attribute: str) -> _data.ImageDataset:
  """`dataset` with one binary attribute's values (0 or 1) as its class labels."""
  import numpy as np
  column = dataset.attribute(attribute)
  return dataclasses.replace(dataset, labels=np.asarray(column, np.int32))


def _train_on_classes(kind: str, dataset: str, train, test, *, part, seed, epochs, batch_size,
                      learning_rate, widths, attributes, progress, on_epoch):
  """`train_model` for the models that learn the dataset's classes (for CelebA, the two
  values of one attribute): a DUQ (the classifier's widths) or a translator (`widths`
  is its translation network's; the critic takes the classifier's)."""
  from cfajax import _models
  from cfajax import _train
  r = recipe(dataset)
  if dataset == "celeba":
    if not attributes or len(attributes) != 1:
      name = {"duq": "DUQ", "translator": "translator"}[kind]
      raise ValueError(f"a CelebA {name} learns one attribute's two values as its classes: pass "
                       "--attributes NAME (e.g. Young), the attribute the classifier explains")
    train, test = (_with_attribute_labels(d, attributes[0]) for d in (train, test))
  part = part or default_train_part(kind)
  data = train_part(train, part)
  seed = 0 if seed is None else seed
  # Datasets with classes have labels (CelebA's from the attribute above).
  classes = max(int(max(data.labels.max(), test.labels.max())) + 1, 2)  # pyright: ignore[reportOptionalMemberAccess]
  batch_size = batch_size or r.batch_size
  if kind == "duq":
    config = _models.DUQConfig(data.image_shape, num_classes=classes,
                               widths=tuple(widths or r.classifier_widths))
    epochs = epochs or r.duq_epochs
    model, history = _train.train_duq(
        _models.build_model("duq", config, seed), data, test, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate or 1e-3, seed=seed,
        progress=progress, on_epoch=on_epoch)
  else:
    names = (f"not {attributes[0]}", attributes[0]) if dataset == "celeba" else ()
    config = _models.TranslatorConfig(
        data.image_shape, num_classes=classes,
        widths=tuple(widths or (r.classifier_widths[0] // 2,) + r.classifier_widths),
        critic_widths=r.classifier_widths, class_names=names)
    epochs = epochs or r.translator_epochs
    model, history = _train.train_translator(
        _models.build_model("translator", config, seed), data, test, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate or 1e-3, seed=seed,
        progress=progress, on_epoch=on_epoch)
  return model, history, _training_info(data, part, seed, epochs, batch_size)
