"""The Counterfactual Attack: gradient ascent in a generator's latent space.

For one latent `z` and a target class `t`, repeat

    if q_t(G(z)) >= threshold: stop (reached)
    z <- z + step_size * grad_z objective(f(G(z)), t)

where `q_t` is the classifier's probability of the target. The per-latent
state machine (`init_state`, `attack_step`) is written for a single example;
`attack_latent` runs it to completion with `lax.while_loop`, and
`counterfactual_attack` vmaps that over a batch and jits it once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfajax._callables import as_pure_callable

OBJECTIVES = ("logit", "prob", "log_prob")
DEFAULT_STEP_SIZE = 0.1
DEFAULT_MAX_STEPS = 500
DEFAULT_BATCH_SIZE = 4096


class Status(enum.IntEnum):
  """Why a latent stopped. Stored as int32 in `AttackResult.status`."""

  REACHED = 0  # the target probability reached the threshold
  MAX_STEPS = 1  # `max_steps` updates were taken without reaching it
  ZERO_GRADIENT = 2  # the objective's gradient vanished (norm <= grad_tol)
  NON_FINITE = 3  # the probability or the gradient became NaN or infinite


RUNNING = -1  # internal: the latent has not stopped yet


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The options that change the compiled program (static and hashable)."""

  objective: str = "logit"
  optimizer: optax.GradientTransformation | None = None


class AttackHyper(NamedTuple):
  """The options that are traced: new values never trigger a recompile."""

  threshold: jax.Array  # () float32, in (0, 1)
  step_size: jax.Array  # () float, plain ascent only
  max_steps: jax.Array  # () int32
  grad_tol: jax.Array  # () float32


class LatentState(NamedTuple):
  """The carry of one latent's loop. Shapes are for one example."""

  z: jax.Array  # (d,)
  opt_state: Any  # the optimizer's state for z (an empty tuple for plain ascent)
  target: jax.Array  # () int32
  steps: jax.Array  # () int32, updates taken so far
  status: jax.Array  # () int32, RUNNING or a `Status`
  initial_prob: jax.Array  # () float32, target probability at the start
  final_prob: jax.Array  # () float32, target probability at the last check


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttackResult:
  """Counterfactual latents and why each stopped; a pytree of arrays.

  Attributes:
    z: (n, d) final latents; the counterfactuals are `decode(z)`.
    target: (n,) int32 target of each latent.
    steps: (n,) int32 number of updates taken (0 if the target held at once).
    status: (n,) int32 `Status` codes.
    initial_prob: (n,) float32 target probability of the starting latent.
    final_prob: (n,) float32 target probability of the final latent.
  """

  z: jax.Array
  target: jax.Array
  steps: jax.Array
  status: jax.Array
  initial_prob: jax.Array
  final_prob: jax.Array

  @property
  def success(self) -> jax.Array:
    """(n,) bool: whether each latent reached its target."""
    return self.status == Status.REACHED

  def __len__(self) -> int:
    return self.z.shape[0]


def target_scores(logits: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-odds and log-probability of the target for one example.

  Args:
    logits: (K,) logits. `K == 1` is a sigmoid binary classifier whose target
      1 means "p >= threshold" and 0 means "p <= 1 - threshold"; `K >= 2` is
      a softmax classifier.
    target: () integer class index.

  Returns:
    `(log_odds, log_prob)`, both scalars: `log q - log(1 - q)` and `log q`,
    where `q` is the target's probability. The log-odds never saturates.
  """
  if logits.shape[-1] == 1:
    margin = jnp.where(target == 1, logits[0], -logits[0])
    return margin, jax.nn.log_sigmoid(margin)
  log_p = jax.nn.log_softmax(logits)
  others = jnp.where(jnp.arange(logits.shape[-1]) == target, -jnp.inf, logits)
  return logits[target] - jax.nn.logsumexp(others), log_p[target]


def _objective_and_prob(decode, classify, objective, z, target):
  logits = classify(decode(z[None]))[0].astype(jnp.float32)
  log_odds, log_prob = target_scores(logits, target)
  value = {"logit": log_odds, "prob": jnp.exp(log_prob), "log_prob": log_prob}[objective]
  return value, jnp.exp(log_prob)


def init_state(config: AttackConfig, z: jax.Array, target: jax.Array) -> LatentState:
  """The loop state of one latent `z` (d,) before its first check."""
  opt_state = () if config.optimizer is None else config.optimizer.init(z)
  nan = jnp.array(jnp.nan, jnp.float32)
  return LatentState(
      z=z,
      opt_state=opt_state,
      target=jnp.asarray(target, jnp.int32),
      steps=jnp.array(0, jnp.int32),
      status=jnp.array(RUNNING, jnp.int32),
      initial_prob=nan,
      final_prob=nan,
  )


def attack_step(
    decode: Callable, classify: Callable, config: AttackConfig, hyper: AttackHyper,
    state: LatentState,
) -> LatentState:
  """Checks the target, then takes one ascent step if the latent may go on.

  A latent that has already stopped is returned unchanged, so the step can be
  applied to a pool in which some latents have finished.
  """
  grad_fn = jax.value_and_grad(_objective_and_prob, argnums=3, has_aux=True)
  (_, prob), grad = grad_fn(decode, classify, config.objective, state.z, state.target)
  running = state.status == RUNNING

  finite = jnp.isfinite(prob) & jnp.all(jnp.isfinite(grad))
  grad_norm = jnp.sqrt(jnp.sum(jnp.square(grad.astype(jnp.float32))))
  status = jnp.select(
      [prob >= hyper.threshold, ~finite, state.steps >= hyper.max_steps,
       grad_norm <= hyper.grad_tol],
      [Status.REACHED, Status.NON_FINITE, Status.MAX_STEPS, Status.ZERO_GRADIENT],
      RUNNING,
  ).astype(jnp.int32)
  status = jnp.where(running, status, state.status)
  move = status == RUNNING

  if config.optimizer is None:
    new_z = state.z + hyper.step_size.astype(state.z.dtype) * grad
    new_opt_state = state.opt_state
  else:
    # optax minimises; ascend by handing it the negated gradient.
    updates, new_opt_state = config.optimizer.update(-grad, state.opt_state, state.z)
    new_z = optax.apply_updates(state.z, updates)
  keep = lambda new, old: jnp.where(move, new, old)
  return LatentState(
      z=keep(new_z, state.z),
      opt_state=jax.tree_util.tree_map(keep, new_opt_state, state.opt_state),
      target=state.target,
      steps=state.steps + move.astype(jnp.int32),
      status=status,
      initial_prob=jnp.where(running & (state.steps == 0), prob, state.initial_prob),
      final_prob=jnp.where(running, prob, state.final_prob),
  )


def attack_latent(
    decode: Callable, classify: Callable, config: AttackConfig, hyper: AttackHyper,
    z: jax.Array, target: jax.Array,
) -> LatentState:
  """Runs the attack on one latent `z` (d,) until it stops. Not jitted."""
  step = lambda state: attack_step(decode, classify, config, hyper, state)
  return jax.lax.while_loop(
      lambda state: state.status == RUNNING, step, init_state(config, z, target))


def result_from_states(state: LatentState) -> AttackResult:
  """Drops the optimizer state from a batch of finished loop states."""
  return AttackResult(
      z=state.z, target=state.target, steps=state.steps, status=state.status,
      initial_prob=state.initial_prob, final_prob=state.final_prob)


@functools.partial(jax.jit, static_argnames="config")
def _attack_batch(decode, classify, z, target, hyper, *, config):
  attack = jax.vmap(attack_latent, in_axes=(None, None, None, None, 0, 0))
  return result_from_states(attack(decode, classify, config, hyper, z, target))


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


def check_latents(z) -> np.ndarray:
  """Returns `z` as a host array after checking it is a finite (n, d) float array."""
  if not hasattr(z, "shape"):
    z = np.asarray(z)
  if z.ndim != 2:
    raise ValueError(f"z must be latents of shape (n, d); got shape {tuple(z.shape)}")
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise ValueError(f"z must be a floating-point array; got dtype {z.dtype}")
  host = np.asarray(z)
  if not np.all(np.isfinite(host)):
    bad = np.flatnonzero(~np.all(np.isfinite(host), axis=1))
    raise ValueError(
        f"z must be finite; {bad.size} latent(s) hold NaN or inf, first at row {bad[0]}")
  return host


def check_targets(target, n: int, num_logits: int) -> np.ndarray:
  """Broadcasts `target` to (n,) int32 and checks it is a valid class."""
  target = np.asarray(target)
  if target.ndim > 1 or (target.ndim == 1 and target.shape[0] != n):
    raise ValueError(
        f"target must be a scalar or have shape ({n},) to match z; got shape {target.shape}")
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
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"threshold must be in (0, 1); got {threshold}")
  if not (math.isfinite(step_size) and step_size > 0):
    raise ValueError(f"step_size must be a positive number; got {step_size}")
  if int(max_steps) != max_steps or max_steps < 0:
    raise ValueError(f"max_steps must be a non-negative integer; got {max_steps}")
  if not grad_tol >= 0:
    raise ValueError(f"grad_tol must be >= 0; got {grad_tol}")
  return AttackHyper(
      threshold=jnp.asarray(threshold, jnp.float32),
      step_size=jnp.asarray(step_size, dtype),
      max_steps=jnp.asarray(max_steps, jnp.int32),
      grad_tol=jnp.asarray(grad_tol, jnp.float32),
  )


def make_config(objective: str, optimizer, step_size) -> tuple[AttackConfig, float]:
  """Checks the static options; returns the config and the plain step size."""
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
  if optimizer is not None:
    if step_size is not None:
      raise ValueError(
          "step_size applies to plain gradient ascent only; with an optax optimizer "
          "set the learning rate in the optimizer (e.g. optax.adam(0.05))")
    if not isinstance(optimizer, optax.GradientTransformation):
      raise ValueError(
          f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}")
    step_size = 1.0  # unused by the optax branch; any valid value
  return AttackConfig(objective, optimizer), DEFAULT_STEP_SIZE if step_size is None else step_size


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 to `size` by repeating the last row (a real, finite input)."""
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)])


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
    optimizer: optax.GradientTransformation | None = None,
    grad_tol: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> AttackResult:
  """Moves each latent until the classifier gives its target `threshold` probability.

  Each latent is attacked independently: its result does not depend on the
  batch size or on the other latents in its batch.

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
    step_size: the ascent rate `eta` of plain gradient ascent
      (default 0.1). Not allowed together with `optimizer`.
    max_steps: most updates per latent.
    objective: what is ascended: `"logit"`, the target's log-odds
      `log q - log(1 - q)` (never saturates; default), `"prob"`, the
      probability `q` (as the paper writes it), or `"log_prob"`, `log q`.
    optimizer: an optax transformation (e.g. `optax.adam(0.05)`) to use
      instead of plain ascent.
    grad_tol: a latent whose gradient norm is `<= grad_tol` stops with
      `Status.ZERO_GRADIENT`.
    batch_size: latents per compiled call. Larger `n` is split into chunks of
      this size (the last padded) so that one compilation serves them all.
    progress: show a progress bar over chunks.

  Returns:
    An `AttackResult` of length n.

  Raises:
    ValueError: on inputs of the wrong shape, dtype or range, non-finite
      latents, or models that do not fit the (B, d) -> (B, ...) -> (B, K)
      contract.

  Example:
    >>> result = counterfactual_attack(vae.decode, classifier, vae.encode(x), target=9)
    >>> counterfactuals = vae.decode(result.z[result.success])
  """
  config, step_size = make_config(objective, optimizer, step_size)
  z = check_latents(z)
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
  decode, classify = as_pure_callable(decode), as_pure_callable(classify)
  signature = check_models(decode, classify, z.shape[1], z.dtype)
  target = check_targets(target, z.shape[0], signature.num_logits)
  hyper = make_hyper(threshold, step_size, max_steps, grad_tol, z.dtype)

  n = z.shape[0]
  if n == 0:
    raise ValueError("z holds no latents; expected shape (n, d) with n >= 1")
  chunk = min(int(batch_size), n)
  starts = range(0, n, chunk)
  if progress:
    from tqdm.auto import tqdm
    starts = tqdm(starts, desc="counterfactual attack", unit="chunk")
  parts = []
  for start in starts:
    zc, tc = z[start:start + chunk], target[start:start + chunk]
    out = _attack_batch(decode, classify, _pad_rows(zc, chunk), _pad_rows(tc, chunk),
                        hyper, config=config)
    parts.append(jax.tree_util.tree_map(lambda a, m=len(zc): a[:m], out))
  if len(parts) == 1:
    return parts[0]
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)
