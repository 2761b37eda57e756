"""Counterfactuals per second: the translator's one forward pass against the latent attack.

Run (after the models of experiments/RESULTS.md, "Models", and experiments/robustness.py,
which saves its seed-0 MNIST translator to runs/robustness/mnist/translator):

  OMP_WAIT_POLICY=PASSIVE python benchmarks/translator_throughput.py \
      --runs runs/mnist --translator runs/robustness/mnist/translator \
      --data-dir ../shared/data --out benchmarks/results/translator-cpu.json

The task is the data-free benchmark's: the first `--count` MNIST test 4s made 9s by
  * the translator, `G(x, 9)`, in batches of `--batch-size` (one jitted forward pass), and
  * the latent attack through the VAE (encode, plain ascent of step 0.1 to
    threshold 0.9, at most 500 steps, one pool holding every query, decode), the peer,
each timed as a whole (first call with compilation apart from the median of `--repeats`
later calls, blocked until ready), float32 on the default device. Reported with the
speed: the share of counterfactuals the classifier the attack climbs calls 9 (p >= 0.5),
and the share the independent oracle calls 9, since a fast counterfactual that nobody
believes is no bargain. `--report` prints the table of benchmarks/RESULTS.md from
the record at --out, running nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cfajax  # noqa: E402
from cfajax import metrics  # noqa: E402
from cfajax.experimental import apply_batched  # noqa: E402

import timing  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default="runs/mnist")
  parser.add_argument("--translator", default="runs/robustness/mnist/translator")
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--count", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=300)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/translator-cpu.json")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    timing.print_record_report("benchmarks/translator_throughput.py --report", "methods",
                               args.out, report_table)
    return
  runs = Path(args.runs)
  vae, classifier, oracle = (cfajax.load_model(runs / n) for n in ("vae", "classifier", "oracle"))
  translator = cfajax.load_model(args.translator)
  test = cfajax.load_mnist(args.data_dir, "test")
  x = test.images[np.flatnonzero(test.labels == 4)[:args.count]]

  translate = jax.jit(lambda images: translator.translate(
      images, jnp.full(len(images), 9, jnp.int32)))

  def translated():
    return apply_batched(translate, x, args.batch_size)

  def attacked():
    result = cfajax.counterfactual_attack(vae.decode, classifier, vae.encode(x), 9,
                                          threshold=0.9, step_size=0.1, max_steps=500,
                                          batch_size=len(x), optimizer="ascent")
    return vae.decode(result.z), result

  record = {"device": timing.device_description(), "precision": "float32",
            "queries": int(len(x)), "command": " ".join(sys.argv), "methods": {}}
  for name, run in (("translator", translated), ("latent attack (VAE)", attacked)):
    timed = timing.time_call(run, repeats=args.repeats)
    out = timed.pop("out")
    images = np.asarray(out[0] if isinstance(out, tuple) else out)
    entry = {**timed, "counterfactuals_per_s": len(x) / timed["median_s"],
             "classifier_says_9": float(np.mean(
                 metrics.target_probability(classifier, images, 9) >= 0.5)),
             "oracle_says_9": float(np.mean(metrics.target_probability(oracle, images, 9) >= 0.5))}
    if isinstance(out, tuple):
      steps = np.asarray(out[1].steps)
      entry.update(median_steps=float(np.median(steps)), max_steps_taken=int(steps.max()),
                   flip_rate=float(np.mean(np.asarray(out[1].success))))
    record["methods"][name] = entry
    print(name, entry, flush=True)
  peer = record["methods"]["latent attack (VAE)"]["counterfactuals_per_s"]
  for entry in record["methods"].values():
    entry["relative_to_latent"] = entry["counterfactuals_per_s"] / peer
  timing.write_results(args.out, record)
  print(report_table(record))


def report_table(record: dict) -> str:
  """The table of benchmarks/RESULTS.md, "The translator against the latent attack"."""
  lines = ["| method | first call (s) | steady (s) | counterfactuals/s | vs latent | classifier "
           "says 9 | oracle says 9 |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, e in record["methods"].items():
    lines.append(f"| {name} | {e['first_s']:.2f} | {e['median_s']:.3f} | "
                 f"{e['counterfactuals_per_s']:,.1f} | {e['relative_to_latent']:.0f}× | "
                 f"{e['classifier_says_9']:.0%} | {e['oracle_says_9']:.0%} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
