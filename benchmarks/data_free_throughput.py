"""Data-free (DISC) counterfactuals per second, against the latent and pixel attacks, same run.

Run (after the models of experiments/RESULTS.md, "Models", and `cfajax train duq
--dataset mnist --out runs/mnist/duq`):

  OMP_WAIT_POLICY=PASSIVE python benchmarks/data_free_throughput.py \
      --runs runs/mnist --data-dir ../shared/data --count 128 \
      --out benchmarks/results/data_free-cpu.json

For each attack, on the same `--count` MNIST test 4s attacked toward 9 at threshold 0.9
(at most 500 steps), float32, one pool holding every query:
  * the first call (compilation included) and the median of `--repeats` later calls,
    each blocked until ready;
  * counterfactuals per second (queries / steady-state seconds), the steps taken
    (median, max), the scheduler's useful-step fraction, slot-steps per second (every
    pool slot's iterations, useful or not, per second: the raw step cost) and the flip
    rate.
The attacks: cfajax's latent attack through the VAE (the peer), the pixel attack, plain
deep inversion (pixels with TV, l2 and proximity), and full DISC (implicit prior,
progressive, DUQ manifold term) with `data_free_attack`'s defaults. `--report`
prints the table of benchmarks/RESULTS.md from the record at --out, running nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cfajax  # noqa: E402
from cfajax import metrics  # noqa: E402

import timing  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default="runs/mnist")
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--count", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default="benchmarks/results/data_free-cpu.json")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    timing.print_record_report("benchmarks/data_free_throughput.py --report", "attacks", args.out,
                               report_table)
    return
  runs = Path(args.runs)
  vae, classifier, duq = (cfajax.load_model(runs / n) for n in ("vae", "classifier", "duq"))
  test = cfajax.load_mnist(args.data_dir, "test")
  x = test.images[np.flatnonzero(test.labels == 4)[:args.count]]
  z = np.asarray(vae.encode(x))
  common = {"threshold": 0.9, "max_steps": 500, "batch_size": len(x), "return_stats": True}
  attacks = {
      "latent attack (VAE)": lambda: cfajax.counterfactual_attack(
          vae.decode, classifier, z, 9, step_size=0.1, **common, optimizer="ascent"),
      "pixel attack": lambda: metrics.pixel_attack(classifier, x, 9, step_size=0.01, **common),
      "plain deep inversion": lambda: cfajax.data_free_attack(
          classifier, x, 9, prior="pixels", progressive=False, l2_weight=0.05, **common),
      "DISC (implicit, progressive, DUQ)": lambda: cfajax.data_free_attack(
          classifier, x, 9, manifold=duq, **common),
  }
  record = {"device": timing.device_description(), "precision": "float32",
            "queries": int(len(x)), "command": " ".join(sys.argv), "attacks": {}}
  for name, attack in attacks.items():
    timed = timing.time_call(attack, repeats=args.repeats)
    result, stats = timed.pop("out")
    steps = np.asarray(result.steps)
    seconds = timed["median_s"]
    slot_steps = int(steps.sum()) / stats["useful_step_fraction"]
    record["attacks"][name] = {
        **timed,
        "flip_rate": float(np.mean(np.asarray(result.success))),
        "steps_taken": int(steps.sum()), "median_steps": float(np.median(steps)),
        "max_steps_taken": int(steps.max()), "loop_iterations": stats["loop_iterations"],
        "useful_step_fraction": stats["useful_step_fraction"],
        "counterfactuals_per_s": len(x) / seconds,
        "slot_steps_per_s": slot_steps / seconds}
    print(name, record["attacks"][name], flush=True)
  peer = record["attacks"]["latent attack (VAE)"]["counterfactuals_per_s"]
  for entry in record["attacks"].values():
    entry["relative_to_latent"] = entry["counterfactuals_per_s"] / peer
  timing.write_results(args.out, record)
  print(report_table(record))


def report_table(record: dict) -> str:
  """The table of benchmarks/RESULTS.md, "Data-free (DISC) counterfactuals", from a record."""
  lines = ["| attack | first call (s) | steady (s) | counterfactuals/s | vs latent | "
           "median (max) steps | useful steps | slot-steps/s | flip rate |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
  for name, e in record["attacks"].items():
    lines.append(f"| {name} | {e['first_s']:.1f} | {e['median_s']:.2f} | "
                 f"{e['counterfactuals_per_s']:.1f} | {e['relative_to_latent']:.2f}× | "
                 f"{e['median_steps']:g} ({e['max_steps_taken']}) | "
                 f"{e['useful_step_fraction']:.0%} | {e['slot_steps_per_s']:,.0f} | "
                 f"{e['flip_rate']:.0%} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
