"""Checks of user-given arrays and precisions, done before anything is traced or run.

Like `_checks`, each names the argument, what was expected and what came.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._checks import choice


def precision(value, choices) -> str:
  """`value` if it is one of `choices` and, for "float64", JAX runs in 64 bits."""
  choice("precision", value, choices)
  if value == "float64" and not jax.config.read("jax_enable_x64"):
    raise ValueError("precision='float64' needs 64-bit JAX: set "
                     "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1) first")
  return value


def finite_rows(x, name: str, ndim: int, what: str, row: str) -> np.ndarray:
  """`x` as a host array after checking it is a finite float array of `ndim` axes.

  `what` names the expected array in the error ("latents of shape (n, d)"),
  `row` one of its rows ("latent").
  """
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim != ndim:
    raise ValueError(f"{name} must be {what}; got shape {tuple(x.shape)}")
  host = np.asarray(x)
  if not jnp.issubdtype(host.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array; got dtype {host.dtype}")
  if not np.all(np.isfinite(host)):
    bad = np.flatnonzero(~np.all(np.isfinite(host.reshape(len(host), -1)), axis=1))
    raise ValueError(
        f"{name} must be finite; {bad.size} {row}(s) hold NaN or inf, first at row {bad[0]}")
  return host


def latents(z, name: str = "z") -> np.ndarray:
  """`z` as a host array after checking it is a finite (n, d) float array."""
  return finite_rows(z, name, 2, "latents of shape (n, d)", "latent")
