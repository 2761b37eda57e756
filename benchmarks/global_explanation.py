"""A dataset-wide global explanation of MNIST, timed stage by stage in steady state.

The issue's target: all 70,000 MNIST images (train and test) through
encoding, probes, the attack and the attributions in at most 5 s of steady
state on one H100-class GPU. Run on a GPU (not yet measured there):

  python benchmarks/global_explanation.py --vae runs/mnist/vae \
      --classifier runs/mnist/classifier --data-dir ../shared/data/mnist \
      --out benchmarks/results/global-mnist-gpu.json

Each repeat runs the whole explanation on arrays already in memory:

  encode        z = E(x) and f(x) for every image (jitted batches);
  probes        one logistic-regression probe per binarised morphometric
                descriptor, fitted on all the latents (full-batch L-BFGS);
  attack        the counterfactual attack (continuous schedule) on every
                explained image;
  attributions  local phi for every counterfactual and the global psi with
                its bootstrap interval.

The descriptors are computed once from the images before timing (they are the
auxiliary dataset, not part of explaining a classifier) and reported apart.
The first repeat includes compilation; the table reports it apart from the
median of the others (steady state), per stage.

Tasks (`--task`):
  pair     (default) the class pair `--classes` (4,9), as `cfajax explain`:
           the images predicted as either class are attacked toward the other;
  all      every image is attacked toward its runner-up class, so the attack
           covers the whole dataset; psi then uses each image's pair of
           predicted and runner-up classes (s = +1 for all) and reads "what
           changes as a digit moves toward its nearest other class".

`--report --out RECORD [--baseline RECORD]` prints the table of
benchmarks/RESULTS.md from a record (beside a baseline's steady state, e.g. the
run with `--lax-convolutions`), running nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cfajax  # noqa: E402
from cfajax.experimental import DecisionTask  # noqa: E402
from cfajax.experimental import apply_batched  # noqa: E402

import timing  # noqa: E402
from attack_throughput import build_workload  # noqa: E402

STAGES = ("encode", "probes", "attack", "attributions")


def load_images(data_dir: str, limit: int) -> np.ndarray:
  """All MNIST images, train then test (or the first `limit`)."""
  if not data_dir:
    raise SystemExit("--data-dir is required: the folder with MNIST's four IDX files")
  images = np.concatenate([cfajax.load_mnist(data_dir, split).images
                           for split in ("train", "test")])
  return images[:limit] if limit else images


def pair_prob(logits: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """p_b / (p_a + p_b) per row: the probability of b within the pair (a, b)."""
  rows = np.arange(len(logits))
  return 1 / (1 + np.exp(logits[rows, a] - logits[rows, b]))


def choose_targets(logits: np.ndarray, task: str, classes: tuple[int, int]):
  """(selected rows, targets, original pair probabilities) for the task."""
  if task == "pair":  # as `cfajax explain`
    pair = DecisionTask(logits.shape[1], classes)
    selected = np.flatnonzero(pair.selected(logits))
    return selected, pair.target(logits[selected]), pair.positive_prob(logits[selected])
  logits = np.asarray(logits, np.float64)
  predicted = np.argmax(logits, axis=1)
  runner_up = np.argsort(logits, axis=1)[:, -2]
  return np.arange(len(logits)), runner_up.astype(np.int32), pair_prob(
      logits, predicted, runner_up)


def explain_once(vae, classifier, images, attributes, names, args):
  """One whole explanation; returns the seconds per stage and the outputs."""
  seconds = {}
  clock = time.perf_counter()

  def lap(stage, value):
    nonlocal clock
    jax.block_until_ready(value)
    now = time.perf_counter()
    seconds[stage] = now - clock
    clock = now
    return value

  z = apply_batched(vae.encode, images, args.encode_batch)
  logits = lap("encode", apply_batched(classifier, images, args.encode_batch))
  probes = cfajax.fit_probes(z, attributes, names=names)
  lap("probes", (probes.coef, probes.intercept))
  selected, target, original_prob = choose_targets(logits, args.task, args.classes)
  result = lap("attack", cfajax.counterfactual_attack(
      vae.decode, classifier, z[selected], target, threshold=args.threshold,
      step_size=args.step_size, max_steps=args.max_steps, batch_size=args.pool,
      schedule="continuous", optimizer="ascent"))
  phi = cfajax.local_attributions(probes, z[selected], result.z)
  psi = cfajax.global_attributions(np.asarray(phi), original_prob,
                                   success=np.asarray(result.success), names=names)
  lap("attributions", psi.psi)
  return seconds, result, psi


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vae")
  parser.add_argument("--classifier")
  parser.add_argument("--data-dir")
  parser.add_argument("--limit", type=int, default=0, help="first N images (0: all 70,000)")
  parser.add_argument("--task", choices=("pair", "all"), default="pair")
  parser.add_argument("--classes", default="4,9")
  parser.add_argument("--threshold", type=float, default=0.5)
  parser.add_argument("--step-size", type=float, default=0.1)
  parser.add_argument("--max-steps", type=int, default=500)
  parser.add_argument("--pool", type=int, default=4096, help="continuous pool width")
  parser.add_argument("--encode-batch", type=int, default=4096)
  parser.add_argument("--repeats", type=int, default=3, help="timed repeats after the first")
  parser.add_argument("--lax-convolutions", action="store_true",
                      help="convolve with lax.conv_general_dilated instead of cfajax's "
                           "(the comparison in benchmarks/RESULTS.md)")
  parser.add_argument("--out")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  parser.add_argument("--baseline", help="with --report: a record whose steady state to show "
                                         "beside it (the --lax-convolutions run)")
  args = parser.parse_args(argv)
  if args.report:
    if not args.out:
      parser.error("--report reads the record named by --out")
    records = []
    for path in (args.out, args.baseline):
      if path:
        with open(path) as f:
          records.append(json.load(f))
    command = f"benchmarks/global_explanation.py --report --out {args.out}" + (
        f" --baseline {args.baseline}" if args.baseline else "")
    print(f"<!-- report: {command}: stages -->\n{report_table(*records)}\n<!-- /report -->")
    return
  args.classes = tuple(int(c) for c in args.classes.split(","))

  device = timing.device_description()
  print(f"device: {device['device']} x{device['device_count']} ({device['backend']}), "
        f"jax {device['jax']}, float32")
  vae, classifier, trained = build_workload("mnist", args.vae, args.classifier)
  print("weights:", "trained checkpoints" if trained else "random (flip rates mean nothing)")
  if args.lax_convolutions:
    from cpu_convolution import use_lax_convolutions
    print(f"{use_lax_convolutions(vae, classifier)} convolutions switched to lax's")
  images = load_images(args.data_dir, args.limit)

  start = time.perf_counter()
  descriptors = cfajax.digit_descriptors(images)
  attributes, _ = cfajax.binarize_descriptors(descriptors)
  descriptor_s = time.perf_counter() - start
  names = list(cfajax.DESCRIPTOR_ATTRIBUTE_NAMES)
  print(f"{len(images)} images; descriptors once: {descriptor_s:.2f} s")

  runs = []
  for repeat in range(1 + args.repeats):
    seconds, result, psi = explain_once(vae, classifier, images, attributes, names, args)
    runs.append(seconds)
    print(f"run {repeat}: " + ", ".join(f"{s} {seconds[s]:.3f} s" for s in STAGES)
          + f", total {sum(seconds.values()):.3f} s")
  steady = {s: statistics.median(r[s] for r in runs[1:]) for s in STAGES} if args.repeats else {}
  first = runs[0]
  rows = [{"stage": s, "first_s": first[s], "steady_s": steady.get(s),
           "compile_s": first[s] - steady[s] if steady else None} for s in STAGES]
  rows.append({"stage": "total", "first_s": sum(first.values()),
               "steady_s": sum(steady.values()) if steady else None,
               "compile_s": sum(first.values()) - sum(steady.values()) if steady else None})
  timing.print_table(rows, ["stage", "first_s", "steady_s", "compile_s"])

  steps = np.asarray(result.steps)
  success = np.asarray(result.success)
  outcome = {"explained": int(len(steps)), "flip_rate": float(success.mean()),
             "median_steps": float(np.median(steps[success])) if success.any() else None,
             "max_steps_taken": int(steps.max()),
             "latent_steps": int(steps.sum())}
  print(f"explained {outcome['explained']} of {len(images)} images; flip rate "
        f"{outcome['flip_rate']:.3f}, median steps {outcome['median_steps']}, "
        f"{outcome['latent_steps']} latent-steps")
  print("top psi:", ", ".join(f"{names[i]} {psi.psi[i]:+.3f}" for i in psi.ranking[:3]))
  if args.out:
    timing.write_results(args.out, {
        "device": device, "trained_weights": trained, "num_images": len(images),
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "descriptors_once_s": descriptor_s, "runs_s": runs, "stages": rows,
        "outcome": outcome, "psi": psi.to_dict(), "command": " ".join(sys.argv)})


def _convolutions(record: dict) -> str:
  return "lax convolutions" if record["options"].get("lax_convolutions") else "cfajax's"


def report_table(record: dict, baseline: dict | None = None) -> str:
  """Steady-state seconds per stage (a baseline's first), and the record's compile time.

  A stage whose first run was faster than its steady state shows no compile time ("—").
  """
  outcome = record["outcome"]
  labels = {
      "encode": f"encode and classify {record['num_images']:,}",
      "probes": f"probes ({len(record['psi']['attributes'])} × {record['num_images']:,})",
      "attack": f"attack ({outcome['explained']:,} latents, {outcome['latent_steps']:,} "
                "latent-steps)",
      "attributions": f"attributions (φ, ψ, {record['psi']['num_bootstrap']:,} bootstrap "
                      "samples)",
      "total": "total"}
  columns = ["stage"]
  if baseline is not None:
    columns.append(f"steady state (s), {_convolutions(baseline)}")
    base = {row["stage"]: row for row in baseline["stages"]}
  columns += [f"steady state (s), {_convolutions(record)}",
              f"compile (s), {_convolutions(record)}"]
  lines = ["| " + " | ".join(columns) + " |",
           "| --- |" + " ---: |" * (len(columns) - 1)]
  for row in record["stages"]:
    cells = [labels.get(row["stage"], row["stage"])]
    if baseline is not None:
      cells.append(f"{base[row['stage']]['steady_s']:.2f}")
    cells += [f"{row['steady_s']:.2f}",
              f"{row['compile_s']:.2f}" if row["compile_s"] >= 0 else "—"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
