"""The checks of a dataset-wide explanation's options, before any work.

`check_config` checks each option's type and range, the attack value's own
options, and a preset's checkpoints against its dataset (reading their
configs, not their weights), before anything is loaded, trained or written.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from cfajax import _checks
from cfajax import _data
from cfajax import _presets
from cfajax import _sources
from cfajax import attacks
from cfajax._explain_config import ExplainConfig


def _int_tuple(name: str, value, *, length: int | None = None, low: int = 0) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)):
    raise ValueError(f"{name} must be a tuple of integers; got {type(value).__name__} "
                     f"{value!r}")
  if length is not None and len(value) != length:
    raise ValueError(f"{name} must hold {length} integers; got {tuple(value)}")
  return tuple(_checks.integer(f"{name}[{i}]", v, low=low) for i, v in enumerate(value))


def _optional_path(name: str, value) -> None:
  if value is not None and not isinstance(value, (str, os.PathLike)):
    raise ValueError(f"{name} must be a path or None; got {type(value).__name__} {value!r}")


def check_config(config: ExplainConfig, *, generator_given: bool = False) -> None:
  """Checks every option's type and range, and a preset's checkpoints, before any work.

  `generator_given`: a generator object was passed to `explain`, so a preset trains none.

  Raises:
    ValueError: an option of the wrong type or out of range, classes the
      classifier does not have, a target attribute CelebA does not have, or
      checkpoints that do not fit the dataset.
    FileNotFoundError: a named checkpoint does not exist.
  """
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
  _checks.integer("ddim_steps", c.ddim_steps, low=0)
  _checks.number("edit_depth", c.edit_depth, low=0.0, high=1.0)
  _checks.integer("probe_examples", c.probe_examples, low=0)
  attacks.check_value(c.attack)
  pool_size = _checks.integer("pool_size", c.pool_size, low=1)
  if pool_size < jax.local_device_count():
    raise ValueError(f"pool_size ({pool_size}) must be at least the number of local devices "
                     f"({jax.local_device_count()}) the attack's pool is split over")
  for role, source in c.attack.model_sources().items():  # e.g. the data-free attack's manifold
    if not _sources.is_import_string(source) and not os.path.exists(source):
      raise FileNotFoundError(f"{role} {source!r}: no checkpoint folder there (train one with "
                              f"`cfajax train duq`), and not an import string of the form "
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
  for name in ("probe_standardize", "quick", "probe_bootstrap", "exclude_started_at_target"):
    if not isinstance(getattr(c, name), (bool, np.bool_)):
      raise ValueError(f"{name} must be True or False; got {getattr(c, name)!r}")
  _checks.number("probe_validation_fraction", c.probe_validation_fraction, low=0.0, high=1.0,
                 low_open=True, high_open=True)
  _checks.integer("num_bootstrap", c.num_bootstrap, low=0)
  _checks.integer("num_figure_examples", c.num_figure_examples, low=0)
  _checks.integer("seed", c.seed, low=0)
  if c.dataset is not None:
    # Reads the checkpoints' configs, not their weights.
    _presets.check_checkpoints(c, generator_given)
  elif isinstance(c.generator, (str, os.PathLike)) and not _sources.is_import_string(
      c.generator) and os.path.isdir(c.generator):
    _presets.check_edit(c, _presets.checkpoint_config(str(c.generator), "generator"))
