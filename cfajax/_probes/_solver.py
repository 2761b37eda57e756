"""The fit itself: one probe by full-batch L-BFGS in a `lax.while_loop` on the rescaled
objective, mapped over attributes in batches sized to the memory they broadcast."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

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
