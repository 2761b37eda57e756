"""The public Counterfactual Attack: validation, then a scheduler.

Inputs are checked in Python before anything is traced, so that a wrong shape,
dtype or value is a `ValueError` that names what was expected; inside the
compiled loop, failures are result codes (`Status`), never exceptions.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import cast
from typing import overload

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfajax import _array_checks
from cfajax import _checks
from cfajax import _driver
from cfajax._callables import as_pure_callable
from cfajax._choices import OBJECTIVES
from cfajax._loop import PRECISIONS
from cfajax._loop import AttackConfig
from cfajax._loop import AttackHyper
from cfajax._loop import AttackResult
from cfajax._steps import PLAIN_ASCENT
from cfajax._steps import OptaxStep
from cfajax._steps import OptimizerSpec
from cfajax._steps import TrustRegion

DEFAULT_STEP_SIZE = 0.1
DEFAULT_MAX_STEPS = 500
DEFAULT_BATCH_SIZE = 4096


# -- validation, done in Python before anything is traced ---------------------


@dataclasses.dataclass(frozen=True)
class ModelSignature:
  """Shapes that `decode` and `classify` produce for a latent size `d`."""

  latent_dim: int
  image_shape: tuple[int, ...]
  num_logits: int


def check_models(decode, classify, latent_dim: int, dtype) -> ModelSignature:
  """Traces `decode` and `classify` abstractly on one latent; checks shapes.

  Raises:
    ValueError: if `decode` does not map (B, d) to (B, ...) images or
      `classify` does not map those images to (B, K) logits.
  """
  probe = jax.ShapeDtypeStruct((2, latent_dim), dtype)
  try:
    images = jax.eval_shape(decode, probe)
  except Exception as e:  # any tracing failure is a contract violation
    raise ValueError(
        f"decode failed on latents of shape (2, {latent_dim}) {np.dtype(dtype).name}; "
        f"expected a function mapping (B, d) latents to (B, H, W, C) images: {e}") from e
  if not hasattr(images, "shape") or images.ndim < 2 or images.shape[0] != 2:
    got = getattr(images, "shape", type(images).__name__)
    raise ValueError(
        f"decode must map latents (B, {latent_dim}) to images (B, H, W, C); "
        f"for B=2 it returned {got}")
  try:
    logits = jax.eval_shape(classify, images)
  except Exception as e:
    raise ValueError(
        f"classify failed on decoded images of shape {images.shape}; expected a "
        f"function mapping (B, H, W, C) images to (B, K) logits: {e}") from e
  if not hasattr(logits, "shape") or logits.ndim != 2 or logits.shape[0] != 2:
    got = getattr(logits, "shape", type(logits).__name__)
    raise ValueError(
        f"classify must map images (B, ...) to logits (B, K); for images "
        f"{images.shape} it returned {got}")
  return ModelSignature(latent_dim, tuple(images.shape[1:]), int(logits.shape[1]))


def check_targets(target, n: int, num_logits: int, rows: str = "z") -> np.ndarray:
  """Broadcasts `target` to (n,) int32 and checks it is a valid class; `rows` names
  the array whose rows the targets belong to."""
  target = np.asarray(target)
  if target.ndim > 1 or (target.ndim == 1 and target.shape[0] != n):
    raise ValueError(
        f"target must be a scalar or have shape ({n},) to match {rows}; got shape "
        f"{target.shape}")
  if target.dtype.kind == "f":
    if not np.all(np.isfinite(target)) or not np.all(target == np.round(target)):
      raise ValueError(f"target must hold integer class indices; got {target.dtype} values")
  elif target.dtype.kind not in "iub":
    raise ValueError(f"target must hold integer class indices; got dtype {target.dtype}")
  classes = 2 if num_logits == 1 else num_logits
  if target.size and (target.min() < 0 or target.max() >= classes):
    kind = ("0 or 1 for a binary classifier with one logit" if num_logits == 1
            else f"a class index in [0, {num_logits})")
    raise ValueError(f"target must be {kind}; got values in [{target.min()}, {target.max()}]")
  return np.broadcast_to(target, (n,)).astype(np.int32)


def make_hyper(threshold, step_size, max_steps, grad_tol, dtype) -> AttackHyper:
  """Checks the traced options and packs them as device scalars."""
  threshold = _checks.number("threshold", threshold, low=0.0, high=1.0, low_open=True,
                             high_open=True)
  step_size = _checks.number("step_size", step_size, low=0.0, low_open=True)
  max_steps = _checks.integer("max_steps", max_steps, low=0)
  grad_tol = _checks.number("grad_tol", grad_tol, low=0.0)
  return AttackHyper(
      threshold=jnp.asarray(threshold, jnp.float32),
      step_size=jnp.asarray(step_size, dtype),
      max_steps=jnp.asarray(max_steps, jnp.int32),
      grad_tol=jnp.asarray(grad_tol, jnp.float32),
  )


def _optimizer_factory(optimizer: Any) -> OptimizerSpec:
  """`optimizer` as None, a ready transformation, or a factory of a learning rate."""
  if optimizer is None or isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  if isinstance(optimizer, str):
    factory = getattr(optax, optimizer, None)
    if not callable(factory) or isinstance(factory, type):
      raise ValueError(f"optimizer {optimizer!r} is neither 'trust-region', 'ascent' nor an "
                       "optax optimizer; name one such as 'adam', 'sgd', 'rmsprop' or 'lion'")
    try:
      parameters = list(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
      parameters = []
    if not parameters or parameters[0] != "learning_rate":
      raise ValueError(f"optax.{optimizer} does not take a learning rate first; name an "
                       "optimizer such as 'adam', 'sgd', 'rmsprop' or 'lion'")
    return cast(OptimizerSpec, factory)
  if callable(optimizer):
    return cast(OptimizerSpec, optimizer)
  raise ValueError("optimizer must be None or 'trust-region' (the scale-free default), "
                   "'ascent' (plain gradient ascent), a cfajax.TrustRegion, an optax "
                   "optimizer's name ('adam'), a factory of a learning rate (optax.adam) or an "
                   f"optax.GradientTransformation; got {type(optimizer).__name__}")


def step_rule(optimizer) -> TrustRegion | OptaxStep:
  """The step rule an `optimizer` argument names.

  None or "trust-region": `TrustRegion()`, scale-free (the default); "ascent":
  plain gradient ascent, the paper's update; a `TrustRegion` value as it is;
  anything else an optax optimizer (a name, a factory or a ready
  transformation), applied by `OptaxStep`.
  """
  if optimizer is None or (isinstance(optimizer, str) and optimizer == "trust-region"):
    return TrustRegion()
  if isinstance(optimizer, (TrustRegion, OptaxStep)):
    return optimizer
  if isinstance(optimizer, str) and optimizer == "ascent":
    return PLAIN_ASCENT
  return OptaxStep(_optimizer_factory(optimizer))


def make_config(objective: str, optimizer, step_size, precision) -> tuple[AttackConfig, float]:
  """Checks the static options; returns the config and the (traced) step size."""
  _checks.choice("objective", objective, OBJECTIVES)
  _array_checks.precision(precision, PRECISIONS)
  optimizer = step_rule(optimizer)
  if isinstance(optimizer, OptaxStep) and isinstance(optimizer.optimizer,
                                                     optax.GradientTransformation):
    if step_size is not None:
      raise ValueError(
          "step_size is the learning rate of plain ascent or of an optimizer given by name "
          "or factory (optimizer='adam', step_size=0.05); a ready optax transformation has "
          "its own learning rate compiled in (e.g. optax.adam(0.05))")
    step_size = 1.0  # unused by a ready transformation; any valid value
  config = AttackConfig(objective, optimizer, precision)
  return config, DEFAULT_STEP_SIZE if step_size is None else step_size


def _warn_about_constants(name: str, fn, example, precision: str) -> None:
  """Warns when a model's arrays are compiled-in constants that `precision` cannot cast."""
  if precision == "float32":
    return
  # The pytree callable is an argument, so its parameters are inputs, not constants.
  consts = jax.make_jaxpr(lambda fn, x: fn(x))(fn, example).consts
  # Wider constants promote the arithmetic back to their own dtype.
  bits = jnp.finfo(precision).bits
  wider = sum(int(np.size(c)) for c in consts
              if hasattr(c, "dtype") and jnp.issubdtype(c.dtype, jnp.floating)
              and jnp.finfo(c.dtype).bits > bits)
  if wider:
    warnings.warn(
        f"precision={precision!r} casts a model's parameters, but {name} closes over "
        f"{wider} floating-point values of a wider dtype as constants of the compiled "
        "program: no cast reaches them, and they promote the arithmetic back to their "
        "dtype. Pass them as arguments: an nnx.Module (or its bound method), or "
        "jax.tree_util.Partial(apply_fn, params).", stacklevel=3)


# `return_stats=True` adds the scheduling statistics to the result; the
# overloads tell type checkers which one a call returns.
@overload
def counterfactual_attack(decode: Callable, classify: Callable, z, target, *args: Any,
                          return_stats: Literal[False] = False,
                          **kwargs: Any) -> AttackResult: ...


@overload
def counterfactual_attack(decode: Callable, classify: Callable, z, target, *args: Any,
                          return_stats: Literal[True],
                          **kwargs: Any) -> tuple[AttackResult, dict[str, Any]]: ...


def counterfactual_attack(
    decode: Callable,
    classify: Callable,
    z,
    target,
    *,
    threshold: float = 0.5,
    step_size: float | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    objective: str = "logit",
    optimizer=None,
    grad_tol: float = 0.0,
    precision: str = "float32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    schedule: str = "continuous",
    mesh: jax.sharding.Mesh | None = None,
    progress=False,
    return_stats: bool = False,
) -> AttackResult | tuple[AttackResult, dict[str, Any]]:
  """Moves each latent until the classifier gives its target `threshold` probability.

  Each latent is attacked independently: its result does not depend on the
  batch size, the schedule or the other latents in its batch (up to the
  summation order inside batched matrix products; see the README's "What is
  guaranteed").

  Args:
    decode: maps latents (B, d) to images (B, H, W, C). An `nnx.Module`
      method (`vae.decode`), a `jax.tree_util.Partial(apply, params)` or any
      JAX function.
    classify: maps images (B, H, W, C) to logits (B, K). `K == 1` is a
      sigmoid binary classifier; `K >= 2` a softmax classifier.
    z: (n, d) floating starting latents, normally the encoder's means.
    target: () or (n,) target class: an index in [0, K) for `K >= 2`; for
      `K == 1`, 1 to reach `p >= threshold` and 0 to reach `p <= 1 - threshold`.
    threshold: target probability at which a latent stops.
    step_size: for the default trust region, its first radius in latent
      units (default 0.1), which then adapts; for plain ascent the learning
      rate `eta` of `z <- z + eta grad` (default 0.1); for an optimizer named
      by `optimizer`, its learning rate.
    max_steps: most updates per latent (at most 2**31 - 1).
    objective: what is ascended: `"logit"`, the target's log-odds
      `log q - log(1 - q)` (never saturates; default), `"prob"`, the
      probability `q` (as the paper writes it), or `"log_prob"`, `log q`.
    optimizer: the step rule. None (or `"trust-region"`): scale-free
      ascent along the gradient, each step the one that would reach a little
      past the threshold if the objective were linear, within a trust radius
      that adapts (`cfajax.TrustRegion`): step lengths are set in latent
      units, not by the gradient's size, so flat and sharp logits are
      handled alike. `"ascent"`: the paper's plain gradient
      ascent, whose steps scale with the gradient. An optax optimizer's name
      (`"adam"`) or factory (`optax.adam`), built with `step_size` as its
      learning rate; or a ready `optax.GradientTransformation`
      (`optax.adam(0.05)`, then without `step_size`). Threshold, step size,
      max steps and grad_tol are traced, so a sweep over them compiles once;
      a ready transformation's numbers are compiled in, so each new one
      compiles anew.
    grad_tol: a latent whose gradient norm is `<= grad_tol` stops with
      `Status.ZERO_GRADIENT`.
    precision: the dtype of the decoder's and classifier's arithmetic:
      `"float32"`; `"bfloat16"` (the models' floating-point parameters and
      inputs are cast; arrays a plain function closes over cannot be, and a
      warning says so); or `"float64"` (needs `jax_enable_x64`). Latents,
      gradients and updates stay in z's dtype.
    batch_size: latents on the device at once. With `schedule="static"`,
      chunks of this size (the last padded) share one compilation; with
      `"continuous"`, the pool size, split evenly over the mesh's devices
      (rounded down to a multiple of their number).
    schedule: `"continuous"` keeps a pool of `batch_size` latents busy,
      refilling a slot as soon as its latent stops; `"static"` runs
      fixed chunks in which every latent waits for the slowest.
    mesh: a one-axis mesh of local devices for the continuous schedule
      (default: all of this process's devices).
    progress: show a progress bar over latents; or an existing tqdm-like bar
      (anything with `update(count)`) to advance.
    return_stats: also return a dict of scheduling statistics (loop
      iterations, pool size, useful-step fraction).

  Returns:
    An `AttackResult` of length n (and the stats dict if `return_stats`).

  Raises:
    ValueError: on inputs of the wrong type, shape, dtype or range,
      non-finite latents, or models that do not fit the
      (B, d) -> (B, ...) -> (B, K) contract.

  Example:
    >>> result = counterfactual_attack(vae.decode, classifier, vae.encode(x), target=9)
    >>> counterfactuals = vae.decode(result.z[result.success])
  """
  config, step_size = make_config(objective, optimizer, step_size, precision)
  z = _array_checks.latents(z)
  batch_size, mesh = _driver.check_schedule(schedule, batch_size, mesh)
  decode, classify = as_pure_callable(decode), as_pure_callable(classify)
  signature = check_models(decode, classify, z.shape[1], z.dtype)
  target = check_targets(target, z.shape[0], signature.num_logits)
  hyper = make_hyper(threshold, step_size, max_steps, grad_tol, z.dtype)
  if precision != "float32":
    _warn_about_constants("decode", decode, jax.ShapeDtypeStruct((2, z.shape[1]), precision),
                          precision)
    _warn_about_constants("classify", classify,
                          jax.ShapeDtypeStruct((2, *signature.image_shape), precision), precision)
  result, stats = _driver.solve(config, (decode, classify), z, target, hyper, schedule=schedule,
                                batch_size=batch_size, mesh=mesh, progress=progress,
                                label=("counterfactual attack", "latent"))
  return (result, stats) if return_stats else result
