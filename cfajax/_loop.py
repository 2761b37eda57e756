"""One latent's Counterfactual Attack, as a pure state machine.

For one latent `z` and a target class `t`, repeat

    if q_t(G(z)) >= threshold: stop (reached)
    z <- z + step_size * grad_z objective(f(G(z)), t)

where `q_t` is the classifier's probability of the target. `init_state` and
`attack_step` are written for a single example; `attack_latent` runs them to
completion with `lax.while_loop`. The schedulers in `_scheduler.py` batch them.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

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
EMPTY = -2  # internal: a scheduler slot that holds no latent
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The options that change the compiled program (static and hashable)."""

  objective: str = "logit"
  optimizer: optax.GradientTransformation | None = None
  precision: str = "float32"  # dtype of the decoder's and classifier's arithmetic


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


def cast_model(model, precision: str):
  """Casts a pytree callable's floating-point parameters to `precision`."""
  if precision == "float32":
    return model
  dtype = jnp.dtype(precision)
  cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
  return jax.tree_util.tree_map(cast, model)


def _objective_and_prob(decode, classify, config, z, target):
  # Latents and gradients stay in z's dtype; only the models' arithmetic is cast.
  x = decode(z[None].astype(config.precision))
  logits = classify(x)[0].astype(jnp.float32)
  log_odds, log_prob = target_scores(logits, target)
  value = {"logit": log_odds, "prob": jnp.exp(log_prob), "log_prob": log_prob}[config.objective]
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

  A latent that has already stopped (or an empty slot) is returned unchanged,
  so the step can be applied to a pool in which some latents have finished.
  `decode` and `classify` must already be cast to `config.precision`.
  """
  grad_fn = jax.value_and_grad(_objective_and_prob, argnums=3, has_aux=True)
  (_, prob), grad = grad_fn(decode, classify, config, state.z, state.target)
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


