"""What makes each counterfactual of a dataset-wide explanation: attacks, as values.

`cfajax.explain` takes one of these (`attack=...`) instead of a string and a
dozen options. Each is a frozen value that owns its options, checks them
before any work (`check`), names what changes its results (`options`, whose
digest a resumed chunk must match) and runs over the rows of one chunk
(`runner`):

* `LatentAttack`: the paper's attack on the generator's latents (the default).
* `PixelAttack`: the same attack on the pixels, the adversarial baseline.
* `DataFreeAttack`: DISC-style deep inversion from the classifier alone.

A value has two written forms: `to_dict()` (run.json's: its name and
fields, read back by `from_dict`) and `flat()` (the command line's flags, one
namespace for every attack, read back by `from_flat`; also the form of
run.json before the values).

For the two image attacks the generator only measures attributions: phi =
g(E(x')) - g(E(x)), with x and x' encoded. A new attack is a new value with
the same methods; the pipeline has no branch per attack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import ClassVar
from typing import NamedTuple

import numpy as np

from cfajax import _checks
from cfajax._choices import OBJECTIVES
from cfajax._choices import OPTIMIZERS
from cfajax._choices import PRECISIONS
from cfajax._choices import PRIORS

# The values are read by the command line, which starts without JAX: each
# `runner` imports the method it runs (`counterfactual_attack`,
# `metrics.pixel_attack`, `data_free_attack`) when it is built, not here.

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
  """What every attack shares: the rows it moves (the latents, or the flattened
  images for one that edits images) and its written forms."""

  name: ClassVar[str]
  edits_images: ClassVar[bool]

  def starts(self, z: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The rows the attack moves, (n, d) or (n, H*W*C)."""
    return images.reshape(len(images), -1).astype(np.float32) if self.edits_images else z

  def options(self) -> dict[str, Any]:
    raise NotImplementedError

  def to_dict(self) -> dict[str, Any]:
    """`{"name": ..., field: value, ...}`, JSON-serialisable (run.json's form)."""
    return {"name": self.name, **dataclasses.asdict(self)}  # pyright: ignore[reportArgumentType]

  def digest(self) -> str:
    """SHA-256 of the name and the options that change results: what a resumed
    chunk's attack must match."""
    text = json.dumps({"attack": self.name, **self.options()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


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
    _checks.choice("objective", self.objective, OBJECTIVES)
    _checks.choice("precision", self.precision, PRECISIONS)

  def model_sources(self) -> dict[str, str]:
    """Models the attack reads besides the generator and the classifier: none."""
    return {}

  def options(self) -> dict[str, Any]:
    """The options that change results, as `counterfactual_attack` takes them."""
    return dict(threshold=self.threshold, max_steps=self.max_steps, objective=self.objective,
                precision=self.precision, optimizer=self.optimizer, step_size=self.step_size)


@dataclasses.dataclass(frozen=True)
class LatentAttack(_StepAttack):
  """The Counterfactual Attack on the generator's latents, the paper's (the default)."""

  name: ClassVar[str] = "latent"
  edits_images: ClassVar[bool] = False

  def runner(self, models: AttackModels, pool_size: int) -> Callable:
    """`(rows, target, bar) -> result` over one chunk's latents."""
    from cfajax._attack import counterfactual_attack
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
    from cfajax import metrics
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
    _checks.choice("objective", self.objective, OBJECTIVES)
    _checks.choice("precision", self.precision, PRECISIONS)
    _checks.choice("data_free_prior", self.prior, PRIORS)
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

  def runner(self, models: AttackModels, pool_size: int) -> Callable:
    """`(rows, target, bar) -> ImageRows` over one chunk's flattened images."""
    from cfajax._data_free import data_free_attack
    options, shape = self.options(), models.image_shape

    def run(rows, target, bar):
      result = data_free_attack(
          models.classify, rows.reshape(len(rows), *shape), target,
          manifold=models.extra.get("manifold"), batch_size=pool_size, progress=bar, **options)
      return _image_rows(np.asarray(result.images), result)

    return run


Attack = LatentAttack | PixelAttack | DataFreeAttack
ATTACKS: dict[str, type[Attack]] = {a.name: a for a in (LatentAttack, DataFreeAttack, PixelAttack)}

# The flat form's names of fields whose value name says less on its own.
_FLAT_NAMES = {"prior": "data_free_prior", "progressive": "data_free_progressive"}
# Adam's learning rate in the flat form, where it is an option of its own.
ADAM_LEARNING_RATE = 0.05


def check_value(attack) -> Attack:
  """`attack` after checking it is an attack value with valid options."""
  if not isinstance(attack, tuple(ATTACKS.values())):
    names = ", ".join(a.__name__ for a in ATTACKS.values())
    raise ValueError(f"attack must be a cfajax.attacks value ({names}); got "
                     f"{type(attack).__name__} {attack!r}")
  attack.check()
  return attack


def from_dict(values: Mapping[str, Any]) -> Attack:
  """The value `to_dict` wrote."""
  values = dict(values)
  name = values.pop("name", None)
  _checks.choice("attack name", name, tuple(ATTACKS))
  cls = ATTACKS[name]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown options {unknown} of the {name} attack; its options are "
                     f"{sorted(known)}")
  return cls(**values)


def flat_defaults() -> dict[str, Any]:
  """The flat form's options (the command line's attack flags) and their defaults.

  One namespace for every attack: the fields of all values, `attack` (the
  value's name), `learning_rate` (Adam's, apart from the others' step size)
  and the data-free options' longer names. `seed` is the run's.
  """
  flat: dict[str, Any] = {"attack": LatentAttack.name}
  for cls in ATTACKS.values():
    for field in dataclasses.fields(cls):
      if field.name != "seed":
        flat.setdefault(_FLAT_NAMES.get(field.name, field.name), field.default)
  flat["learning_rate"] = ADAM_LEARNING_RATE
  return flat


def from_flat(values: Mapping[str, Any]) -> Attack:
  """The value that flat options name (the command line's, or an old run.json's).

  `attack` names the value (default "latent"); each of its fields is read
  under its flat name, defaults where absent; with optimizer "adam" the step
  size is `learning_rate`; the data-free attack's seed is `seed`.
  """
  name = values.get("attack", LatentAttack.name)
  _checks.choice("attack", name, tuple(ATTACKS))
  cls = ATTACKS[name]
  if values.get("manifold") is not None and cls is not DataFreeAttack:
    raise ValueError(f"manifold is a model of the data-free attack; attack is {name!r} "
                     "(pass attack='data-free', or leave manifold out)")
  fields = {}
  for field in dataclasses.fields(cls):
    flat = _FLAT_NAMES.get(field.name, field.name)
    if flat in values:
      fields[field.name] = values[flat]
  if cls is not DataFreeAttack and fields.get("optimizer") == "adam":
    fields["step_size"] = values.get("learning_rate", ADAM_LEARNING_RATE)
  return cls(**fields)


def flat(attack: Attack) -> dict[str, Any]:
  """`attack` in the flat form (`from_flat(flat(a)) == a`)."""
  values = {"attack": attack.name}
  for field in dataclasses.fields(attack):
    values[_FLAT_NAMES.get(field.name, field.name)] = getattr(attack, field.name)
  if isinstance(attack, _StepAttack) and attack.optimizer == "adam":
    values["learning_rate"] = values.pop("step_size")
  return values
