"""One driver for every batched per-example method, and the protocol they implement.

The counterfactual attack (`_loop.AttackConfig`), the inversion
(`_inversion.InversionProblem`) and the data-free attack
(`_data_free.DataFreeProblem`) are *methods*: static, hashable values that
say how one example's search starts, moves and stops. `solve` owns what they
share: the choice of schedule, the pool's fit on the mesh, empty input, the
progress bar, dispatch to `_scheduler.run_static` or `run_continuous`, and
the statistics of the run; it returns a `Solution` whatever the method.

The protocol, for per-example states whose leaves lead with the batch axis:

    cast(models) -> models            the models at the method's precision
    init(hyper, z, target) -> state   one example's state: `status` RUNNING,
                                      `steps` 0
    step(models, hyper, states)       one check-and-update of a batch; a
                                      stopped state is returned unchanged
    result(states) -> result          the outputs (a pytree with `.steps`
                                      and `.status`)

`models` is a tuple of pytree callables, `hyper` a pytree of traced scalars,
`z` (n, d) and `target` a pytree of (n, ...) arrays. Inside `step`, a method
decides why an example stops with `_status.next_status` and moves only the
running ones with `_status.keep_where`, so every method's codes mean the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import NamedTuple
from typing import Protocol

import jax
import jax.numpy as jnp

from cfajax import _checks
from cfajax import _scheduler
from cfajax._progress import progress_bar

SCHEDULES = ("continuous", "static")


class Method(Protocol):
  """A batched per-example search (see the module docstring)."""

  def cast(self, models: tuple) -> tuple: ...

  def init(self, hyper: Any, z: jax.Array, target: Any) -> Any: ...

  def step(self, models: tuple, hyper: Any, states: Any) -> Any: ...

  def result(self, states: Any) -> Any: ...


class Solution(NamedTuple):
  """What `solve` returns: the method's result in input order, and the run's statistics.

  `stats` holds `loop_iterations` (per device; None for static chunks, which
  count none), and for the continuous schedule `pool_size`,
  `final_pool_size` and `useful_step_fraction`.
  """

  result: Any
  stats: dict


EMPTY_STATS = {"loop_iterations": [], "pool_size": 0, "final_pool_size": 0,
               "useful_step_fraction": None}


def check_schedule(schedule: str, batch_size, mesh=None):
  """Checks the schedule's options before work; returns `(batch_size, mesh)`.

  The continuous schedule splits its pool of `batch_size` slots over the
  mesh's devices (default: all local ones), so it needs at least one slot per
  device; `mesh` stays None for the static schedule.
  """
  _checks.choice("schedule", schedule, SCHEDULES)
  batch_size = _checks.integer("batch_size", batch_size, low=1)
  if schedule != "continuous":
    return batch_size, None
  mesh = _scheduler.local_mesh() if mesh is None else mesh
  if batch_size < mesh.devices.size:
    raise ValueError(
        f"batch_size ({batch_size}) is smaller than the {mesh.devices.size} devices the "
        f"continuous schedule splits its pool over; pass batch_size >= "
        f"{mesh.devices.size}, or a smaller mesh (cfajax.local_mesh(devices))")
  return batch_size, mesh


def empty_result(method: Method, hyper, z, target):
  """The method's result for no examples: its `init` and `result` on zero rows."""
  states = jax.vmap(method.init, in_axes=(None, 0, 0))(hyper, jnp.asarray(z), target)
  return method.result(states)


def solve(method: Method, models: Sequence, z, target, hyper, *, schedule: str,
          batch_size: int, mesh=None, progress=False,
          label: tuple[str, str] = ("examples", "example")) -> Solution:
  """Runs `method` on every row of `z` (n, d) with its `target` rows.

  Args:
    method, models, z, target, hyper: as in the module docstring.
    schedule, batch_size, mesh: checked by `check_schedule` (call it first,
      before work, to refuse bad options early; it is idempotent).
    progress: False, True (a bar of its own, `label` = (description, unit)),
      or a bar to advance by one per row.

  Returns:
    A `Solution`.
  """
  batch_size, mesh = check_schedule(schedule, batch_size, mesh)
  models = tuple(models)
  if z.shape[0] == 0:
    return Solution(empty_result(method, hyper, z, target), dict(EMPTY_STATS))
  desc, unit = label
  with progress_bar(progress, total=z.shape[0], desc=desc, unit=unit) as bar:
    if schedule == "static":
      result, stats = _scheduler.run_static(method, models, z, target, hyper,
                                            batch_size=batch_size, progress=bar)
    else:
      result, stats = _scheduler.run_continuous(
          method, models, z, target, hyper, batch_size=batch_size, mesh=mesh, progress=bar,
          segment_seconds=_scheduler.SEGMENT_SECONDS)
  return Solution(result, stats)

