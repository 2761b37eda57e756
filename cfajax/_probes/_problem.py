"""The fit's inputs, checked and prepared in Python before anything is traced: attribute
tables, names, sample weights, the standardised latents and the validation split."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfajax import _array_checks


def check_attributes(attributes, n: int, what: str = "attributes") -> np.ndarray:
  """Returns `attributes` as (n, A) float64 after checking it holds only 0 and 1."""
  host = np.asarray(attributes)
  if host.ndim != 2:
    raise ValueError(
        f"{what} must have shape (n, A), one column per attribute; got shape {host.shape}"
        + (" (use a[:, None] for a single attribute)" if host.ndim == 1 else ""))
  if host.shape[0] != n:
    raise ValueError(f"{what} has {host.shape[0]} rows but the latents have {n}")
  if host.dtype.kind not in "biuf":
    raise ValueError(f"{what} must be numeric 0/1 labels; got dtype {host.dtype}")
  original, host = host, host.astype(np.float64)
  if np.isnan(host).any():
    raise ValueError(f"{what} hold NaN; expected labels in {{0, 1}}")
  bad = ~((host == 0) | (host == 1))
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(
        f"{what} must be 0 or 1; got {original[row, col].item()} at row {row}, column {col}")
  return host


def check_names(names, num_attributes: int) -> tuple[str, ...]:
  if names is None:
    return tuple(f"attribute_{a}" for a in range(num_attributes))
  names = tuple(names)
  if len(names) != num_attributes:
    raise ValueError(f"names has {len(names)} entries for {num_attributes} attributes")
  if not all(isinstance(name, str) for name in names):
    raise ValueError("names must be strings")
  if len(set(names)) != len(names):
    raise ValueError(f"names must be unique; got {names}")
  return names


def class_sample_weights(y: np.ndarray, class_weight, counts=None) -> np.ndarray:
  """(n, A) sample weights: ones, or scikit-learn's "balanced" n / (2 count_c).

  With `counts`, (n,) row multiplicities, n and the class counts are the
  weighted ones (as scikit-learn computes them for a resample's repeated rows).
  """
  if class_weight is None:
    return np.ones_like(y)
  if class_weight != "balanced":
    raise ValueError(f"class_weight must be None or 'balanced'; got {class_weight!r}")
  counts = np.ones(len(y)) if counts is None else counts
  positives = counts @ y
  n = counts.sum()
  with np.errstate(divide="ignore"):
    return np.where(y == 1, n / (2.0 * positives), n / (2.0 * (n - positives)))


class FitProblem(NamedTuple):
  """The latents as every probe is fitted on them.

  Attributes:
    x: (n, d) standardised and centred latents, float32 (float64 under x64).
    mean, scale: (d,) float64 standardisation (0 and 1 without it).
    center: (d,) float64 mean of the standardised latents, removed from `x`.
  """

  x: jax.Array
  mean: np.ndarray
  scale: np.ndarray
  center: np.ndarray


def fit_problem(z_fit: np.ndarray, standardize: bool) -> FitProblem:
  """Standardises (optionally) and centres the fitting latents (see the module's doc)."""
  z64 = np.asarray(z_fit, np.float64)
  d = z64.shape[1]
  if standardize:
    mean = z64.mean(axis=0)
    scale = z64.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
  else:
    mean, scale = np.zeros(d), np.ones(d)
  x = (z64 - mean) / scale
  center = x.mean(axis=0)
  dtype = jax.dtypes.canonicalize_dtype(np.promote_types(np.asarray(z_fit).dtype, np.float32))
  return FitProblem(jnp.asarray(x - center, dtype), mean, scale, center)


def normalized_weights(y: np.ndarray, class_weight, C: float, counts=None):
  """Sample weights summing to one per attribute, and each attribute's penalty.

  Args:
    y: (n, A) labels in {0, 1}.
    class_weight: None or "balanced" (scikit-learn's, computed on the
      weighted data).
    C: inverse regularisation strength.
    counts: (n,) multiplicity of each row (a bootstrap resample); default ones.

  Returns:
    `(weight, penalty)`: (n, A) float64 weights with columns summing to one,
    and (A,) `1 / (C * sum_i s_i)`.
  """
  counts = np.ones(len(y)) if counts is None else np.asarray(counts, np.float64)
  weight = counts[:, None] * class_sample_weights(y, class_weight, counts)
  total = weight.sum(axis=0)
  return weight / total, 1.0 / (C * total)


def _split(z, y, validation, validation_fraction, seed):
  """Returns `(z_fit, y_fit, z_val, y_val)`; the held-out pair may be None."""
  if validation is not None and validation_fraction is not None:
    raise ValueError("pass either validation=(z_val, a_val) or validation_fraction, not both")
  if validation is not None:
    if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
      raise ValueError("validation must be a pair (z_val, attributes_val)")
    z_val = _array_checks.latents(validation[0])
    if z_val.shape[1] != z.shape[1]:
      raise ValueError(
          f"validation latents have dimension {z_val.shape[1]}; the latents have {z.shape[1]}")
    y_val = check_attributes(validation[1], z_val.shape[0], "validation attributes")
    if y_val.shape[1] != y.shape[1]:
      raise ValueError(
          f"validation attributes have {y_val.shape[1]} columns; the attributes have {y.shape[1]}")
    return z, y, z_val, y_val
  if validation_fraction is not None:
    if not 0.0 < validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in (0, 1); got {validation_fraction}")
    n = z.shape[0]
    num_val = int(round(n * validation_fraction))
    if not 0 < num_val < n:
      raise ValueError(
          f"validation_fraction={validation_fraction} of {n} latents leaves an empty part")
    perm = np.random.default_rng(seed).permutation(n)
    val, fit = perm[:num_val], perm[num_val:]
    return z[fit], y[fit], z[val], y[val]
  return z, y, None, None
