"""The attack through a diffusion model: its cost and memory against the DDIM steps S it
decodes with, with and without rematerialising each step.

Run (after `cfajax train diffusion` and the classifier of experiments/RESULTS.md, "Models"):

  OMP_WAIT_POLICY=PASSIVE python benchmarks/diffusion_cost.py --runs runs/mnist \
      --data-dir ../shared/data --out benchmarks/results/diffusion-cpu.json

For each S in `--steps` (the edit covers the whole chain, depth 1, so decode runs S UNet
evaluations and the gradient goes back through all of them), on the first `--count` MNIST
test 4s:

  * the compiled attack step's peak scratch memory (XLA's `memory_analysis` of the jitted
    gradient of the classifier's score through decode, for the `--count` latents at once):
    with each step rematerialised (`jax.checkpoint`, the default) and without, the peer;
  * one batched gradient step timed (first call with compilation apart from the median
    of `--repeats` later calls, blocked until ready): latent-steps per second;
  * the whole attack to 9 (plain ascent, step 0.1, threshold 0.5, at most 100 steps),
    timed the same way: counterfactuals per second, with the flip rate and median steps.

float32 on the default device. `--memory-only` compiles and records the memory alone (it
does not depend on other work on the machine; timings do, and need it alone). `--report`
prints the table of benchmarks/RESULTS.md from the record at --out, running nothing.
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

import timing  # noqa: E402

ATTACK = {"threshold": 0.5, "step_size": 0.1, "max_steps": 100, "objective": "logit"}


def score_gradient(generator, classifier):
  """The jitted gradient of the summed class-9 logit through `generator.decode`."""
  def total(z):
    return jnp.sum(classifier(generator.decode(z))[:, 9])
  return jax.jit(jax.grad(total))


def peak_scratch_mib(generator, classifier, z) -> float | None:
  """XLA's scratch (temp) memory of the compiled gradient, in MiB (None where the backend
  does not say)."""
  compiled = score_gradient(generator, classifier).lower(z).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return analysis.temp_size_in_bytes / 2**20


def measure(generator, classifier, z, repeats: int) -> dict:
  gradient = score_gradient(generator, classifier)
  step = timing.time_call(lambda: gradient(z), repeats=repeats)
  attack = timing.time_call(
      lambda: cfajax.counterfactual_attack(generator.decode, classifier, z, 9, **ATTACK,
                                           optimizer="ascent"), repeats=repeats)
  result = attack.pop("out")
  step.pop("out")
  reached = np.asarray(result.status) == cfajax.Status.REACHED
  steps = np.asarray(result.steps)
  return {"gradient_step": step, "attack": attack,
          "latent_steps_per_s": len(z) / step["median_s"],
          "counterfactuals_per_s": len(z) / attack["median_s"],
          "flip_rate": float(reached.mean()),
          "median_steps": float(np.median(steps[reached])) if reached.any() else None}


def report_table(record: dict) -> str:
  lines = ["| S (UNet evaluations per decode) | scratch memory, remat / none (MiB) | "
           "latent-steps/s, remat / none | counterfactuals/s, remat / none | flip rate | "
           "median steps |",
           "|---:|---|---|---|---:|---:|"]
  if record.get("memory_only"):
    lines = ["| S (UNet evaluations per decode) | scratch memory with remat (MiB) | "
             "without (MiB) |", "|---:|---:|---:|"]
    lines += [f"| {row['steps']} | {row['remat']['scratch_mib']:.1f} | "
              f"{row['no_remat']['scratch_mib']:.1f} |" for row in record["rows"]]
    return "\n".join(lines)
  for row in record["rows"]:
    remat, plain = row["remat"], row["no_remat"]
    memory = " / ".join("—" if m is None else f"{m:.1f}"
                        for m in (remat["scratch_mib"], plain["scratch_mib"]))
    lines.append(
        f"| {row['steps']} | {memory} | {remat['latent_steps_per_s']:.1f} / "
        f"{plain['latent_steps_per_s']:.1f} | {remat['counterfactuals_per_s']:.2f} / "
        f"{plain['counterfactuals_per_s']:.2f} | {remat['flip_rate']:.0%} | "
        f"{remat['median_steps']:g} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default="runs/mnist")
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--steps", default="1,2,4,8")
  parser.add_argument("--count", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/diffusion-cpu.json")
  parser.add_argument("--memory-only", action="store_true",
                      help="record the compiled step's scratch memory only, no timings")
  parser.add_argument("--report", action="store_true")
  args = parser.parse_args(argv)
  command = f"benchmarks/diffusion_cost.py --report --out {args.out}"
  if args.report:
    timing.print_record_report(command, "against S", args.out, report_table)
    return
  diffusion = cfajax.load_model(Path(args.runs) / "diffusion")
  classifier = cfajax.load_model(Path(args.runs) / "classifier")
  test = cfajax.load_mnist(args.data_dir, "test")
  x = test.images[test.labels == 4][:args.count]
  record = {"device": timing.device_description(), "precision": "float32",
            "images": f"the first {len(x)} MNIST test 4s", "attack": ATTACK,
            "model": str(Path(args.runs) / "diffusion"), "memory_only": args.memory_only,
            "rows": []}
  for s in (int(v) for v in args.steps.split(",")):
    row = {"steps": s}
    for name, remat in (("remat", True), ("no_remat", False)):
      generator = diffusion.with_edit(steps=s, depth=1.0, remat=remat)
      z = jnp.asarray(generator.encode(x))
      row[name] = {"scratch_mib": peak_scratch_mib(generator, classifier, z)}
      if not args.memory_only:
        row[name].update(measure(generator, classifier, z, args.repeats))
      print(f"S={s} {name}: {row[name]}", flush=True)
    record["rows"].append(row)
    timing.write_results(args.out, record)
  print(report_table(record))


if __name__ == "__main__":
  main()
