"""Timing helpers shared by the benchmarks: warm-up, blocking, medians, device facts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def device_description() -> dict[str, Any]:
  """The device, its count, the backend and the software versions in use."""
  device = jax.devices()[0]
  info = {
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "device_count": jax.device_count(),
      "host": platform.node(),
      "cpu_model": cpu_model(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "jaxlib": _jaxlib_version(),
      "python": platform.python_version(),
  }
  try:
    import flax
    info["flax"] = flax.__version__
  except ImportError:
    pass
  return info


def cpu_model() -> str:
  """The host CPU's model name ("model name" in /proc/cpuinfo), else `platform.processor()`."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _jaxlib_version() -> str | None:
  try:
    import jaxlib
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
  """Times `fn()` (which returns JAX arrays) after `warmup` calls.

  Call it before anything else has run `fn`: the first call's time is the
  compile time plus one run only if no earlier, asynchronously dispatched
  call is still running.

  Returns:
    `first_s` (the first call, compilation included), `median_s`, `min_s`,
    `spread` ((max - min) / median of the timed repeats) and `out`, the
    first call's output.
  """
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - start
  for _ in range(max(0, warmup - 1)):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"first_s": first, "median_s": median, "min_s": min(times),
          "spread": (max(times) - min(times)) / median, "out": out}


def matmul_peak(dtype=jnp.float32, size: int | None = None) -> float:
  """Measured FLOP/s of a square matrix product on the default device (random data)."""
  size = size or (8192 if jax.default_backend() != "cpu" else 1024)
  keys = jax.random.split(jax.random.key(0), 2)
  a = jax.random.normal(keys[0], (size, size), dtype)
  b = jax.random.normal(keys[1], (size, size), dtype)
  product = jax.jit(lambda a, b: a @ b)
  timing = time_call(lambda: product(a, b), repeats=10, warmup=3)
  return 2 * size**3 / timing["median_s"]


def write_results(path: str, results: dict[str, Any]) -> None:
  """Writes results as JSON, whole or not at all: a run killed mid-write keeps the last record."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  partial = f"{path}.partial"
  with open(partial, "w") as f:
    json.dump(results, f, indent=2, default=lambda o: np.asarray(o).tolist())
    f.write("\n")
  os.replace(partial, path)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
  """Prints rows as an aligned text table with the given columns."""
  def cell(value):
    if isinstance(value, float):
      return f"{value:.4g}"
    return "-" if value is None else str(value)
  cells = [[cell(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
  print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
  for r in cells:
    print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def print_record_report(command: str, name: str, path, report_table: Callable[[dict], str]) -> None:
  """Prints `report_table` of the JSON record at `path` between the markers that hold it in
  benchmarks/RESULTS.md (tests/results_tables_test.py checks the two agree)."""
  with open(path) as f:
    table = report_table(json.load(f))
  print(f"<!-- report: {command}: {name} -->\n{table}\n<!-- /report -->")
