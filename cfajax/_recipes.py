"""Per-dataset recipes: the splits, architectures and training lengths cfajax uses.

`cfajax train` and `cfajax explain` both build their models from these, so a
model trained by one is the model the other would have trained.
"""

from __future__ import annotations

import dataclasses

from cfajax import _data
from cfajax import _models

CELEBA_DEFAULT_ATTRIBUTES = ("Young", "Attractive", "Male", "Smiling")
CELEBA_HOLDOUT = 1000


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Defaults for one dataset.

  Attributes:
    latent_dim, vae_widths, beta: the `VAEConfig`.
    classifier_widths: the `ClassifierConfig` widths (depth 1, dense 128).
    oracle_widths: the independent oracle's widths (depth 2, dense 256), a
      different architecture from the classifier it judges.
    vae_epochs, classifier_epochs, batch_size: training lengths.
  """

  latent_dim: int
  vae_widths: tuple[int, ...]
  beta: float
  classifier_widths: tuple[int, ...]
  oracle_widths: tuple[int, ...]
  vae_epochs: int
  classifier_epochs: int
  batch_size: int


RECIPES = {
    # beta < 1 keeps more of each 8x8 digit in the latent: a classifier agrees
    # with 93% of the VAE's reconstructions at 0.25 against 86% at 1.
    "digits": Recipe(8, (32, 64), 0.25, (32, 64), (24, 48, 96), 60, 40, 128),
    # At beta 0.5 the classifier (99.0% on the test digits) agrees with 96.8%
    # of the VAE's test reconstructions (experiments/RESULTS.md, "Models").
    "mnist": Recipe(16, (32, 64), 0.5, (32, 64), (24, 48, 96), 10, 5, 128),
    "celeba": Recipe(128, (32, 64, 128, 256), 1.0, (32, 64, 128, 256), (24, 48, 96, 192),
                     20, 10, 64),
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
        f"training split (ids {test.ids[0]}..{test.ids[-1]}) for evaluation, "
        f"{len(train)} remain for training")
  return train, test


def vae_config(dataset: str, image_shape, *, latent_dim=None, widths=None,
               beta=None) -> _models.VAEConfig:
  """The dataset's `VAEConfig`, with any of its fields overridden."""
  r = recipe(dataset)
  return _models.VAEConfig(image_shape=image_shape, latent_dim=latent_dim or r.latent_dim,
                           widths=tuple(widths or r.vae_widths),
                           beta=r.beta if beta is None else beta)


def classifier_config(dataset: str, image_shape, *, attributes=None, oracle: bool = False,
                      widths=None, depth=None, dense_width=None) -> _models.ClassifierConfig:
  """The dataset's `ClassifierConfig`: 10 softmax classes, or CelebA attributes.

  Args:
    attributes: CelebA attribute names, one sigmoid head each (default
      `CELEBA_DEFAULT_ATTRIBUTES`); not allowed for datasets with class labels.
    oracle: the oracle's architecture (other widths, depth 2, dense 256).
    widths, depth, dense_width: overrides.
  """
  r = recipe(dataset)
  if dataset == "celeba":
    names = tuple(attributes or CELEBA_DEFAULT_ATTRIBUTES)
    head = dict(num_outputs=len(names), head="sigmoid", output_names=names)
  else:
    if attributes:
      raise ValueError(f"attributes apply to CelebA; {dataset} has class labels")
    head = dict(num_outputs=10, head="softmax", output_names=tuple(str(i) for i in range(10)))
  return _models.ClassifierConfig(
      image_shape=image_shape,
      widths=tuple(widths or (r.oracle_widths if oracle else r.classifier_widths)),
      depth=depth or (2 if oracle else 1), dense_width=dense_width or (256 if oracle else 128),
      **head)
