"""Draws a results JSON of attack_throughput.py: rates against batch size, compile times.

    python benchmarks/plot_results.py benchmarks/results/mnist-cpu.json

writes benchmarks/results/mnist-cpu.png beside the JSON: latent-steps/s against batch size
per implementation and precision (left), compile time per run (right), and the schedules'
counterfactuals/s in the title of the left panel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"float32": "-", "bfloat16": "--"}


def plot(results: dict, path: Path) -> None:
  rows = results["throughput"]
  fig, (rates, compiles) = plt.subplots(1, 2, figsize=(10, 3.8))
  series = sorted({(r["impl"], r["precision"]) for r in rows})
  colours = {impl: f"C{i}" for i, impl in enumerate(sorted({impl for impl, _ in series}))}
  for impl, precision in series:
    points = sorted((r["batch"], r["latent_steps_per_s"]) for r in rows
                    if r["impl"] == impl and r["precision"] == precision)
    rates.plot(*zip(*points, strict=True), STYLE.get(precision, ":"), marker="o",
               color=colours[impl], label=f"{impl} {precision}")
  rates.set_xscale("log", base=2)
  rates.set_yscale("log")
  rates.set_xlabel("batch (latents)")
  rates.set_ylabel("latent-steps / s")
  rates.legend(fontsize=7)
  device = results["device"]
  rates.set_title(f"{device.get('cpu_model') or device.get('device')}, "
                  f"{device.get('backend')}", fontsize=8)
  timed = [r for r in rows if r.get("compile_s") and r["impl"] in ("cfajax", "torch-compile")]
  labels = [f"{r['impl']} {r['precision']} b{r['batch']}" for r in timed]
  compiles.barh(range(len(timed)), [r["compile_s"] for r in timed],
                color=[colours[r["impl"]] for r in timed])
  compiles.set_yticks(range(len(timed)), labels, fontsize=6)
  compiles.set_xlabel("compile time (s), apart from steady state")
  schedules = ", ".join(f"{s['schedule']} {s['precision']}: {s['counterfactuals_per_s']:.1f} CF/s "
                        f"({s['useful_step_fraction']:.0%} useful)"
                        for s in results.get("schedules", []) if s["precision"] == "float32")
  if schedules:
    fig.suptitle(f"{results['workload']} workload; real latents: {schedules}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("results", nargs="+", help="JSON files written by attack_throughput.py")
  args = parser.parse_args()
  for name in args.results:
    path = Path(name)
    plot(json.loads(path.read_text()), path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
  main()
