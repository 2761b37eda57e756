"""How a latent moves along its objective's gradient: step rules, as values.

A step rule is a frozen, hashable value with two pure functions for one
latent, vmapped by the attack:

    init(z, step_size) -> state
    update(state, z, value, grad, aim, step_size) -> (new_z, state)
    aim_probability(threshold) -> the target probability a step aims for

`value` and `grad` are the objective and its gradient at `z`, `aim` the
objective's value at `aim_probability(threshold)`, `step_size` the traced
scalar the caller passed. Two rules:

* `TrustRegion` (the default): scale-free ascent. Each step goes along the
  gradient, as plain ascent does, but its length is set in the latent space,
  not by the gradient's size: the step that would reach `aim` if the
  objective were linear (a Polyak step), capped by a trust radius that
  doubles after steps the linear model predicted well and shrinks after poor
  ones; a step that lowered the objective is taken back. A classifier whose
  logits are multiplied by any constant makes the same steps, up to the
  radius' adaptation, where plain ascent's steps scale with the constant.
* `OptaxStep`: an optax transformation applied to the negated gradient:
  plain ascent (`optax.sgd`, the paper's update, `z <- z + eta grad`), Adam or
  any other; the learning rate is the traced `step_size`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrustState(NamedTuple):
  """A latent's trust-region state. Shapes are for one example."""

  radius: jax.Array  # () longest step allowed now, in latent units
  base: jax.Array  # (d,) the last accepted latent, from which the last step was taken
  base_value: jax.Array  # () the objective there
  base_grad: jax.Array  # (d,) its gradient there
  predicted: jax.Array  # () the gain the last step's linear model predicted; 0 before any
  capped: jax.Array  # () bool, whether the last step was as long as the radius allowed


@dataclasses.dataclass(frozen=True)
class TrustRegion:
  """Scale-free ascent along the gradient: Polyak steps inside an adaptive trust region.

  From the last accepted latent `z_b` with objective `v_b` and gradient `g`,
  the next latent is

      z = z_b + min(r, (aim - v_b) / |g|) * g / |g|,

  the step that reaches `aim` under the objective's linearisation, at most
  the radius `r` long (`r` starts at the attack's `step_size`). At the new
  latent the gain is compared with the prediction, `rho = (v - v_b) /
  predicted`: `rho <= 0` takes the step back and multiplies `r` by `shrink`;
  `rho < poor` keeps the step and multiplies `r` by `shrink`; `rho > good`
  after a step that the radius cut short multiplies `r` by `grow`.

  `aim` is the objective's value at target probability `threshold +
  overshoot * (1 - threshold)`: past the threshold, so that a step the
  linearisation predicts well crosses it, and far enough past it that the
  counterfactual is a confident one, not one that sits on the threshold.

  Attributes:
    overshoot: how far past the threshold a step aims, as a share of the way
      from the threshold to probability 1 (0.9 at threshold 0.9: p = 0.99).
    grow: radius factor after a well-predicted step that the radius limited.
    shrink: radius factor after a poorly predicted or rejected step.
    good, poor: thresholds on the ratio of actual to predicted gain.
  """

  grow: float = 2.0
  shrink: float = 0.25
  good: float = 0.75
  poor: float = 0.25
  overshoot: float = 0.9

  def __post_init__(self):
    if not (self.grow >= 1 and 0 < self.shrink < 1 and 0 <= self.poor <= self.good
            and 0 < self.overshoot < 1):
      raise ValueError(f"TrustRegion needs grow >= 1, 0 < shrink < 1, 0 <= poor <= good and "
                       f"0 < overshoot < 1; got {self}")

  def aim_probability(self, threshold: jax.Array) -> jax.Array:
    return threshold + self.overshoot * (1 - threshold)

  def init(self, z: jax.Array, step_size: jax.Array) -> TrustState:
    zero = jnp.zeros((), z.dtype)
    return TrustState(radius=jnp.asarray(step_size, z.dtype), base=z, base_value=zero,
                      base_grad=jnp.zeros_like(z), predicted=zero,
                      capped=jnp.array(False))

  def update(self, state: TrustState, z, value, grad, aim, step_size):
    del step_size  # the radius carries it
    value = value.astype(z.dtype)
    first = state.predicted <= 0
    ratio = (value - state.base_value) / jnp.where(first, 1, state.predicted)
    rejected = ~first & ~(ratio > 0)
    radius = jnp.where(
        first, state.radius,
        jnp.where(rejected | (ratio < self.poor), state.radius * self.shrink,
                  jnp.where((ratio > self.good) & state.capped, state.radius * self.grow,
                            state.radius)))
    keep = lambda old, new: jnp.where(rejected, old, new)
    base, base_value, base_grad = (keep(state.base, z), keep(state.base_value, value),
                                   keep(state.base_grad, grad.astype(z.dtype)))
    norm = jnp.sqrt(jnp.sum(jnp.square(base_grad)))
    safe_norm = jnp.where(norm > 0, norm, 1)
    polyak = jnp.maximum(aim - base_value, 0) / safe_norm
    length = jnp.where(norm > 0, jnp.minimum(radius, polyak), 0)
    new_z = base + length * base_grad / safe_norm
    return new_z, TrustState(radius=radius, base=base, base_value=base_value,
                             base_grad=base_grad, predicted=length * norm,
                             capped=radius <= polyak)


# What an optax step takes: None for plain ascent, a factory of a learning rate
# (`optax.adam`), or a ready transformation.
OptimizerSpec = Callable[..., optax.GradientTransformation] | optax.GradientTransformation | None


@dataclasses.dataclass(frozen=True)
class OptaxStep:
  """An optax transformation of the negated gradient (optax minimises).

  Attributes:
    optimizer: None for plain ascent (`optax.sgd`); a factory of a learning
      rate (`optax.adam`), called inside the trace with the traced
      `step_size`, so a new learning rate reuses the compiled program; or a
      ready `optax.GradientTransformation`, its numbers compiled in.
  """

  optimizer: OptimizerSpec = None

  def transformation(self, learning_rate) -> optax.GradientTransformation:
    return make_transformation(self.optimizer, learning_rate)

  def init(self, z: jax.Array, step_size: jax.Array) -> Any:
    return self.transformation(step_size).init(z)

  def aim_probability(self, threshold: jax.Array) -> jax.Array:
    return threshold  # unused: an optax step does not aim

  def update(self, state, z, value, grad, aim, step_size):
    del value, aim
    updates, state = self.transformation(step_size).update(-grad, state, z)
    return optax.apply_updates(z, updates), state


PLAIN_ASCENT = OptaxStep(None)


def make_transformation(optimizer, learning_rate) -> optax.GradientTransformation:
  """None (plain ascent: `optax.sgd`), a ready transformation, or a factory of a learning rate."""
  if optimizer is None:
    return optax.sgd(learning_rate)
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  return optimizer(learning_rate)
