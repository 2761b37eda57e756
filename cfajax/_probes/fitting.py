"""`fit_probes`: one probe per attribute on latents, checked against its held-out split."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from cfajax import _array_checks
from cfajax._probes._metrics import probe_metrics
from cfajax._probes._problem import _split
from cfajax._probes._problem import check_attributes
from cfajax._probes._problem import check_names
from cfajax._probes._problem import fit_problem
from cfajax._probes._problem import normalized_weights
from cfajax._probes._solver import DEFAULT_MAX_ITER
from cfajax._probes._solver import DEFAULT_TOL
from cfajax._probes._solver import Probes
from cfajax._probes._solver import _fit_all
from cfajax._probes._solver import default_attribute_batch_size


def fit_probes(
    z,
    attributes,
    *,
    C: float = 1.0,
    names: Sequence[str] | None = None,
    class_weight: str | None = None,
    standardize: bool = False,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    validation: tuple | None = None,
    validation_fraction: float | None = None,
    seed: int = 0,
    attribute_batch_size: int | None = None,
) -> Probes:
  """Fits one L2-regularised logistic regression per attribute on latents.

  Each probe minimises scikit-learn's `LogisticRegression(C=C)` objective
  `1/2 |w|^2 + C sum_i s_i logloss_i` (intercept unpenalised) by full-batch
  L-BFGS, all attributes in one jitted program. New data of the same shapes
  reuses the compiled program.

  Args:
    z: (n, d) floating latents.
    attributes: (n, A) labels in {0, 1} (bool, int or float).
    C: inverse regularisation strength, as in scikit-learn.
    names: A attribute names (default `attribute_0`, ...).
    class_weight: None (all `s_i = 1`) or `"balanced"`, scikit-learn's
      `s_i = n / (2 * count of y_i's class)`, computed per attribute on the
      fitting data.
    standardize: fit on `(z - mean) / std` (population std of the fitting data,
      1 where a latent is constant), as scikit-learn's `StandardScaler`; the
      probes store and apply the same transform when predicting.
    max_iter: most L-BFGS iterations per attribute.
    tol: stop when the gradient norm of `J / (C sum_i s_i)` is `<= tol`.
      Float32 reaches 1e-6 reliably; much smaller values may not be reached,
      which is reported in `Probes.converged`.
    validation: held-out `(z_val (m, d), attributes_val (m, A))` on which to
      measure accuracy and ROC AUC.
    validation_fraction: alternatively, hold out this fraction of `z` (a random
      split drawn with `seed`) and fit on the rest.
    seed: seed of the `validation_fraction` split.
    attribute_batch_size: attributes fitted side by side in one vmapped loop
      (memory O(batch * n * d)); 1 fits them one after another. Default: 1 on
      CPU, all (within a 1 GiB copy of the latents) on accelerators; see
      `default_attribute_batch_size`. Changes speed and memory, not the result.

  Returns:
    `Probes` with coefficients, fit diagnostics and held-out metrics.

  Raises:
    ValueError: on latents or labels of the wrong shape, NaN, labels other than
      0 and 1, an attribute with one class only among the fitting data, or
      invalid options.

  Example:
    >>> probes = fit_probes(z, attributes, names=("thick", "slanted_right"),
    ...                     validation_fraction=0.2)
    >>> probes.predict_proba(z_cf) - probes.predict_proba(z)   # local attributions
  """
  z = _array_checks.latents(z)
  y = check_attributes(attributes, z.shape[0])
  if z.shape[0] == 0 or y.shape[1] == 0:
    raise ValueError(f"need at least one latent and one attribute; got attributes {y.shape}")
  names = check_names(names, y.shape[1])
  if not (math.isfinite(C) and C > 0):
    raise ValueError(f"C must be a positive number; got {C}")
  if int(max_iter) != max_iter or max_iter < 1:
    raise ValueError(f"max_iter must be a positive integer; got {max_iter}")
  if not tol >= 0:
    raise ValueError(f"tol must be >= 0; got {tol}")
  if attribute_batch_size is None:
    attribute_batch_size = default_attribute_batch_size(y.shape[1], *z.shape)
  if int(attribute_batch_size) != attribute_batch_size or attribute_batch_size < 1:
    raise ValueError(f"attribute_batch_size must be a positive integer; got {attribute_batch_size}")
  z_fit, y_fit, z_val, y_val = _split(z, y, validation, validation_fraction, seed)

  counts = y_fit.sum(axis=0)
  one_class = np.flatnonzero((counts == 0) | (counts == y_fit.shape[0]))
  if one_class.size:
    a = one_class[0]
    raise ValueError(
        f"attribute {names[a]!r} (column {a}) has only class {int(y_fit[0, a])} among the "
        f"{y_fit.shape[0]} fitting latents; a probe needs both classes")

  problem = fit_problem(z_fit, standardize)
  weight, penalty = normalized_weights(y_fit, class_weight, C)
  dtype = problem.x.dtype
  result = _fit_all(
      problem.x, jnp.asarray(y_fit.T, dtype), jnp.asarray(weight.T, dtype),
      jnp.asarray(penalty, dtype), jnp.asarray(tol, dtype), jnp.asarray(max_iter, jnp.int32),
      batch_size=min(int(attribute_batch_size), y.shape[1]))
  mean, scale, center = problem.mean, problem.scale, problem.center

  coef = result.coef
  intercept = result.intercept - coef @ jnp.asarray(center, dtype)
  converged = result.grad_norm <= tol
  if not bool(jnp.all(converged)):
    slow = [names[a] for a in np.flatnonzero(~np.asarray(converged))]
    warnings.warn(
        f"{len(slow)} probe(s) did not reach tol={tol} in max_iter={max_iter} iterations: "
        f"{slow[:5]}; see Probes.grad_norm", RuntimeWarning, stacklevel=2)
  nan = jnp.full((len(names),), jnp.nan, dtype)
  probes = Probes(
      coef=coef, intercept=intercept, mean=jnp.asarray(mean, dtype),
      scale=jnp.asarray(scale, dtype), iterations=result.iterations,
      grad_norm=result.grad_norm, converged=converged, val_accuracy=nan, val_auc=nan,
      names=names)
  if z_val is not None:
    accuracy, auc = probe_metrics(probes, z_val, y_val)
    probes = dataclasses.replace(
        probes, val_accuracy=jnp.asarray(accuracy, dtype), val_auc=jnp.asarray(auc, dtype))
  return probes
