"""What makes each counterfactual of a dataset-wide explanation: attacks, as values.

`cfajax.explain` takes one of these (`attack=...`) instead of a string and a
dozen options. Each is a frozen value that owns its options, checks them
before any work (`check`), names what changes its results (`options`, whose
digest a resumed chunk must match) and runs over the rows of one chunk
(`runner`):

* `LatentAttack`: the paper's attack on the generator's latents (the default).
* `PixelAttack`: the same attack on the pixels, the adversarial baseline.
* `DataFreeAttack`: DISC-style deep inversion from the classifier alone.

For the two image attacks the generator only measures attributions: phi =
g(E(x')) - g(E(x)), with x and x' encoded. A new attack is a new value with
the same methods; the pipeline has no branch per attack.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any
from typing import ClassVar
from typing import NamedTuple

import numpy as np

from cfajax import _checks
from cfajax import _data_free
from cfajax import _loop
from cfajax import metrics
from cfajax._attack import counterfactual_attack

OPTIMIZERS = ("trust-region", "ascent", "adam")


class AttackModels(NamedTuple):
  """The models an attack runs with."""

  decode: Callable  # latents (B, d) -> images (B, H, W, C)
  classify: Callable  # images -> logits (B, K)
  image_shape: tuple[int, ...]  # (H, W, C)
  extra: dict[str, Callable]  # the models of the attack's `model_sources`, loaded


class ImageRows(NamedTuple):
  """An image attack's result as the chunk runner stores it: `z` holds the
  flattened counterfactual images."""

  z: np.ndarray
  steps: np.ndarray
  status: np.ndarray
  initial_prob: np.ndarray
  final_prob: np.ndarray


def _image_rows(counterfactuals: np.ndarray, result) -> ImageRows:
  return ImageRows(counterfactuals.reshape(len(counterfactuals), -1),
                   *(np.asarray(a) for a in (result.steps, result.status, result.initial_prob,
                                             result.final_prob)))


class _Rows:
  """What every attack moves: the latents, or the flattened images for one that
  edits images."""

  edits_images: ClassVar[bool]

  def starts(self, z: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The rows the attack moves, (n, d) or (n, H*W*C)."""
    return images.reshape(len(images), -1).astype(np.float32) if self.edits_images else z


@dataclasses.dataclass(frozen=True)
class _StepAttack(_Rows):
  """The options of the gradient attack, shared by the latent and the pixel attack.

  Attributes:
    threshold: the target probability at which an attack stops (0.9, not the
      decision boundary 0.5: at 0.5 counterfactuals barely cross it, and an
      independent oracle agreed with 69% of them on the quick start's digits,
      against 97.5% at 0.9; experiments/RESULTS.md, "Stopping threshold").
    optimizer: "trust-region" (scale-free steps along the gradient, the first
      `step_size` long), "ascent" (the paper's plain gradient ascent with
      learning rate `step_size`) or "adam" (learning rate `step_size`).
    step_size, max_steps, objective, precision: as for `counterfactual_attack`.
  """

  threshold: float = 0.9
  optimizer: str = "trust-region"
  step_size: float = 0.1
  max_steps: int = 500
  objective: str = "logit"
  precision: str = "float32"

  name: ClassVar[str]
  edits_images: ClassVar[bool]

  def check(self) -> None:
    """Raises ValueError for an option of the wrong type or range."""
    _checks.number("threshold", self.threshold, low=0.0, high=1.0, low_open=True,
                   high_open=True)
    _checks.choice("optimizer", self.optimizer, OPTIMIZERS)
    _checks.number("step_size", self.step_size, low=0.0, low_open=True)
    _checks.integer("max_steps", self.max_steps, low=0)
    _checks.choice("objective", self.objective, _loop.OBJECTIVES)
    _checks.choice("precision", self.precision, ("float32", "bfloat16"))

  def model_sources(self) -> dict[str, str]:
    """Models the attack reads besides the generator and the classifier: none."""
    return {}

  def options(self) -> dict[str, Any]:
    """The options that change results, as `counterfactual_attack` takes them."""
    return dict(threshold=self.threshold, max_steps=self.max_steps, objective=self.objective,
                precision=self.precision, optimizer=self.optimizer, step_size=self.step_size)

  def config_fields(self) -> dict[str, Any]:
    """The `ExplainConfig` fields (run.json's and the command line's form) of this value."""
    step = ({"learning_rate": self.step_size} if self.optimizer == "adam"
            else {"step_size": self.step_size})
    return dict(attack=self.name, threshold=self.threshold, optimizer=self.optimizer,
                max_steps=self.max_steps, objective=self.objective, precision=self.precision,
                **step)

  @classmethod
  def from_config(cls, config) -> _StepAttack:
    return cls(threshold=config.threshold, optimizer=config.optimizer,
               step_size=config.learning_rate if config.optimizer == "adam" else config.step_size,
               max_steps=config.max_steps, objective=config.objective,
               precision=config.precision)


@dataclasses.dataclass(frozen=True)
class LatentAttack(_StepAttack):
  """The Counterfactual Attack on the generator's latents, the paper's (the default)."""

  name: ClassVar[str] = "latent"
  edits_images: ClassVar[bool] = False

  def runner(self, models: AttackModels, pool_size: int) -> Callable:
    """`(rows, target, bar) -> result` over one chunk's latents."""
    options = self.options()
    return lambda rows, target, bar: counterfactual_attack(
        models.decode, models.classify, rows, target, batch_size=pool_size, progress=bar,
        **options)


@dataclasses.dataclass(frozen=True)
class PixelAttack(_StepAttack):
  """The same attack on the pixels (`metrics.pixel_attack`): the adversarial baseline."""

  name: ClassVar[str] = "pixel"
  edits_images: ClassVar[bool] = True

  def runner(self, models: AttackModels, pool_size: int) -> Callable:
    """`(rows, target, bar) -> ImageRows` over one chunk's flattened images."""
    options, shape = self.options(), models.image_shape

    def run(rows, target, bar):
      result = metrics.pixel_attack(models.classify, rows.reshape(len(rows), *shape), target,
                                    batch_size=pool_size, progress=bar, **options)
      return _image_rows(metrics.pixel_counterfactuals(result, shape), result)

    return run


@dataclasses.dataclass(frozen=True)
class DataFreeAttack(_Rows):
  """Counterfactuals from the classifier alone (`data_free_attack`, DISC-style).

  Attributes:
    threshold, max_steps, objective, precision: as for `LatentAttack`.
    prior, progressive, tv_weight, l2_weight, proximity_weight,
      manifold_weight, seed: as for `data_free_attack` (its learning rate is
      `DEFAULT_STEP_SIZES[prior]`, Adam's).
    manifold: a DUQ checkpoint folder or `module:factory` for the manifold
      term (None: none); loaded, and checked, where the run reads its models.
  """

  threshold: float = 0.9
  max_steps: int = 500
  objective: str = "logit"
  precision: str = "float32"
  prior: str = "implicit"
  progressive: bool = True
  tv_weight: float = 0.05
  l2_weight: float = 0.0
  proximity_weight: float = 10.0
  manifold_weight: float = 0.003
  manifold: str | None = None
  seed: int = 0

  name: ClassVar[str] = "data-free"
  edits_images: ClassVar[bool] = True

  def check(self) -> None:
    """Raises ValueError for an option of the wrong type or range."""
    _checks.number("threshold", self.threshold, low=0.0, high=1.0, low_open=True,
                   high_open=True)
    _checks.integer("max_steps", self.max_steps, low=0)
    _checks.choice("objective", self.objective, _loop.OBJECTIVES)
    _checks.choice("precision", self.precision, ("float32", "bfloat16"))
    _checks.choice("data_free_prior", self.prior, _data_free.PRIORS)
    for name in ("tv_weight", "l2_weight", "proximity_weight", "manifold_weight"):
      _checks.number(name, getattr(self, name), low=0.0)
    if self.manifold is not None and not isinstance(self.manifold, (str, os.PathLike)):
      raise ValueError(f"manifold must be a checkpoint folder or an import string; got "
                       f"{type(self.manifold).__name__} {self.manifold!r}")

  def model_sources(self) -> dict[str, str]:
    """Models the attack reads besides the generator and the classifier: {role: source}."""
    return {} if self.manifold is None else {"manifold": os.fspath(self.manifold)}

  def options(self) -> dict[str, Any]:
    """The options that change results, as `data_free_attack` takes them (the manifold
    counts by its digest, among the models)."""
    return dict(threshold=self.threshold, max_steps=self.max_steps, objective=self.objective,
                precision=self.precision, prior=self.prior, progressive=self.progressive,
                tv_weight=self.tv_weight, l2_weight=self.l2_weight,
                proximity_weight=self.proximity_weight, manifold_weight=self.manifold_weight,
                seed=self.seed)

  def config_fields(self) -> dict[str, Any]:
    """The `ExplainConfig` fields (run.json's and the command line's form) of this value
    that play a part in its results (without a manifold, not its weight)."""
    fields = dict(attack=self.name, threshold=self.threshold, max_steps=self.max_steps,
                  objective=self.objective, precision=self.precision,
                  data_free_prior=self.prior, data_free_progressive=self.progressive,
                  tv_weight=self.tv_weight, l2_weight=self.l2_weight,
                  proximity_weight=self.proximity_weight, manifold=self.manifold,
                  seed=self.seed)
    if self.manifold is not None:
      fields["manifold_weight"] = self.manifold_weight
    return fields

  @classmethod
  def from_config(cls, config) -> DataFreeAttack:
    return cls(threshold=config.threshold, max_steps=config.max_steps,
               objective=config.objective, precision=config.precision,
               prior=config.data_free_prior, progressive=config.data_free_progressive,
               tv_weight=config.tv_weight, l2_weight=config.l2_weight,
               proximity_weight=config.proximity_weight,
               manifold_weight=config.manifold_weight, manifold=config.manifold,
               seed=config.seed)

  def runner(self, models: AttackModels, pool_size: int) -> Callable:
    """`(rows, target, bar) -> ImageRows` over one chunk's flattened images."""
    options, shape = self.options(), models.image_shape

    def run(rows, target, bar):
      result = _data_free.data_free_attack(
          models.classify, rows.reshape(len(rows), *shape), target,
          manifold=models.extra.get("manifold"), batch_size=pool_size, progress=bar, **options)
      return _image_rows(np.asarray(result.images), result)

    return run


Attack = LatentAttack | PixelAttack | DataFreeAttack
ATTACKS: dict[str, type] = {a.name: a for a in (LatentAttack, DataFreeAttack, PixelAttack)}
# Every `ExplainConfig` field that some attack reads.
CONFIG_FIELDS = frozenset({"attack", "threshold", "optimizer", "step_size", "learning_rate",
                           "max_steps", "objective", "precision", "data_free_prior",
                           "data_free_progressive", "tv_weight", "l2_weight",
                           "proximity_weight", "manifold_weight", "manifold", "seed"})


def from_config(config) -> Attack:
  """The attack value an `ExplainConfig`'s `attack` field and options name."""
  _checks.choice("attack", config.attack, tuple(ATTACKS))
  return ATTACKS[config.attack].from_config(config)
