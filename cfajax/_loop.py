"""The Counterfactual Attack as a pure state machine over a batch of latents.

For each latent `z` and target class `t`, repeat

    if q_t(G(z)) >= threshold: stop (reached)
    z <- a step along grad_z objective(f(G(z)), t)

where `q_t` is the classifier's probability of the target, and the step's
length is set by a step rule (`_steps.py`): by default a scale-free trust
region; `z + step_size * grad`, the paper's plain ascent, by name. The state of one
latent (`LatentState`) and its update (`update_latent`) are written for a
single example and vmapped. The gradient is taken of the batch's summed
objective, in which `jax.vmap` makes each row depend on its own latent alone,
so each row's gradient is exactly its own latent's gradient. (Taking the
gradient outside the vmap, rather than vmapping a per-example gradient, also
keeps the transposed convolutions out of vmap's batching rules, which
jax 0.7 cannot apply inside `shard_map`.) `attack_step` advances a batch by
one check-and-update; the schedulers in `_scheduler.py` run it through
`AttackConfig`'s problem methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cfajax._choices import OBJECTIVES  # noqa: F401  (re-exported)
from cfajax._status import EMPTY  # noqa: F401  (re-exported)
from cfajax._status import RUNNING
from cfajax._status import Status
from cfajax._status import advance
from cfajax._status import next_status
from cfajax._steps import OptaxStep
from cfajax._steps import TrustRegion
from cfajax._steps import make_transformation  # noqa: F401  (the inversion's and DISC's)

PRECISIONS = ("float32", "bfloat16", "float64")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The options that change the compiled program (static and hashable).

  Attributes:
    objective: what is ascended (`OBJECTIVES`).
    optimizer: the step rule, how a latent moves along its gradient
      (`_steps.TrustRegion`, or `_steps.OptaxStep` for plain ascent and optax
      optimizers), with `AttackHyper.step_size` traced.
    precision: dtype of the decoder's and classifier's arithmetic.
  """

  objective: str = "logit"
  optimizer: TrustRegion | OptaxStep = TrustRegion()
  precision: str = "float32"

  def aim(self, threshold: jax.Array) -> jax.Array:
    """The objective's value at the target probability the step rule aims for."""
    q = self.optimizer.aim_probability(threshold)
    return {"logit": jnp.log(q) - jnp.log1p(-q), "prob": q, "log_prob": jnp.log(q)}[self.objective]

  # The scheduler's problem protocol (`_scheduler.py`); models = (decode, classify).

  def cast(self, models):
    return tuple(cast_model(m, self.precision) for m in models)

  def init(self, hyper: AttackHyper, z: jax.Array, target: jax.Array) -> LatentState:
    return init_state(self, hyper, z, target)

  def step(self, models, hyper: AttackHyper, states: LatentState) -> LatentState:
    decode, classify = models
    return attack_step(decode, classify, self, hyper, states)

  def result(self, states: LatentState) -> AttackResult:
    return result_from_states(states)


class AttackHyper(NamedTuple):
  """The options that are traced: new values never trigger a recompile."""

  threshold: jax.Array  # () float32, in (0, 1)
  step_size: jax.Array  # () latent dtype: the trust region's first radius, or a learning rate
  max_steps: jax.Array  # () int32
  grad_tol: jax.Array  # () float32


class LatentState(NamedTuple):
  """The carry of one latent's loop. Shapes are for one example."""

  z: jax.Array  # (d,)
  opt_state: Any  # the step rule's state for z
  target: jax.Array  # () int32
  steps: jax.Array  # () int32, updates taken so far
  status: jax.Array  # () int32, RUNNING or a `Status`
  initial_prob: jax.Array  # () float32, target probability at the start
  final_prob: jax.Array  # () float32, target probability at the last check


class Outcome:
  """What every attack's result says of its (n,) `status`: which reached the target."""

  status: jax.Array

  @property
  def success(self) -> jax.Array:
    """(n,) bool: whether each example reached its target."""
    return self.status == Status.REACHED

  def __len__(self) -> int:
    return self.status.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttackResult(Outcome):
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
  """Casts a pytree callable's floating-point parameters to `precision`.

  float32 leaves the model as it is (models are float32 unless their author
  chose otherwise); bfloat16 and float64 cast every floating leaf.
  """
  if precision == "float32":
    return model
  dtype = jnp.dtype(precision)
  cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
  return jax.tree_util.tree_map(cast, model)


def _objective_and_prob(decode, classify, config, z, target):
  """One latent's objective and target probability, from its own z (d,) alone."""
  # Latents and gradients stay in z's dtype; only the models' arithmetic is cast.
  x = decode(z[None].astype(config.precision))
  logits = classify(x)[0]
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  log_odds, log_prob = target_scores(logits, target)
  value = {"logit": log_odds, "prob": jnp.exp(log_prob), "log_prob": log_prob}[config.objective]
  return value, jnp.exp(log_prob)


def probabilities_and_gradients(decode, classify, config, z, target):
  """Each latent's target probability, objective and objective gradient, for a batch.

  Args:
    z: (B, d) latents; target: (B,) int32.

  Returns:
    `(prob, value, grad)`: (B,) target probabilities (float32, or float64 for
    float64 models), (B,) objectives and (B, d) gradients of each latent's
    own objective.
  """
  per_example = jax.vmap(_objective_and_prob, in_axes=(None, None, None, 0, 0))

  def total(z):
    values, prob = per_example(decode, classify, config, z, target)
    return jnp.sum(values), (values, prob)

  grad, (value, prob) = jax.grad(total, has_aux=True)(z)
  return prob, value, grad


def init_state(config: AttackConfig, hyper: AttackHyper, z: jax.Array,
               target: jax.Array) -> LatentState:
  """The loop state of one latent `z` (d,) before its first check."""
  nan = jnp.array(jnp.nan, jnp.float32)
  return LatentState(
      z=z,
      opt_state=config.optimizer.init(z, hyper.step_size),
      target=jnp.asarray(target, jnp.int32),
      steps=jnp.array(0, jnp.int32),
      status=jnp.array(RUNNING, jnp.int32),
      initial_prob=nan,
      final_prob=nan,
  )


def update_latent(config: AttackConfig, hyper: AttackHyper, state: LatentState,
                  prob: jax.Array, value: jax.Array, grad: jax.Array) -> LatentState:
  """Checks one latent's target, then moves it one step if it may go on.

  A latent that has already stopped (or an empty slot) is returned unchanged,
  so the update can be applied to a pool in which some latents have finished.

  Args:
    state: the latent's state; prob: () its target probability now; value:
      () its objective; grad: (d,) the objective's gradient.
  """
  running = state.status == RUNNING
  finite = jnp.isfinite(prob) & jnp.all(jnp.isfinite(grad))
  grad_norm = jnp.sqrt(jnp.sum(jnp.square(grad)))
  status = next_status(state.status, [
      (prob >= hyper.threshold, Status.REACHED), (~finite, Status.NON_FINITE),
      (state.steps >= hyper.max_steps, Status.MAX_STEPS),
      (grad_norm <= hyper.grad_tol, Status.ZERO_GRADIENT)])
  new_z, new_opt_state = config.optimizer.update(
      state.opt_state, state.z, value, grad, config.aim(hyper.threshold), hyper.step_size)
  prob = prob.astype(jnp.float32)
  return advance(state, status, z=new_z, opt_state=new_opt_state)._replace(
      initial_prob=jnp.where(running & (state.steps == 0), prob, state.initial_prob),
      final_prob=jnp.where(running, prob, state.final_prob))


def attack_step(
    decode: Callable, classify: Callable, config: AttackConfig, hyper: AttackHyper,
    states: LatentState,
) -> LatentState:
  """One check-and-update of a batch of latent states (leaves lead with B).

  `decode` and `classify` must already be cast to `config.precision`.
  """
  prob, value, grad = probabilities_and_gradients(decode, classify, config, states.z,
                                                  states.target)
  return jax.vmap(update_latent, in_axes=(None, None, 0, 0, 0, 0))(config, hyper, states, prob,
                                                                   value, grad)


def result_from_states(state: LatentState) -> AttackResult:
  """Drops the optimizer state from a batch of finished loop states."""
  return AttackResult(
      z=state.z, target=state.target, steps=state.steps, status=state.status,
      initial_prob=state.initial_prob, final_prob=state.final_prob)
