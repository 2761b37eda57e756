"""The options of a dataset-wide explanation.

`ExplainConfig` holds the pipeline's own options and the attack, a value of
`cfajax.attacks` that holds its own; all of it is JSON-serialisable, so
run.json records it. Importable without JAX: the command line is built from
it (the checks before any work are `_explain_checks`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from cfajax import _recipes
from cfajax import attacks

# Options that change no chunk, model or selected example: they may differ
# between the runs of one output folder. (pool_size changes only the
# summation order inside batched products; model, image and attribute sources
# count by their digests, data_dir by the latents it leads to.)
RESUMABLE_OPTIONS = ("out", "data_dir", "generator", "classifier", "images", "attributes",
                     "attack.manifold",
                     "pool_size", "chunk_size", "exclude_attributes", "probe_examples",
                     "max_attribute_correlation", "probe_c", "probe_class_weight",
                     "probe_standardize", "probe_validation_fraction", "num_bootstrap",
                     "num_permutations", "probe_bootstrap", "exclude_started_at_target",
                     "num_figure_examples")
# Options a model trained into out/models was trained with.
TRAINING_OPTIONS = ("dataset", "image_size", "target_attribute", "latent_dim", "vae_widths",
                    "classifier_widths", "vae_epochs", "classifier_epochs", "train_batch_size",
                    "seed")


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
  """Every option of a dataset-wide explanation (all JSON-serialisable).

  The attack's options as fields of their own (`threshold=`, `optimizer=`,
  `attack="data-free"`, ..., the form before attack values) are still
  accepted, with a DeprecationWarning, and folded into `attack`.

  Attributes:
    dataset: a preset, "digits" (scikit-learn's, embedded), "mnist" or
      "celeba", that supplies images, models and attributes; None for
      "digits" unless images are given (then there is no preset).
    out: the output folder (default runs/explain-<preset>, or runs/explain);
      rerunning with the same folder resumes.
    data_dir: where a preset's MNIST IDX files or CelebA layout live (else
      `$CFAJAX_DATA_DIR`, else tensorflow-datasets).
    generator, classifier: a cfajax checkpoint folder or a
      `package.module:factory` import string; for a preset, instead of
      `out/models/...` (Python objects are passed to `explain` directly).
    images: the images to explain: a folder of image files, or
      "tfds:NAME[:SPLIT]" (arrays are passed to `explain` directly).
    attributes: an attribute CSV for the probes (see `AttributeTable`).
    classes: for a multi-class classifier, the pair (a, b) explained: examples
      predicted a are attacked toward b and vice versa; b is the positive class.
    target_attribute: for CelebA, the attribute the binary classifier predicts.
    exclude_attributes: attributes left out of the probes; for CelebA also
      near-duplicates of the target, whose labels correlate with it beyond
      `max_attribute_correlation` (see `select_probe_attributes`).
    explain_split: a preset's examples to explain: "train", "test" or "all".
    limit: explain a seeded random subset of at most this many of the
      examples, the two sides of the decision in their proportions (0: all).
    quick: a first look in minutes on a CPU: a preset's models trained for the
      recipe's quick epochs and at most `QUICK_LIMIT` examples, where
      `vae_epochs`, `classifier_epochs` and `limit` are left at 0.
    image_size: resize images to this square side: CelebA's (default 64),
      or a folder's (default 0: keep the files' size).
    latent_dim: the latent size of a preset's VAE when trained (0: the
      recipe's), or of a decoder-only generator whose latents are inverted.
    vae_widths, classifier_widths, vae_epochs, classifier_epochs,
      train_batch_size: for a preset's models trained when no checkpoint
      exists (0 or empty: the recipe's, as `cfajax train` uses).
    attack: what makes each counterfactual, with its options: a
      `cfajax.attacks` value, `LatentAttack()` (the attack on the generator's
      latents, the paper's; the default), `DataFreeAttack(...)` (DISC-style
      deep inversion from the classifier alone) or `PixelAttack(...)` (the
      adversarial baseline). For the last two the generator only measures
      attributions: phi = g(E(x')) - g(E(x)), x and x' encoded.
    ddim_steps, edit_depth: for a diffusion generator, its edit instead of the
      one it holds: DDIM steps over the whole chain, and the fraction of the
      chain edited, in (0, 1] (0: the generator's own).
    pool_size: latents on the device at once.
    inversion_starts, inversion_steps, inversion_step_size,
      inversion_prior_weight: for a generator without `encode`, how latents
      are found (`invert`); 100 steps of 0.1 reconstruct MNIST digits within
      2% of the median MSE of 500 steps of 0.05, at a fifth of the cost
      (benchmarks/RESULTS.md, "Inversion of MNIST digits").
    max_inversion_error: images whose inversion's pixel MSE exceeds this are
      left out of psi; 0: those beyond Q3 + 3 IQR of the run's errors.
    chunk_size: examples per resumable chunk (0: a tenth of the run, at least
      256 and at most 8192, so that finished work is saved early).
    probe_examples: fit and check the probes on at most this many rows of
      each attribute table, a seeded random subset (0: all); each row's image
      is encoded, which through a diffusion generator costs its DDIM steps.
    probe_c, probe_class_weight, probe_standardize: probe regularisation.
    probe_validation_fraction: the part of the attribute table held out to
      check the probes, when no separate validation table is given.
    num_bootstrap: bootstrap resamples for psi's confidence interval.
    probe_bootstrap: each bootstrap resample also refits the probes on a
      resample of the attribute table, so that the interval covers the
      probes' variation (False: the examples only, the probes held fixed).
    num_permutations: probes refitted to permuted labels, the null each
      attribute's p-value is computed against (0: no p-values).
    exclude_started_at_target: leave out of psi the attacks that started at
      the target (the generator's reconstruction already past the threshold:
      their phi is 0, which pulls psi toward 0).
    num_figure_examples: counterfactuals shown in the figure.
    seed: for training, splits, inversion starts and the bootstrap.
  """

  dataset: str | None = None
  out: str | None = None
  data_dir: str | None = None
  generator: str | None = None
  classifier: str | None = None
  images: str | None = None
  attributes: str | None = None
  classes: tuple[int, int] = (4, 9)
  target_attribute: str = "Young"
  exclude_attributes: tuple[str, ...] = ()
  max_attribute_correlation: float = 0.75
  explain_split: str = "all"
  limit: int = 0
  quick: bool = False
  image_size: int = 0
  latent_dim: int = 0
  vae_widths: tuple[int, ...] = ()
  classifier_widths: tuple[int, ...] = ()
  vae_epochs: int = 0
  classifier_epochs: int = 0
  train_batch_size: int = 0
  ddim_steps: int = 0
  edit_depth: float = 0.0
  pool_size: int = 4096
  attack: attacks.Attack = attacks.LatentAttack()
  inversion_starts: int = 4
  inversion_steps: int = 100
  inversion_step_size: float = 0.1
  inversion_prior_weight: float = 0.0
  max_inversion_error: float = 0.0
  chunk_size: int = 0
  probe_examples: int = 0
  probe_c: float = 1.0
  probe_class_weight: str | None = "balanced"
  probe_standardize: bool = True
  probe_validation_fraction: float = 0.2
  num_bootstrap: int = 1000
  probe_bootstrap: bool = True
  num_permutations: int = 1000
  exclude_started_at_target: bool = False
  num_figure_examples: int = 8
  seed: int = 0
  # The attack's options as fields of their own, before attack values: read into `attack`.
  threshold: dataclasses.InitVar[Any] = None
  step_size: dataclasses.InitVar[Any] = None
  max_steps: dataclasses.InitVar[Any] = None
  objective: dataclasses.InitVar[Any] = None
  optimizer: dataclasses.InitVar[Any] = None
  learning_rate: dataclasses.InitVar[Any] = None
  precision: dataclasses.InitVar[Any] = None
  manifold: dataclasses.InitVar[Any] = None
  data_free_prior: dataclasses.InitVar[Any] = None
  data_free_progressive: dataclasses.InitVar[Any] = None
  tv_weight: dataclasses.InitVar[Any] = None
  l2_weight: dataclasses.InitVar[Any] = None
  proximity_weight: dataclasses.InitVar[Any] = None
  manifold_weight: dataclasses.InitVar[Any] = None

  def __post_init__(self, *flat_values):
    given = {name: value for name, value in zip(FLAT_ATTACK_OPTIONS, flat_values, strict=True)
             if value is not None}
    if not given and not isinstance(self.attack, str):
      return
    base = ({"attack": self.attack} if isinstance(self.attack, str)
            else attacks.flat(self.attack))
    attack = attacks.from_flat({**base, **given, "seed": self.seed})
    named = ([f"attack={self.attack!r}"] if isinstance(self.attack, str) else []) + list(given)
    warnings.warn(
        f"ExplainConfig's attack options as fields of their own ({', '.join(named)}) are "
        f"deprecated: pass attack=cfajax.attacks.{type(attack).__name__}(...) with them",
        DeprecationWarning, stacklevel=3)
    object.__setattr__(self, "attack", attack)

  def to_dict(self) -> dict[str, Any]:
    """Every option, JSON-serialisable; the attack as `{"name": ..., its options}`."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    values["attack"] = self.attack.to_dict()
    return values

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> ExplainConfig:
    """The config `to_dict` wrote, or a run.json's from before attack values (whose
    attack options were fields of their own)."""
    values = dict(values)
    if "vae" in values:  # the generator's name before models other than VAEs were explained
      values["generator"] = values.pop("vae")
    check_option_names(values)
    flat = {name: values.pop(name) for name in (*FLAT_ATTACK_OPTIONS, "attack")
            if name in values and not isinstance(values[name], dict)}
    if flat:
      values["attack"] = attacks.from_flat({**flat, "seed": values.get("seed", 0)})
    elif "attack" in values:
      values["attack"] = attacks.from_dict(values["attack"])
    for name in ("classes", "vae_widths", "classifier_widths", "exclude_attributes"):
      if name in values:
        values[name] = tuple(values[name])
    return cls(**values)


# The flat attack options ExplainConfig still accepts, in its InitVars' order.
FLAT_ATTACK_OPTIONS = ("threshold", "step_size", "max_steps", "objective", "optimizer",
                       "learning_rate", "precision", "manifold", "data_free_prior",
                       "data_free_progressive", "tv_weight", "l2_weight", "proximity_weight",
                       "manifold_weight")


QUICK_LIMIT = 1000


def with_quick_defaults(config: ExplainConfig) -> ExplainConfig:
  """`config` with the options `quick` fills in (those left at 0) filled."""
  if not config.quick:
    return config
  changes = {}
  if not config.limit:
    changes["limit"] = QUICK_LIMIT
  if config.dataset is not None:
    recipe = _recipes.recipe(config.dataset)
    if not config.vae_epochs:
      changes["vae_epochs"] = recipe.quick_vae_epochs
    if not config.classifier_epochs:
      changes["classifier_epochs"] = recipe.quick_classifier_epochs
  return dataclasses.replace(config, **changes)


def applicable_options(config: ExplainConfig, *, binary: bool, inverted: bool) -> dict[str, Any]:
  """The options that played a part in a run, for its summary (run.json keeps all).

  Left out: the pair `classes` of a binary classifier; inversion options
  when the generator had an encoder; CelebA's attribute options for other
  data; a preset's data and training options for the user's own inputs.
  The attack is its own value's options.
  """
  unused = set()
  if binary:
    unused.add("classes")
  if not inverted:
    unused |= {"inversion_starts", "inversion_steps", "inversion_step_size",
               "inversion_prior_weight", "max_inversion_error"}
  if config.dataset != "celeba":
    unused |= {"target_attribute", "max_attribute_correlation"}
  if config.dataset is None:
    unused |= {"data_dir", "explain_split", "vae_widths", "classifier_widths", "vae_epochs",
               "classifier_epochs", "train_batch_size"}
  else:
    unused |= {"images", "attributes"}
  return {k: v for k, v in config.to_dict().items() if k not in unused}


def check_option_names(values) -> None:
  known = [f.name for f in dataclasses.fields(ExplainConfig)] + list(FLAT_ATTACK_OPTIONS)
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f"unknown explain options {unknown}; the options are {known}")
