"""Linear probes: one L2-regularised logistic regression per attribute on latents.

For attribute `a` with labels `y_i` in {0, 1} and sample weights `s_i`, the
probe `g_a(z) = sigmoid(w . z + b)` minimises exactly scikit-learn's
`LogisticRegression(C=C)` objective

    J(w, b) = 1/2 |w|^2 + C * sum_i s_i * logloss(y_i, w . z_i + b),

with the intercept `b` unpenalised. The fit minimises `J / (C * sum_i s_i)`
instead (the same minimiser; it is also the scale scikit-learn's own lbfgs
solver works at), so that the loss term is a weighted mean of order one and the
gradient tolerance means the same thing for every `n` and `C`; float32 then
converges to a gradient norm of 1e-6 or less.
The latents are also centred before fitting and the intercept moved back
afterwards, `b = b_c - w . mean`: an exact reparametrisation (the intercept is
not penalised) that keeps float32 well conditioned when latents are not centred.

`fit_one_probe` runs full-batch L-BFGS (`optax.lbfgs` with its zoom line
search) for one attribute in a `lax.while_loop`; `fit_probes` maps it over the
attributes (vmapped in batches, or one at a time on CPU) and jits it once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from cfajax import _checks

DEFAULT_MAX_ITER = 500
DEFAULT_TOL = 1e-6
MEMORY_SIZE = 10  # L-BFGS curvature pairs
BROADCAST_BUDGET = 2**28  # latent elements a vmapped batch of attributes may copy


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Probes:
  """Fitted logistic-regression probes for `A` attributes on `d`-dim latents.

  A pytree of arrays (the names are static), usable inside `jit`. The probes
  act on standardised latents `(z - mean) / scale`; without standardisation
  `mean` is 0 and `scale` is 1, and `coef`, `intercept` are directly
  comparable with scikit-learn's `coef_`, `intercept_`.

  Attributes:
    coef: (A, d) weights `w_a`.
    intercept: (A,) intercepts `b_a`.
    mean: (d,) latent mean subtracted before the probes (0 if not standardised).
    scale: (d,) latent standard deviation divided by (1 if not standardised).
    iterations: (A,) int32 L-BFGS iterations taken.
    grad_norm: (A,) float32 final gradient norm of the rescaled objective
      `J / (C * sum_i s_i)`.
    converged: (A,) bool, `grad_norm <= tol`.
    val_accuracy: (A,) held-out accuracy (threshold 0.5); NaN without held-out data.
    val_auc: (A,) held-out ROC AUC; NaN without held-out data or where the
      held-out labels of an attribute have one class only.
    names: (A,) attribute names (static).
  """

  coef: jax.Array
  intercept: jax.Array
  mean: jax.Array
  scale: jax.Array
  iterations: jax.Array
  grad_norm: jax.Array
  converged: jax.Array
  val_accuracy: jax.Array
  val_auc: jax.Array
  names: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))

  def predict_logit(self, z: jax.Array) -> jax.Array:
    """Log-odds of every attribute: (..., d) latents -> (..., A)."""
    x = (jnp.asarray(z) - self.mean) / self.scale
    return x @ self.coef.T + self.intercept

  def predict_proba(self, z: jax.Array) -> jax.Array:
    """Probability `g_a(z)` of every attribute: (..., d) latents -> (..., A)."""
    return jax.nn.sigmoid(self.predict_logit(z))

  @property
  def num_attributes(self) -> int:
    return len(self.names)


class FitResult(NamedTuple):
  """What the fit of one attribute returns (shapes for one attribute)."""

  coef: jax.Array  # (d,)
  intercept: jax.Array  # ()
  iterations: jax.Array  # () int32
  grad_norm: jax.Array  # ()


def rescaled_objective(params, x, y, weight, penalty):
  """`J / (C * sum_i s_i)` for one attribute.

  Args:
    params: `(w, b)` with `w` (d,) and `b` ().
    x: (n, d) centred latents.
    y: (n,) labels in {0, 1}.
    weight: (n,) sample weights normalised to sum to one.
    penalty: () `1 / (C * sum_i s_i)`, the weight of `|w|^2 / 2`.
  """
  w, b = params
  logits = x @ w + b
  # logloss(y, t) = log(1 + e^t) - y t, stable for either sign of t.
  losses = jnp.logaddexp(0.0, logits) - y * logits
  return jnp.sum(weight * losses) + 0.5 * penalty * jnp.sum(jnp.square(w))


def fit_one_probe(x, y, weight, penalty, tol, max_iter) -> FitResult:
  """L-BFGS on one attribute's rescaled objective, from zero, until converged.

  Stops when the gradient norm is `<= tol`, after `max_iter` iterations, or
  when the objective becomes non-finite. Not jitted.

  Args:
    x: (n, d) centred latents.
    y: (n,) labels in {0, 1} (floating).
    weight: (n,) sample weights summing to one.
    penalty: () `1 / (C * sum_i s_i)`.
    tol: () gradient-norm tolerance.
    max_iter: () int32 most iterations.
  """
  fun = functools.partial(rescaled_objective, x=x, y=y, weight=weight, penalty=penalty)
  solver = optax.lbfgs(memory_size=MEMORY_SIZE)
  params = (jnp.zeros(x.shape[1], x.dtype), jnp.zeros((), x.dtype))
  value, grad = jax.value_and_grad(fun)(params)

  # The carry holds the value and gradient at `params`: the zoom line search
  # has already computed them at the accepted step and keeps them in its
  # state. (`optax.value_and_grad_from_state` would fetch them through a
  # `lax.cond`, which under `vmap` turns into evaluating both branches.)
  def body(carry):
    params, state, value, grad = carry
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    params = optax.apply_updates(params, updates)
    return params, state, otu.tree_get(state, "value"), otu.tree_get(state, "grad")

  def going_on(carry):
    _, state, value, grad = carry
    return ((otu.tree_get(state, "count") < max_iter) & (otu.tree_norm(grad) > tol)
            & jnp.isfinite(value))

  params, state, _, grad = jax.lax.while_loop(
      going_on, body, (params, solver.init(params), value, grad))
  # optax's annotations make `params` any pytree; it is (coef, intercept).
  return FitResult(
      coef=params[0], intercept=params[1],  # pyright: ignore[reportIndexIssue, reportArgumentType]
      iterations=otu.tree_get(state, "count").astype(jnp.int32),
      grad_norm=otu.tree_norm(grad))


def default_attribute_batch_size(num_attributes: int, n: int, d: int) -> int:
  """All attributes in one vmapped loop on accelerators; one at a time on CPU.

  Under `vmap`, the `lax.cond`s inside optax's zoom line search evaluate both
  branches and broadcast the latents to (batch, n, d). On CPU, where one
  attribute's matrix-vector products already use the cores, fitting the
  attributes one after another is faster (40 probes on 10,000 x 64 latents,
  2 CPU cores: 0.1 s one at a time, 0.25 s in vmapped batches of 4, 0.9 s
  all 40 at once; `benchmarks/fit_probes_bench.py`). Accelerators want the
  batch for their parallelism (not measured here), up to `BROADCAST_BUDGET`
  broadcast latent elements (1 GiB of float32).
  """
  if jax.default_backend() == "cpu":
    return 1
  return max(1, min(num_attributes, BROADCAST_BUDGET // max(n * d, 1)))


@functools.partial(jax.jit, static_argnames="batch_size")
def _fit_all(x, y, weight, penalty, tol, max_iter, *, batch_size) -> FitResult:
  """Fits every attribute: `y`, `weight` (A, n), `penalty` (A,) -> (A, ...) fields.

  `batch_size` attributes share one vmapped loop; 1 runs them one at a time.
  """
  # args is (y, weight, penalty), a length pyright cannot see.
  fit = lambda args: fit_one_probe(x, *args, tol, max_iter)  # pyright: ignore[reportCallIssue]
  return jax.lax.map(fit, (y, weight, penalty), batch_size=None if batch_size == 1 else batch_size)


# -- metrics, on the host ------------------------------------------------------


def roc_auc(labels, scores) -> float:
  """Area under the ROC curve from ranks (the Mann-Whitney U statistic).

  AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N), with tied scores
  given their average rank, so a tie between a positive and a negative counts
  one half.

  Args:
    labels: (n,) in {0, 1}.
    scores: (n,) real scores, higher meaning more likely positive.

  Returns:
    The AUC in [0, 1], or NaN if `labels` holds one class only.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return math.nan
  order = np.argsort(scores, kind="stable")
  sorted_scores = scores[order]
  starts = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
  group = np.cumsum(starts) - 1
  bounds = np.r_[np.flatnonzero(starts), scores.size]
  # Ranks bounds[g] + 1 .. bounds[g + 1] share their mean.
  mean_rank = (bounds[:-1] + 1 + bounds[1:]) / 2.0
  ranks = np.empty(scores.size)
  ranks[order] = mean_rank[group]
  return float((ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def probe_metrics(probes: Probes, z, attributes) -> tuple[np.ndarray, np.ndarray]:
  """Accuracy and ROC AUC of each probe on labelled latents.

  Args:
    probes: fitted `Probes`.
    z: (n, d) latents.
    attributes: (n, A) labels in {0, 1}.

  Returns:
    `(accuracy, auc)`, each (A,) float64; AUC is NaN for a one-class attribute.
  """
  logits = np.asarray(probes.predict_logit(jnp.asarray(z)))
  labels = np.asarray(attributes).astype(bool)
  accuracy = np.mean((logits >= 0) == labels, axis=0)
  auc = np.array([roc_auc(labels[:, a], logits[:, a]) for a in range(labels.shape[1])])
  return accuracy, auc


# -- validation, in Python before anything is traced --------------------------


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
    z_val = _checks.latents(validation[0])
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
  z = _checks.latents(z)
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
