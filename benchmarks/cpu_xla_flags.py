"""Does an XLA CPU option close the gap to eager PyTorch? The attack step under each, side by side.

Run from the repository root (MNIST checkpoints from experiments/RESULTS.md,
"Models"; PyTorch from the `bench` extra):

  OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/cpu_xla_flags.py \
      --vae runs/mnist/vae --classifier runs/mnist/classifier --data-dir ../shared/data/mnist \
      --out benchmarks/results/mnist-cpu-xla-flags.json

XLA reads its flags once per process, so every variant runs in a child
process (this script with `--child`), in turn, never two at a time; eager
PyTorch (float32, the best CPU peer in benchmarks/RESULTS.md) runs in the
parent, after them, on the same latents. Each measures latent-steps/s of
batches of real MNIST latents taking exactly `--steps` plain-ascent updates,
compile time apart (`attack_throughput.fixed_step_rate`, torch's `_time`).
A variant whose results differ from the default's beyond float32 round-off
(fast math may) says so: its speed is not a like-for-like comparison.
`--report --out RECORD` prints the table of benchmarks/RESULTS.md from a record
of either mode, running nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    "default": "",
    "oneDNN custom calls": "--xla_cpu_experimental_onednn_custom_call=true",
    "oneDNN graph": "--xla_cpu_use_onednn=true",
    "XNNPACK": "--xla_cpu_use_xnnpack=true",
    "XNNPACK greedy fusion": "--xla_cpu_use_xnnpack=true "
                             "--xla_cpu_experimental_xnn_graph_fusion_mode="
                             "XNN_GRAPH_FUSION_MODE_GREEDY",
    "no fusion emitters": "--xla_cpu_use_fusion_emitters=false",
    "single-threaded Eigen": "--xla_cpu_multi_thread_eigen=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
}


def workload(args):
  import attack_throughput
  vae, classifier, _ = attack_throughput.build_workload("mnist", args.vae, args.classifier)
  z, target, _ = attack_throughput.real_latents("mnist", vae, classifier, args.data_dir,
                                                max(args.batches))
  return vae, classifier, z, target


def child(args) -> None:
  import cfajax

  import attack_throughput
  vae, classifier, z, target = workload(args)
  rows = []
  for batch in args.batches:
    row = attack_throughput.fixed_step_rate(vae, classifier, z, target, batch, args.steps,
                                            "float32", repeats=args.repeats)
    result = cfajax.counterfactual_attack(vae.decode, classifier, z[:batch], target[:batch],
                                          threshold=1 - 1e-7, max_steps=args.steps,
                                          step_size=1e-3, batch_size=batch, optimizer="ascent")
    row["z_checksum"] = np.asarray(result.z, np.float64).tolist()
    rows.append({"batch": batch, **row})
  print("RESULT " + json.dumps(rows))


def torch_eager(args):
  import torch

  import torch_peers
  vae, classifier, z, target = workload(args)
  torch.set_num_threads(os.cpu_count() or 1)
  decoder, clf = torch_peers.torch_models(vae, classifier)
  rows = []
  for batch in args.batches:
    zb = torch.from_numpy(np.ascontiguousarray(z[:batch]))
    tb = torch.from_numpy(np.asarray(target[:batch], np.int64))
    # The closure below is called within this iteration, so it sees this iteration's values.
    run = lambda: torch_peers.attack_eager(decoder, clf, zb, tb, threshold=1 - 1e-7,  # noqa: B023
                                           max_steps=args.steps, step_size=1e-3)
    measured = torch_peers._time(run, torch.device("cpu"), repeats=args.repeats, warmup=1)
    rows.append({"batch": batch, "latent_steps_per_s": batch * args.steps / measured["median_s"],
                 "median_s": measured["median_s"], "spread": measured["spread"]})
  return rows


def components(args):
  """Seconds per call of each part of one attack step, JAX (jit, default flags) and torch.

  Forward alone and forward plus the gradient with respect to the input, for
  the decoder (latents -> images), the classifier (images -> logits) and both
  (the attack's step), at each batch size. Only inputs are differentiated,
  as in the attack (no weight gradients).
  """
  import jax
  import jax.numpy as jnp
  import torch

  import timing
  import torch_peers
  vae, classifier, z, target = workload(args)
  decoder, clf = torch_peers.torch_models(vae, classifier)
  cpu = torch.device("cpu")
  rows = []
  for batch in args.batches:
    zb = jnp.asarray(z[:batch])
    xb = vae.decode(zb)
    jax_parts = {
        "decoder forward": (jax.jit(lambda v: vae.decode(v)), zb),
        "decoder forward+input grad": (jax.jit(jax.grad(lambda v: jnp.sum(vae.decode(v)))), zb),
        "classifier forward": (jax.jit(lambda x: classifier(x)), xb),
        "classifier forward+input grad": (
            jax.jit(jax.grad(lambda x: jnp.sum(classifier(x)[:, 0]))), xb),
        "both forward+input grad": (
            jax.jit(jax.grad(lambda v: jnp.sum(classifier(vae.decode(v))[:, 0]))), zb),
    }
    zt = torch.from_numpy(np.ascontiguousarray(z[:batch]))
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(xb).transpose(0, 3, 1, 2)))

    def input_grad(fn, value):
      def run():
        v = value.clone().requires_grad_(True)
        fn(v).sum().backward()
        return v.grad
      return run

    # The closures below are called within this iteration, so they see this iteration's values.
    torch_parts = {
        "decoder forward": lambda: decoder(zt),  # noqa: B023
        "decoder forward+input grad": input_grad(decoder, zt),
        "classifier forward": lambda: clf(xt),  # noqa: B023
        "classifier forward+input grad": input_grad(lambda x: clf(x)[:, 0], xt),
        "both forward+input grad": input_grad(lambda v: clf(decoder(v))[:, 0], zt),
    }
    for name, (fn, value) in jax_parts.items():
      jax_s = timing.time_call(lambda: fn(value), repeats=args.repeats * 3, warmup=2)["median_s"]  # noqa: B023
      with torch.no_grad() if "grad" not in name else torch.enable_grad():
        torch_s = torch_peers._time(torch_parts[name], cpu, repeats=args.repeats * 3,
                                    warmup=2)["median_s"]
      rows.append({"batch": batch, "part": name, "jax_ms": 1e3 * jax_s,
                   "torch_ms": 1e3 * torch_s, "jax_over_torch": jax_s / torch_s})
      print(f"{batch:5d} {name:32s} jax {1e3 * jax_s:8.2f} ms  torch {1e3 * torch_s:8.2f} ms"
            f"  ratio {jax_s / torch_s:.2f}", flush=True)
  return rows


def add_workload_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
  """The MNIST checkpoints, data and fixed-step timing options the CPU comparisons share."""
  parser.add_argument("--vae", required=required)
  parser.add_argument("--classifier", required=required)
  parser.add_argument("--data-dir", required=required)
  parser.add_argument("--batches", default="256,1024",
                      type=lambda text: [int(b) for b in text.split(",")])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_workload_arguments(parser, required="--report" not in argv)
  parser.add_argument("--out")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--components-only", action="store_true",
                      help="only time the parts of one step (default flags), JAX against torch")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    if not args.out:
      parser.error("--report reads the record named by --out")
    with open(args.out) as f:
      record = json.load(f)
    name, table = ("components", components_table(record)) if "components" in record else (
        "options", options_table(record))
    print(f"<!-- report: benchmarks/cpu_xla_flags.py --report --out {args.out}: {name} -->\n"
          f"{table}\n<!-- /report -->")
    return
  if args.child:
    child(args)
    return
  import timing
  if args.components_only:
    rows = components(args)
    if args.out:
      timing.write_results(args.out, {"device": timing.device_description(), "components": rows})
    return
  results = {"device": timing.device_description(), "steps": args.steps, "variants": {}}
  reference = None
  for name, flags in VARIANTS.items():
    env = {**os.environ, "XLA_FLAGS": flags}
    done = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
                          capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not line:
      results["variants"][name] = {"flags": flags, "error": done.stderr[-500:]}
      print(f"{name}: failed ({done.stderr.strip().splitlines()[-1:]})")
      continue
    rows = json.loads(line[0][len("RESULT "):])
    for row in rows:
      z = np.asarray(row.pop("z_checksum"))
      if reference is None or row["batch"] not in reference:
        reference = {**(reference or {}), row["batch"]: z}
      row["max_abs_dz_vs_default"] = float(np.max(np.abs(z - reference[row["batch"]])))
    results["variants"][name] = {"flags": flags, "rows": rows}
    print(name, [(r["batch"], round(r["latent_steps_per_s"]), round(r["compile_s"], 2),
                  f"{r['max_abs_dz_vs_default']:.1e}") for r in rows], flush=True)
  results["torch_eager_float32"] = torch_eager(args)
  print("torch-eager", [(r["batch"], round(r["latent_steps_per_s"]))
                        for r in results["torch_eager_float32"]])
  if args.out:
    timing.write_results(args.out, results)


def options_table(record: dict) -> str:
  """latent-steps/s under each XLA option, and whether its latents equal the default's."""
  batches = [row["batch"] for row in record["torch_eager_float32"]]
  lines = ["| XLA_FLAGS | " + " | ".join(
               f"latent-steps/s, batch {b}" if i == 0 else f"batch {b}"
               for i, b in enumerate(batches)) + " | z equal to the default's |",
           "| --- |" + " ---: |" * len(batches) + " --- |"]
  for variant in record["variants"].values():
    if "rows" not in variant:
      lines.append(f"| `{variant['flags']}` |" + " failed |" * len(batches) + " — |")
      continue
    rate = {row["batch"]: row["latent_steps_per_s"] for row in variant["rows"]}
    dz = max(row["max_abs_dz_vs_default"] for row in variant["rows"])
    label = f"`{variant['flags']}`" if variant["flags"] else "(default)"
    equal = "—" if not variant["flags"] else "bit for bit" if dz == 0 else f"no ({dz:.1e})"
    lines.append(f"| {label} | " + " | ".join(f"{rate[b]:.0f}" for b in batches)
                 + f" | {equal} |")
  peer = {row["batch"]: row["latent_steps_per_s"] for row in record["torch_eager_float32"]}
  lines.append("| torch-eager (peer) | " + " | ".join(f"{peer[b]:.0f}" for b in batches)
               + " | — |")
  return "\n".join(lines)


def components_table(record: dict) -> str:
  """Milliseconds per call of each part of the step, JAX against PyTorch."""
  lines = ["| batch | part | JAX (ms) | PyTorch (ms) | JAX / PyTorch |",
           "| ---: | --- | ---: | ---: | ---: |"]
  for row in record["components"]:
    lines.append(f"| {row['batch']} | {row['part'].replace('+input grad', ' + input gradient')} | "
                 f"{row['jax_ms']:.1f} | {row['torch_ms']:.1f} | {row['jax_over_torch']:.2f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
