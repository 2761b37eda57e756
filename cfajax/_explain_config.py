"""The options of a dataset-wide explanation, and their checks before any work.

`ExplainConfig` holds every option (all JSON-serialisable, so run.json can
record them); `check_config` checks each one's type and range, and a
preset's checkpoints against its dataset, before anything is loaded,
trained or written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

# Only the dataclass is needed to build the command line, so the checks'
# modules (JAX among them) are imported where they run: `cfajax --help`
# starts without JAX.

# Options that change no chunk, model or selected example: they may differ
# between the runs of one output folder. (pool_size changes only the
# summation order inside batched products; model, image and attribute sources
# count by their digests, data_dir by the latents it leads to.)
RESUMABLE_OPTIONS = ("out", "data_dir", "generator", "classifier", "images", "attributes",
                     "manifold",
                     "pool_size", "chunk_size", "exclude_attributes",
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
    threshold, step_size, max_steps, objective, optimizer, learning_rate,
    precision, pool_size: the attack's options (`optimizer` is "trust-region",
      scale-free steps along the gradient whose first radius is `step_size`;
      "ascent", the paper's plain gradient ascent with learning rate
      `step_size`; or "adam" at `learning_rate`). The threshold defaults to 0.9, not
      the decision boundary 0.5: at 0.5 counterfactuals barely cross it and an
      independent oracle agreed with 69% of them on the quick start's digits,
      against 97.5% at 0.9 for three more steps (experiments/RESULTS.md,
      "Stopping threshold").
    attack: what makes each counterfactual: "latent" (the attack on the
      generator's latents, the paper's), "data-free" (`data_free_attack`,
      DISC-style deep inversion from the classifier alone) or "pixel" (the
      pixel attack, the adversarial baseline, with the latent attack's step
      options). For "data-free" and "pixel" the generator is used only to
      measure attributions: phi = g(E(x')) - g(E(x)), x and x' encoded.
    manifold, data_free_prior, data_free_progressive, tv_weight, l2_weight,
      proximity_weight, manifold_weight: the data-free attack's options: a
      DUQ checkpoint (or `module:factory`) for the manifold term, the image
      prior, coarse-to-fine optimisation, and the terms' weights (its
      learning rate is `DEFAULT_STEP_SIZES[prior]`).
    inversion_starts, inversion_steps, inversion_step_size,
      inversion_prior_weight: for a generator without `encode`, how latents
      are found (`invert`); 100 steps of 0.1 reconstruct MNIST digits within
      2% of the median MSE of 500 steps of 0.05, at a fifth of the cost
      (benchmarks/RESULTS.md, "Inversion of MNIST digits").
    max_inversion_error: images whose inversion's pixel MSE exceeds this are
      left out of psi; 0: those beyond Q3 + 3 IQR of the run's errors.
    chunk_size: examples per resumable chunk (0: a tenth of the run, at least
      256 and at most 8192, so that finished work is saved early).
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
  threshold: float = 0.9
  step_size: float = 0.1
  max_steps: int = 500
  objective: str = "logit"
  optimizer: str = "trust-region"
  learning_rate: float = 0.05
  precision: str = "float32"
  pool_size: int = 4096
  attack: str = "latent"
  manifold: str | None = None
  data_free_prior: str = "implicit"
  data_free_progressive: bool = True
  tv_weight: float = 0.05
  l2_weight: float = 0.0
  proximity_weight: float = 10.0
  manifold_weight: float = 0.003
  inversion_starts: int = 4
  inversion_steps: int = 100
  inversion_step_size: float = 0.1
  inversion_prior_weight: float = 0.0
  max_inversion_error: float = 0.0
  chunk_size: int = 0
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

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> ExplainConfig:
    values = dict(values)
    if "vae" in values:  # the generator's name before models other than VAEs were explained
      values["generator"] = values.pop("vae")
    check_option_names(values)
    for name in ("classes", "vae_widths", "classifier_widths", "exclude_attributes"):
      if name in values:
        values[name] = tuple(values[name])
    return cls(**values)


QUICK_LIMIT = 1000


def with_quick_defaults(config: ExplainConfig) -> ExplainConfig:
  """`config` with the options `quick` fills in (those left at 0) filled."""
  if not config.quick:
    return config
  from cfajax import _recipes
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

  Left out: the pair `classes` of a binary classifier; the other optimizer's
  step size; inversion options when the generator had an encoder; CelebA's
  attribute options for other data; a preset's data and training options for
  the user's own inputs.
  """
  from cfajax import attacks

  unused = set()
  if binary:
    unused.add("classes")
  # The attack fields other than those of the attack that ran (seed serves more than it).
  unused |= (attacks.CONFIG_FIELDS - {"seed"}) - set(
      attacks.from_config(config).config_fields())
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
  known = [f.name for f in dataclasses.fields(ExplainConfig)]
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f"unknown explain options {unknown}; the options are {known}")


def _int_tuple(name: str, value, *, length: int | None = None, low: int = 0) -> tuple[int, ...]:
  from cfajax import _checks
  if not isinstance(value, (tuple, list)):
    raise ValueError(f"{name} must be a tuple of integers; got {type(value).__name__} "
                     f"{value!r}")
  if length is not None and len(value) != length:
    raise ValueError(f"{name} must hold {length} integers; got {tuple(value)}")
  return tuple(_checks.integer(f"{name}[{i}]", v, low=low) for i, v in enumerate(value))


def _optional_path(name: str, value) -> None:
  if value is not None and not isinstance(value, (str, os.PathLike)):
    raise ValueError(f"{name} must be a path or None; got {type(value).__name__} {value!r}")


def check_config(config: ExplainConfig) -> None:
  """Checks every option's type and range, and a preset's checkpoints, before any work.

  Raises:
    ValueError: an option of the wrong type or out of range, classes the
      classifier does not have, a target attribute CelebA does not have, or
      checkpoints that do not fit the dataset.
    FileNotFoundError: a named checkpoint does not exist.
  """
  import jax
  import numpy as np

  from cfajax import _checks
  from cfajax import _data
  from cfajax import _presets
  from cfajax import attacks
  c = config
  if c.dataset is not None:
    _checks.choice("dataset", c.dataset, _presets.PRESETS)
  if not isinstance(c.out, (str, os.PathLike)) or not str(c.out):
    raise ValueError(f"out must be a folder path; got {c.out!r}")
  for name in ("data_dir", "generator", "classifier", "images", "attributes"):
    _optional_path(name, getattr(c, name))
  classes = _int_tuple("classes", c.classes, length=2)
  if classes[0] == classes[1]:
    raise ValueError(f"classes must be two different classes, e.g. (4, 9); got {classes}")
  celeba = _data.CELEBA_ATTRIBUTE_NAMES
  if not isinstance(c.target_attribute, str) or (c.dataset == "celeba"
                                                 and c.target_attribute not in celeba):
    raise ValueError(f"target_attribute must be one of CelebA's attributes {list(celeba)}; "
                     f"got {c.target_attribute!r}")
  if not isinstance(c.exclude_attributes, (tuple, list)) or not all(
      isinstance(name, str) and (c.dataset != "celeba" or name in celeba)
      for name in c.exclude_attributes):
    raise ValueError(f"exclude_attributes must be attribute names"
                     f"{' (CelebA: ' + str(list(celeba)) + ')' if c.dataset == 'celeba' else ''}"
                     f"; got {c.exclude_attributes!r}")
  _checks.number("max_attribute_correlation", c.max_attribute_correlation, low=0.0, high=1.0,
                 low_open=True)
  _checks.choice("explain_split", c.explain_split, ("train", "test", "all"))
  _checks.integer("image_size", c.image_size, low=0, high=4096)
  _checks.integer("latent_dim", c.latent_dim, low=0)
  _int_tuple("vae_widths", c.vae_widths, low=1)
  _int_tuple("classifier_widths", c.classifier_widths, low=1)
  for name in ("vae_epochs", "classifier_epochs", "train_batch_size"):
    _checks.integer(name, getattr(c, name), low=0)
  # Every attack's options are checked, whichever attack runs: each value checks its own.
  _checks.number("step_size", c.step_size, low=0.0, low_open=True)
  _checks.number("learning_rate", c.learning_rate, low=0.0, low_open=True)
  _checks.choice("attack", c.attack, tuple(attacks.ATTACKS))
  for attack in attacks.ATTACKS.values():
    attack.from_config(c).check()
  pool_size = _checks.integer("pool_size", c.pool_size, low=1)
  if pool_size < jax.local_device_count():
    raise ValueError(f"pool_size ({pool_size}) must be at least the number of local devices "
                     f"({jax.local_device_count()}) the attack's pool is split over")
  _optional_path("manifold", c.manifold)
  if c.manifold is not None and c.attack != "data-free":
    raise ValueError(f"manifold is a model of the data-free attack; attack is {c.attack!r} "
                     "(pass attack='data-free', or leave manifold out)")
  if c.manifold is not None:
    from cfajax import _sources
    if not _sources.is_import_string(c.manifold) and not os.path.exists(c.manifold):
      raise FileNotFoundError(f"manifold {c.manifold!r}: no checkpoint folder there (train one "
                              "with `cfajax train duq`), and not an import string of the form "
                              "package.module:factory")
  _checks.integer("inversion_starts", c.inversion_starts, low=1, high=1024)
  _checks.integer("inversion_steps", c.inversion_steps, low=0)
  _checks.number("inversion_step_size", c.inversion_step_size, low=0.0, low_open=True)
  _checks.number("inversion_prior_weight", c.inversion_prior_weight, low=0.0)
  _checks.number("max_inversion_error", c.max_inversion_error, low=0.0)
  _checks.integer("chunk_size", c.chunk_size, low=0)
  _checks.integer("limit", c.limit, low=0)
  _checks.number("probe_c", c.probe_c, low=0.0, low_open=True)
  if c.probe_class_weight not in (None, "balanced"):
    raise ValueError(f"probe_class_weight must be None or 'balanced'; got {c.probe_class_weight!r}")
  _checks.integer("num_permutations", c.num_permutations, low=0)
  for name in ("probe_standardize", "quick", "data_free_progressive", "probe_bootstrap",
               "exclude_started_at_target"):
    if not isinstance(getattr(c, name), (bool, np.bool_)):
      raise ValueError(f"{name} must be True or False; got {getattr(c, name)!r}")
  _checks.number("probe_validation_fraction", c.probe_validation_fraction, low=0.0, high=1.0,
                 low_open=True, high_open=True)
  _checks.integer("num_bootstrap", c.num_bootstrap, low=0)
  _checks.integer("num_figure_examples", c.num_figure_examples, low=0)
  _checks.integer("seed", c.seed, low=0)
  if c.dataset is not None:
    _presets.check_checkpoints(c)  # reads the checkpoints' configs, not their weights
