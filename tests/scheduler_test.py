"""Continuous batching and sharding give every latent the plain attack's result."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cfajax
from cfajax import _scheduler

from attack_test import latents
from attack_test import mlp_models
from conftest import assert_same_results
from conftest import enable_x64

# Schedules are compared in float64, where they differ by round-off alone
# (conftest.Z_ATOL).
OPTIONS = dict(threshold=0.8, step_size=0.5, max_steps=200, precision="float64")


def latents64(n, seed):
  return np.asarray(latents(n, seed=seed), np.float64)


def test_continuous_equals_static_per_example():
  decode, classify = mlp_models()
  target = np.arange(23) % 3
  with enable_x64():
    z = latents64(23, seed=4)
    static = cfajax.counterfactual_attack(
        decode, classify, z, target, schedule="static", batch_size=4, **OPTIONS)
    continuous, stats = cfajax.counterfactual_attack(
        decode, classify, z, target, schedule="continuous", batch_size=4, return_stats=True,
        **OPTIONS)
  assert len(set(np.asarray(static.steps).tolist())) > 4, "want varied step counts"
  assert_same_results(continuous, static)
  assert stats["pool_size"] == 4
  iterations = sum(stats["loop_iterations"])
  assert stats["useful_step_fraction"] == pytest.approx(
      np.sum(continuous.steps) / (4 * iterations))


def test_progress_segments_do_not_change_results():
  decode, classify = mlp_models()
  target = np.arange(11) % 3
  with enable_x64():
    z = latents64(11, seed=5)
    whole = cfajax.counterfactual_attack(decode, classify, z, target, batch_size=4, **OPTIONS)
    result, stats = _scheduler.run_continuous(
        cfajax._loop.AttackConfig(precision="float64"),
        tuple(map(cfajax._callables.as_pure_callable, (decode, classify))), z,
        target.astype(np.int32), cfajax._attack.make_hyper(0.8, 0.5, 200, 0.0, np.float64),
        batch_size=4, segment_iterations=3)
    assert_same_results(result, whole)

    class Bar:  # records what a tqdm bar would be told
      def __init__(self):
        self.finished, self.postfixes = 0, []

      def update(self, count):
        self.finished += count

      def set_postfix_str(self, text):
        self.postfixes.append(text)

    # Segments timed to ~0 s last one iteration each: the bar hears of every
    # iteration, and the results are still the unsegmented ones.
    bar = Bar()
    timed, stats = _scheduler.run_continuous(
        cfajax._loop.AttackConfig(precision="float64"),
        tuple(map(cfajax._callables.as_pure_callable, (decode, classify))), z,
        target.astype(np.int32), cfajax._attack.make_hyper(0.8, 0.5, 200, 0.0, np.float64),
        batch_size=4, segment_seconds=1e-9, progress=bar)
  assert_same_results(timed, whole)
  assert bar.finished == 11
  assert len(bar.postfixes) >= max(stats["loop_iterations"]) - 1


def test_queue_lengths_share_a_compilation():
  decode, classify = mlp_models(seed=2)
  options = dict(threshold=0.8, step_size=0.5, max_steps=200, batch_size=2)
  cfajax.counterfactual_attack(decode, classify, latents(5, seed=1), 0, **options)
  compiled = _scheduler._advance_sharded._cache_size()
  # 5 and 7 latents both pad to a queue of 2 * 4 slots.
  cfajax.counterfactual_attack(decode, classify, latents(7, seed=2), 0, **options)
  assert _scheduler._advance_sharded._cache_size() == compiled


def test_continuous_batching_keeps_the_pool_busy_when_steps_vary():
  # A linear log-odds rising by 1 per step of plain ascent, whose starting values
  # spread the step counts uniformly over 10..500; a static chunk waits for its slowest.
  n, pool = 2048, 32
  rng = np.random.default_rng(0)
  u = np.ones(4, np.float32) / 2
  decode = lambda z: z.reshape(-1, 2, 2, 1)
  classify = lambda x: (x.reshape(x.shape[0], -1) @ u)[:, None]
  start = -rng.uniform(10, 500, size=n)  # log-odds at the start
  z = np.repeat(start[:, None] / 2, 4, axis=1)  # u.z = start
  options = dict(threshold=0.5, step_size=1.0, max_steps=600, batch_size=pool,
                 precision="float64", optimizer="ascent")
  with enable_x64():
    static = cfajax.counterfactual_attack(decode, classify, z, 1, schedule="static", **options)
    continuous, stats = cfajax.counterfactual_attack(
        decode, classify, z, 1, return_stats=True, **options)
  assert_same_results(continuous, static)
  assert 10 <= np.min(static.steps) and np.max(static.steps) <= 500
  static_iterations = sum(int(np.max(static.steps[i:i + pool])) + 1 for i in range(0, n, pool))
  static_useful = np.sum(static.steps) / (pool * static_iterations)
  # Continuous: each slot runs ~64 latents back to back, idling only in the
  # final drain; static: every chunk runs as long as its slowest latent.
  assert stats["useful_step_fraction"] > 0.95
  assert static_useful < 0.6


def heavy_tailed_linear_task(n, seed=0):
  """A linear log-odds rising by 1 per step; most latents need ~10 steps, a few ~400."""
  rng = np.random.default_rng(seed)
  u = np.ones(4, np.float32) / 2
  decode = lambda z: z.reshape(-1, 2, 2, 1)
  classify = lambda x: (x.reshape(x.shape[0], -1) @ u)[:, None]
  start = -np.where(rng.random(n) < 0.03, rng.uniform(300, 450, n), rng.uniform(5, 15, n))
  return decode, classify, np.repeat(start[:, None] / 2, 4, axis=1)  # float64


def test_drained_pool_narrows_without_changing_results(monkeypatch):
  decode, classify, z = heavy_tailed_linear_task(512)
  # Plain ascent: the heavy tail of step counts is what narrowing is for.
  options = dict(threshold=0.5, step_size=1.0, max_steps=600, batch_size=64,
                 return_stats=True, precision="float64", optimizer="ascent")
  with enable_x64():
    monkeypatch.setattr(_scheduler, "MIN_SHRUNK_POOL", 10**9)  # never narrower
    wide, wide_stats = cfajax.counterfactual_attack(decode, classify, z, 1, **options)
    monkeypatch.setattr(_scheduler, "MIN_SHRUNK_POOL", 4)
    narrow, stats = cfajax.counterfactual_attack(decode, classify, z, 1, **options)
  assert_same_results(narrow, wide)
  assert wide_stats["final_pool_size"] == 64 and stats["final_pool_size"] == 4
  # The ~15 stragglers run ~400 steps: in the 64-wide pool most slots idle.
  assert wide_stats["useful_step_fraction"] < 0.5
  assert stats["useful_step_fraction"] > 0.8


MULTI_DEVICE = textwrap.dedent("""
    import jax, numpy as np, sys
    sys.path.insert(0, "tests")
    import cfajax
    from attack_test import latents, mlp_models
    from conftest import assert_same_results
    assert jax.local_device_count() == 8, jax.devices()
    assert jax.config.jax_enable_x64  # compared in float64 (conftest.Z_ATOL)
    decode, classify = mlp_models()
    z, target = np.asarray(latents(37, seed=3), np.float64), np.arange(37) % 3
    options = dict(threshold=0.8, step_size=0.5, max_steps=200, precision="float64")
    one = cfajax.counterfactual_attack(decode, classify, z, target, batch_size=16,
                                       mesh=cfajax.local_mesh(jax.devices()[:1]), **options)
    eight, stats = cfajax.counterfactual_attack(decode, classify, z, target, batch_size=16,
                                                return_stats=True, **options)
    assert len(stats["loop_iterations"]) == 8, stats
    assert_same_results(eight, one)
    # A pool smaller than the mesh is refused, not silently grown.
    try:
      cfajax.counterfactual_attack(decode, classify, z, target, batch_size=4, **options)
      raise AssertionError("a 4-slot pool over 8 devices was accepted")
    except ValueError as e:
      assert "batch_size (4) is smaller than the 8 devices" in str(e), e
    # Narrowing a drained pool, device by device: 8 slots each, then 2.
    from cfajax import _scheduler
    from scheduler_test import heavy_tailed_linear_task
    _scheduler.MIN_SHRUNK_POOL = 2
    decode, classify, z = heavy_tailed_linear_task(400, seed=1)
    options = dict(threshold=0.5, step_size=1.0, max_steps=600, batch_size=64,
                   precision="float64", optimizer="ascent")
    one = cfajax.counterfactual_attack(decode, classify, z, 1,
                                       mesh=cfajax.local_mesh(jax.devices()[:1]), **options)
    narrow, narrow_stats = cfajax.counterfactual_attack(decode, classify, z, 1,
                                                        return_stats=True, **options)
    assert narrow_stats["final_pool_size"] == 16, narrow_stats
    assert_same_results(narrow, one)
    print("ok", stats, narrow_stats)
""")


def test_eight_cpu_devices_match_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
  done = subprocess.run([sys.executable, "-c", MULTI_DEVICE], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("ok")
