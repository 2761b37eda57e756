"""cfajax's convolution against lax's, inside and outside the attack's loop, beside eager PyTorch.

Run from the repository root (MNIST checkpoints from experiments/RESULTS.md,
"Models"; PyTorch from the `bench` extra):

  OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/cpu_convolution.py \
      --vae runs/mnist/vae --classifier runs/mnist/classifier --data-dir ../shared/data/mnist \
      --out benchmarks/results/mnist-cpu-convolution.json

cfajax's models convolve with `cfajax.conv_general_dilated` (cfajax/_conv.py).
This script loads the same checkpoints twice, switches every convolution of
the second copy back to `jax.lax.conv_general_dilated`, and times, on the same
real MNIST latents in one process:

* `step, no loop`: one jitted gradient-and-update of a batch, called from
  Python `--steps` times: the step outside any `while_loop`;
* `attack`: `cfajax.counterfactual_attack` with every latent taking exactly
  `--steps` updates (the static schedule's `while_loop`), as in
  `attack_throughput.py`;
* eager PyTorch (the best CPU peer in benchmarks/RESULTS.md) on the same
  latents, last.

Rates are latent-steps/s, medians of the timed calls after a warm-up call;
`compile_s` is the first call's excess over the median. The two convolutions'
latents after the attack are compared: they may differ by float32 round-off
only (the input gradient's convolution reads its kernel in another layout).
`--report --out RECORD` prints the table of benchmarks/RESULTS.md from a
record, running nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def use_lax_convolutions(*models) -> int:
  """Switches every `nnx.Conv` of the models to `lax.conv_general_dilated`; returns how many."""
  import jax
  from flax import nnx
  count = 0
  for model in models:
    for _, node in nnx.iter_graph(model):
      if isinstance(node, nnx.Conv):
        node.conv_general_dilated = jax.lax.conv_general_dilated
        count += 1
  return count


def _step_outside_loop(vae, classifier, z, target, steps, repeats):
  """latent-steps/s of `steps` Python calls of one jitted gradient-and-update."""
  import jax
  import jax.numpy as jnp

  from cfajax import experimental

  import timing

  @jax.jit
  def step(vae, classifier, z, target):
    def total(z):
      logits = classifier(vae.decode(z))
      log_odds, _ = jax.vmap(experimental.target_scores)(logits, target)
      return jnp.sum(log_odds)
    return z + 1e-3 * jax.grad(total)(z)

  def run():
    out = z
    for _ in range(steps):
      out = step(vae, classifier, out, target)
    return out

  measured = timing.time_call(run, repeats=repeats, warmup=1)
  return {"median_s": measured["median_s"], "spread": measured["spread"],
          "compile_s": measured["first_s"] - measured["median_s"],
          "latent_steps_per_s": len(z) * steps / measured["median_s"]}


def main(argv=None) -> None:
  from cpu_xla_flags import add_workload_arguments
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_workload_arguments(parser, required="--report" not in argv)
  parser.add_argument("--out", required=True)
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    import timing
    timing.print_record_report(f"benchmarks/cpu_convolution.py --report --out {args.out}",
                               "convolutions", args.out, report_table)
    return
  batches = args.batches

  import jax.numpy as jnp
  import torch

  import attack_throughput
  import timing
  import torch_peers

  ours = attack_throughput.build_workload("mnist", args.vae, args.classifier)[:2]
  with_lax = attack_throughput.build_workload("mnist", args.vae, args.classifier)[:2]
  switched = use_lax_convolutions(*with_lax)
  z, target, _ = attack_throughput.real_latents("mnist", *ours, args.data_dir, max(batches))
  rows = []
  for batch in batches:
    zb, tb = jnp.asarray(z[:batch]), jnp.asarray(target[:batch])
    finals = {}
    for name, (vae, classifier) in (("lax.conv_general_dilated", with_lax),
                                    ("cfajax.conv_general_dilated", ours)):
      outside = _step_outside_loop(vae, classifier, zb, tb, args.steps, args.repeats)
      rows.append({"batch": batch, "convolution": name, "run": "step, no loop", **outside})
      attack = attack_throughput.fixed_step_rate(vae, classifier, zb, tb, batch, args.steps,
                                                 "float32", repeats=args.repeats)
      finals[name] = np.asarray(_final_latents(vae, classifier, zb, tb, args.steps))
      rows.append({"batch": batch, "convolution": name, "run": "attack", **attack})
      print(json.dumps(rows[-2:]), flush=True)
    difference = float(np.max(np.abs(finals["lax.conv_general_dilated"]
                                     - finals["cfajax.conv_general_dilated"])))
    rows.append({"batch": batch, "run": "final latents", "max_abs_difference": difference})

  torch.set_num_threads(os.cpu_count() or 1)
  decoder, clf = torch_peers.torch_models(*ours)
  for batch in batches:
    zt = torch.from_numpy(np.ascontiguousarray(z[:batch]))
    tt = torch.from_numpy(np.asarray(target[:batch], np.int64))
    # The closure below is called within this iteration, so it sees this iteration's values.
    run = lambda: torch_peers.attack_eager(decoder, clf, zt, tt, threshold=1 - 1e-7,  # noqa: B023
                                           max_steps=args.steps, step_size=1e-3)
    measured = torch_peers._time(run, torch.device("cpu"), repeats=args.repeats, warmup=1)
    rows.append({"batch": batch, "run": "torch-eager", "median_s": measured["median_s"],
                 "spread": measured["spread"],
                 "latent_steps_per_s": batch * args.steps / measured["median_s"]})
    print(json.dumps(rows[-1]), flush=True)

  record = {"device": timing.device_description(), "torch": torch.__version__,
            "command": " ".join(sys.argv), "steps": args.steps, "repeats": args.repeats,
            "convolutions_switched_to_lax": switched, "rows": rows}
  with open(args.out, "w") as f:
    json.dump(record, f, indent=1)


def report_table(record: dict) -> str:
  """latent-steps/s per batch and convolution, outside a loop and in the attack."""
  rows = record["rows"]
  lines = ["| batch | convolution | step outside a loop (latent-steps/s) | attack (latent-steps/s) "
           "| attack compile (s) |", "| ---: | --- | ---: | ---: | ---: |"]
  for row in rows:
    if row["run"] != "attack":
      continue
    outside = next(r for r in rows if r["run"] == "step, no loop" and r["batch"] == row["batch"]
                   and r["convolution"] == row["convolution"])
    lines.append(f"| {row['batch']} | `{row['convolution']}` | "
                 f"{outside['latent_steps_per_s']:.0f} | {row['latent_steps_per_s']:.0f} | "
                 f"{row['compile_s']:.1f} |")
  for row in rows:
    if row["run"] == "torch-eager":
      rate = f"{row['latent_steps_per_s']:.0f}"
      lines.append(f"| {row['batch']} | torch-eager | — | {rate} | — |")
  return "\n".join(lines)


def _final_latents(vae, classifier, z, target, steps):
  import cfajax
  result = cfajax.counterfactual_attack(vae.decode, classifier, z, target,
                                        threshold=1 - 1e-7, max_steps=steps, step_size=1e-3,
                                        batch_size=len(z), optimizer="ascent")
  return result.z


if __name__ == "__main__":
  main()
