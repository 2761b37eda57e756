"""Why an example's search stopped: the codes every method shares, and the rule that sets them.

Inside compiled loops failures are codes, never exceptions: each example's
state carries an int32 `status`, RUNNING until a check stops it with a
`Status`. Every method (the attack, the inversion, the data-free attack)
decides with `next_status` and moves only its running examples with
`keep_where` (or `advance`), so a code means the same whichever method wrote it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import jax
import jax.numpy as jnp


class Status(enum.IntEnum):
  """Why a latent stopped. Stored as int32 in `AttackResult.status`."""

  REACHED = 0  # the target probability reached the threshold
  MAX_STEPS = 1  # `max_steps` updates were taken without reaching it
  ZERO_GRADIENT = 2  # the objective's gradient vanished (norm <= grad_tol)
  NON_FINITE = 3  # the probability or the gradient became NaN or infinite


RUNNING = -1  # internal: the latent has not stopped yet
EMPTY = -2  # internal: a scheduler slot that holds no latent


def next_status(status: jax.Array, reasons: Sequence[tuple[jax.Array, int]]) -> jax.Array:
  """One example's status after a check: the first reason that holds, if it was running.

  Args:
    status: () int32, the example's status before the check.
    reasons: (condition, code) pairs in priority order, e.g. `[(prob >=
      threshold, Status.REACHED), (~finite, Status.NON_FINITE), ...]`.

  Returns:
    () int32: `status` itself for an example that had stopped; otherwise the
    code of the first condition that holds, or RUNNING.
  """
  new = jnp.select([c for c, _ in reasons], [code for _, code in reasons],
                   RUNNING).astype(jnp.int32)
  return jnp.where(status == RUNNING, new, status)


def keep_where(move: jax.Array, new, old):
  """`new` where the example moves, `old` where it has stopped, leaf by leaf."""
  return jax.tree_util.tree_map(lambda n, o: jnp.where(move, n, o), new, old)


def advance(state, status: jax.Array, **moved):
  """One example's state (a NamedTuple with `steps` and `status`) after a check
  and a step: the fields in `moved` take their new values only if the example
  is still running, and `steps` counts the step it took."""
  move = status == RUNNING
  kept = {name: keep_where(move, new, getattr(state, name)) for name, new in moved.items()}
  return state._replace(steps=state.steps + move.astype(jnp.int32), status=status, **kept)
