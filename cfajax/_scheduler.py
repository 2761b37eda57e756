"""Batch schedulers: how many latents' loops share the device, and when.

Two schedulers run a per-latent state machine, a *problem*: the attack of
`_loop.py` or the inversion of `_inversion.py`. A problem is a static,
hashable object with

    cast(models) -> models            the models at the problem's precision
    init(hyper, z, target) -> state   one latent's state (`state.status`
                                      RUNNING, `state.steps` 0)
    step(models, hyper, states)       one check-and-update of a batch
    result(states) -> result          the batch's outputs (a pytree with
                                      `.steps` and `.status`)

`models` is a tuple of pytree callables, `hyper` a pytree of traced scalars
and `target` a pytree of per-latent arrays. The two schedulers:

* `run_static`: each chunk of `batch_size` latents is one `while_loop`;
  every latent of the chunk waits for the slowest one.
* `run_continuous`: a fixed pool of slots stays on the device; a latent that
  stops is written out and its slot is refilled from the queue inside the
  compiled loop, so the pool stays busy when step counts vary widely. The pool
  and the queue are sharded over a mesh of local devices (`shard_map`); each
  device runs its own loop over its share, with no communication.

Both give each latent the same arithmetic, so a latent's result does not depend
on the scheduler, the batch size or its neighbours, up to the summation order
that a batch's shape can change inside matrix products (README, "What is
guaranteed").
"""

from __future__ import annotations

import functools
import time
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cfajax._batching import pad_rows
from cfajax._status import EMPTY
from cfajax._status import RUNNING

DATA_AXIS = "data"
# How often, in wall time, the continuous loop returns to the host: progress
# bars move and Ctrl-C is acted on at least this often (plus one iteration).
SEGMENT_SECONDS = 1.0


def _take_rows(tree, count: int):
  return jax.tree_util.tree_map(lambda a: a[:count], tree)


def _concat(parts):
  if len(parts) == 1:
    return parts[0]
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)


# -- static batches ------------------------------------------------------------


def _init_batch(problem, hyper, z, target):
  return jax.vmap(problem.init, in_axes=(None, 0, 0))(hyper, z, target)


@functools.partial(jax.jit, static_argnames="problem")
def _run_batch(models, z, target, hyper, *, problem):
  models = problem.cast(models)
  states = _init_batch(problem, hyper, z, target)
  step = lambda states: problem.step(models, hyper, states)
  states = jax.lax.while_loop(lambda states: jnp.any(states.status == RUNNING), step, states)
  return problem.result(states)


def _pad_tree(tree, size: int):
  return jax.tree_util.tree_map(lambda a: pad_rows(np.asarray(a), size), tree)


def run_static(problem, models, z, target, hyper, *, batch_size, progress=None):
  """Runs (n, d) latents in chunks of `batch_size` (the last padded), each one loop."""
  n = z.shape[0]
  chunk = min(batch_size, n)
  parts = []
  for start in range(0, n, chunk):
    zc = z[start:start + chunk]
    rows = slice(start, start + chunk)
    tc = jax.tree_util.tree_map(lambda a, rows=rows: a[rows], target)
    out = _run_batch(models, pad_rows(zc, chunk), _pad_tree(tc, chunk), hyper, problem=problem)
    parts.append(_take_rows(out, len(zc)))
    if progress is not None:
      progress.update(len(zc))
  return _concat(parts), {"loop_iterations": None}


# -- continuous batching -------------------------------------------------------


class Pool(NamedTuple):
  """The carry of the continuous scheduler on one device. P slots, Q queued."""

  slots: Any  # the problem's states, with (P, ...) leaves
  slot_index: jax.Array  # (P,) int32 queue position held by each slot; -1 if empty
  next_index: jax.Array  # (1,) int32 next queue position to load
  iterations: jax.Array  # (1,) int32 loop iterations run so far
  outputs: Any  # the problem's (Q, ...) results, written as latents stop


def _where_rows(mask, new, old):
  """Per-row select between two pytrees whose leaves lead with mask's axis."""
  def pick(a, b):
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
  return jax.tree_util.tree_map(pick, new, old)


def _rows(tree, index):
  return jax.tree_util.tree_map(lambda a: a[index], tree)


def _load(problem, hyper, z_queue, target_queue, n_valid, positions):
  """Fresh loop states for queue `positions` (P,); past `n_valid` they are empty."""
  valid = positions < n_valid
  safe = jnp.where(valid, positions, 0)
  states = _init_batch(problem, hyper, z_queue[safe], _rows(target_queue, safe))
  states = states._replace(status=jnp.where(valid, states.status, EMPTY))
  return states, jnp.where(valid, positions, -1)


def _pool_start(problem, hyper, z_queue, target_queue, n_valid, pool_size):
  slots, slot_index = _load(problem, hyper, z_queue, target_queue, n_valid,
                            jnp.arange(pool_size, dtype=jnp.int32))
  # Every queue position's initial state, marked empty until its latent stops.
  initial = _init_batch(problem, hyper, z_queue, target_queue)
  outputs = problem.result(initial._replace(status=jnp.full_like(initial.status, EMPTY)))
  return Pool(slots, slot_index, jnp.array([pool_size], jnp.int32), jnp.zeros((1,), jnp.int32),
              outputs)


def _pool_advance(problem, models, hyper, z_queue, target_queue, n_valid, pool, stop_at,
                  shrink_at):
  """Runs the pool's loop until it drains or `stop_at` iterations have run.

  It also stops once the queue is exhausted and at most `shrink_at` slots are
  still busy, so that the host can move them to a narrower pool (0: never).
  """
  queue = z_queue.shape[0]

  def body(pool: Pool) -> Pool:
    slots = problem.step(models, hyper, pool.slots)
    done = (slots.status != RUNNING) & (pool.slot_index >= 0)
    write_at = jnp.where(done, pool.slot_index, queue)  # out of range: dropped
    outputs = jax.tree_util.tree_map(
        lambda buffer, value: buffer.at[write_at].set(value, mode="drop"),
        pool.outputs, problem.result(slots))
    positions = pool.next_index[0] + jnp.cumsum(done, dtype=jnp.int32) - 1
    fresh, fresh_index = _load(problem, hyper, z_queue, target_queue, n_valid, positions)
    return Pool(
        slots=_where_rows(done, fresh, slots),
        slot_index=jnp.where(done, fresh_index, pool.slot_index),
        next_index=pool.next_index + jnp.sum(done, dtype=jnp.int32),
        iterations=pool.iterations + 1,
        outputs=outputs,
    )

  def cond(pool: Pool):
    busy = jnp.sum(pool.slot_index >= 0)
    narrow = (pool.next_index[0] >= n_valid) & (busy <= shrink_at)
    return (busy > 0) & (pool.iterations[0] < stop_at) & ~narrow

  return jax.lax.while_loop(cond, body, pool)


def local_mesh(devices=None) -> Mesh:
  """A one-axis mesh ("data") over this process's devices (or those given)."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (DATA_AXIS,))


@functools.partial(jax.jit, static_argnames=("problem", "pool_size", "mesh"))
def _start_sharded(hyper, z_queue, target_queue, n_valid, *, problem, pool_size, mesh):
  start = lambda hyper, z, t, n: _pool_start(problem, hyper, z, t, n[0], pool_size)
  return jax.shard_map(start, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
                       out_specs=_pool_specs(), check_vma=False)(hyper, z_queue, target_queue,
                                                                 n_valid)


@functools.partial(jax.jit, static_argnames=("problem", "mesh"), donate_argnames="pool")
def _advance_sharded(models, hyper, z_queue, target_queue, n_valid, pool, stop_at, shrink_at, *,
                     problem, mesh):
  models = problem.cast(models)

  def advance(models, hyper, z, t, n, pool, stop_at, shrink_at):
    return _pool_advance(problem, models, hyper, z, t, n[0], pool, stop_at, shrink_at)

  return jax.shard_map(
      advance, mesh=mesh,
      in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS), _pool_specs(), P(), P()),
      out_specs=_pool_specs(), check_vma=False,
  )(models, hyper, z_queue, target_queue, n_valid, pool, stop_at, shrink_at)


# A drained pool moves its busy slots to one a quarter as wide while the
# narrower pool keeps at least this many slots per device: each width
# compiles once, and on hardware whose step time scales with the width (a
# CPU) the last stragglers no longer pay for the whole pool.
SHRINK_FACTOR = 4
MIN_SHRUNK_POOL = 64


def _narrower(pool: Pool, devices: int, width: int, new_width: int, sharded) -> Pool:
  """The pool's busy slots, device by device, moved into `new_width` slots per device."""
  slot_index = np.asarray(pool.slot_index).reshape(devices, width)
  # Busy slots first, in slot order; the rest of the narrow pool is empty.
  keep = np.argsort(slot_index < 0, axis=1, kind="stable")[:, :new_width]

  def narrow(a):
    a = np.asarray(a)
    rows = a.reshape(devices, width, *a.shape[1:])
    picked = np.take_along_axis(rows, keep.reshape(devices, new_width, *[1] * (a.ndim - 1)),
                                axis=1)
    return jax.device_put(picked.reshape(devices * new_width, *a.shape[1:]), sharded)

  return pool._replace(slots=jax.tree_util.tree_map(narrow, pool.slots),
                       slot_index=narrow(slot_index.reshape(-1)))


def _pool_specs():
  # Every leaf of the pool is split over devices along its first axis; the
  # per-device counters (next_index, iterations) are (1,) blocks of a
  # (num_devices,) array.
  return Pool._make([P(DATA_AXIS)] * len(Pool._fields))


def remaining_seconds(queued: int, busy_steps, mean_steps: float, width: int,
                      seconds_per_iteration: float) -> float:
  """Seconds until the loop has run `queued` more latents and those in the pool.

  Latents stop in bursts (a whole pool that started together stops together),
  so a rate of latents finished per second swings from zero to bursts; the
  loop's iterations, though, advance steadily. Each latent is taken to need
  `mean_steps` steps (the mean of those that stopped so far), a busy one
  `mean_steps` less what it took already but at least one more: the pool does
  `width` latents' steps an iteration, and the slowest latent still to run,
  the loop's tail, needs its own steps however wide the pool is.

  Args:
    queued: latents not yet in the pool.
    busy_steps: (b,) steps taken so far by the latents in the pool.
    mean_steps: steps a latent takes, on average.
    width: the pool's slots (over all devices).
    seconds_per_iteration: the loop's recent time per iteration.

  Returns:
    The estimate in seconds: iterations left times `seconds_per_iteration`.
  """
  busy_left = np.maximum(mean_steps - np.asarray(busy_steps, np.float64), 1.0)
  work = queued * mean_steps + float(np.sum(busy_left))
  tail = mean_steps if queued else float(np.max(busy_left, initial=0.0))
  return max(work / max(width, 1), tail) * seconds_per_iteration


def _eta_text(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def _progress_estimate(progress, pool: Pool, hyper, occupied, queued: int, slots: int,
                       per_iteration: float | None) -> str:
  """", ~M:SS left" for the bar's unfinished latents, or "" before there is a rate."""
  if per_iteration is None:
    return ""
  stopped = np.asarray(pool.outputs.status) != EMPTY
  if stopped.any():
    mean_steps = float(np.mean(np.asarray(pool.outputs.steps)[stopped]))
  elif getattr(hyper, "max_steps", None) is not None:  # none stopped yet: at most max_steps
    mean_steps = float(np.max(np.asarray(hyper.max_steps)))
  else:
    return ""
  in_pool = int(occupied.sum())
  total, done = getattr(progress, "total", None), getattr(progress, "n", None)
  if isinstance(total, (int, float)) and isinstance(done, (int, float)):
    # The bar may count more latents than this call runs (a run's later chunks).
    queued = max(queued, int(total - done) - in_pool)
  seconds = remaining_seconds(queued, np.asarray(pool.slots.steps)[occupied], mean_steps, slots,
                              per_iteration)
  return f", ~{_eta_text(seconds)} left"


def _queue_length(per_device: int, pool_size: int) -> int:
  """Queue slots per device: pool_size times a power of two, so that a range of
  dataset sizes shares one compilation."""
  blocks = max(1, -(-per_device // pool_size))
  return pool_size * (1 << (blocks - 1).bit_length())


def run_continuous(problem, models, z, target, hyper, *, batch_size, mesh=None, progress=None,
                   segment_iterations=None, segment_seconds=None, shrink=True):
  """Runs (n, d) latents with a pool of `batch_size` slots kept full.

  Example i goes to device `i % num_devices`; each device keeps
  `batch_size // num_devices` slots and its own queue. Once the queue is
  exhausted and at most a quarter of the slots are busy, the busy ones move
  to a pool a quarter as wide (`shrink`; never below `MIN_SHRUNK_POOL` slots
  per device), so that a few slow latents do not keep the whole width busy.

  The loop returns to the host every `segment_iterations` iterations, or,
  with `segment_seconds`, about that often in wall time (the segment length
  follows the measured time per iteration; `stop_at` is traced, so no length
  recompiles): `progress` moves, and Ctrl-C is acted on, within seconds even
  when one iteration of the whole pool is slow.

  Returns:
    `(result, stats)`: the problem's result in input order, and a dict with
    `loop_iterations` (per device), `pool_size`, `final_pool_size` and
    `useful_step_fraction` (sum of steps over the slot-iterations run, at
    every width).
  """
  mesh = local_mesh() if mesh is None else mesh
  devices = mesh.devices.size
  n, d = z.shape
  per_device = -(-n // devices)
  pool_size = max(1, min(batch_size // devices, per_device))
  queue = _queue_length(per_device, pool_size)

  # Device-major layout: device k holds examples k, k + devices, k + 2*devices, ...
  order = np.arange(devices * queue).reshape(queue, devices).T.reshape(-1)
  real = order < n
  # Padding rows are never loaded (each device stops at its n_valid).
  source = np.minimum(order, n - 1)
  pad = lambda a: np.where(real.reshape((-1,) + (1,) * (a.ndim - 1)), a[source], 0).astype(a.dtype)
  n_valid = np.array([(n - k + devices - 1) // devices for k in range(devices)], np.int32)
  n_valid_host = n_valid
  sharded = NamedSharding(mesh, P(DATA_AXIS))
  z_queue = jax.device_put(pad(np.asarray(z)), sharded)
  t_queue = jax.device_put(jax.tree_util.tree_map(lambda a: pad(np.asarray(a)), target), sharded)
  n_valid = jax.device_put(n_valid, sharded)

  pool = _start_sharded(hyper, z_queue, t_queue, n_valid, problem=problem, pool_size=pool_size,
                        mesh=mesh)
  limit = np.iinfo(np.int32).max
  segment = limit if segment_iterations is None else int(segment_iterations)
  if segment_seconds is not None:
    segment = 1  # the first segment also compiles: it measures nothing
  stop_at = 0
  reported = 0
  width = pool_size
  slot_steps = 0  # slots times iterations run, over every width
  iterations_before = np.zeros(devices, np.int64)
  segments, per_iteration = 0, None
  while True:
    stop_at = min(stop_at + segment, limit)
    started = time.perf_counter()
    narrower = width // SHRINK_FACTOR if shrink and width // SHRINK_FACTOR >= MIN_SHRUNK_POOL else 0
    pool = _advance_sharded(models, hyper, z_queue, t_queue, n_valid, pool,
                            jnp.asarray(stop_at, jnp.int32), jnp.asarray(narrower, jnp.int32),
                            problem=problem, mesh=mesh)
    iterations = np.asarray(pool.iterations).astype(np.int64)
    advanced = iterations - iterations_before
    ran = int(np.max(advanced))
    slot_steps += int(np.sum(advanced)) * width
    iterations_before = iterations
    occupied = np.asarray(pool.slot_index) >= 0
    if ran:
      # The first segment also compiles: its time per iteration says nothing.
      per_iteration = (time.perf_counter() - started) / ran if segments else None
      if segment_seconds is not None and per_iteration is not None:
        segment = int(np.clip(segment_seconds / per_iteration, 1, 1 << 16))
    segments += 1
    if progress is not None:
      loaded = np.minimum(np.asarray(pool.next_index), n_valid_host)
      finished = int(np.sum(loaded) - occupied.sum())
      progress.update(finished - reported)
      reported = finished
      if hasattr(progress, "set_postfix_str"):  # moves while no example has finished yet
        # tqdm's own estimate follows the rate of finished latents, which
        # arrive in bursts; this one follows the loop's iterations.
        eta = _progress_estimate(progress, pool, hyper, occupied,
                                 int(np.sum(n_valid_host - loaded)), width * devices,
                                 per_iteration)
        progress.set_postfix_str(f"{int(occupied.sum())} running, iteration "
                                 f"{int(iterations.max())}{eta}")
    if not occupied.any():
      break
    busy = occupied.reshape(devices, width).sum(axis=1)
    drained = np.all(np.asarray(pool.next_index) >= n_valid)
    if narrower and drained and busy.max() <= narrower:
      pool = _narrower(pool, devices, width, narrower, sharded)
      width = narrower

  # Undo the device-major layout and drop the queue's padding.
  position = np.empty(devices * queue, np.int64)
  position[order] = np.arange(devices * queue)
  result = jax.tree_util.tree_map(lambda a: a[position[:n]], pool.outputs)
  useful = float(np.sum(np.asarray(result.steps)) / max(1, slot_steps))
  return result, {"loop_iterations": iterations.tolist(), "pool_size": pool_size * devices,
                  "final_pool_size": width * devices, "useful_step_fraction": useful}
