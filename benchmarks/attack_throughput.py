"""Counterfactual-attack throughput: cfajax's schedulers and precisions, against PyTorch peers.

Run on a GPU (not yet measured there):

  python benchmarks/attack_throughput.py --workload mnist \
      --vae runs/mnist/vae --classifier runs/mnist/classifier \
      --data-dir ../shared/data/mnist --steps 20 --out benchmarks/results/mnist-gpu.json

On a CPU the default batch sizes take far too long; on 2 shared cores this took
9 minutes (see benchmarks/RESULTS.md for what it measured and why the thread
setting):

  OMP_WAIT_POLICY=PASSIVE python benchmarks/attack_throughput.py --workload mnist \
      --vae runs/mnist/vae --classifier runs/mnist/classifier \
      --data-dir ../shared/data/mnist --batch-sizes 256,1024 --steps 10 --repeats 2 \
      --torch-loop-count 8 --real-count 256 --real-batch 64 --max-steps 100 \
      --out benchmarks/results/mnist-cpu.json

Measures, for each batch size:
  * latent-steps per second at a fixed number of steps (every latent takes
    `--steps` updates), float32 and bf16, with compile time apart;
  * FLOP/s achieved (XLA's cost analysis of one vmapped step) and its fraction
    of a matrix product's measured rate on the same device;
  * peak device memory where the backend reports it.
Then, on real latents (trained checkpoints when given, else random weights,
which the output says), the static and continuous schedules: counterfactuals
per second, useful-step fraction, and bf16's agreement with float32 on the
stop decision. PyTorch peers run in the same process when torch is installed
(`pip install -e ".[bench]"`); otherwise the output says they were skipped.
`--report --out RECORD` prints the tables of benchmarks/RESULTS.md from a
record, running nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cfajax  # noqa: E402
from cfajax import experimental  # noqa: E402
from cfajax.experimental import PLAIN_ASCENT  # noqa: E402
from cfajax.experimental import as_pure_callable  # noqa: E402

import timing  # noqa: E402

WORKLOADS = {
    # image shape, VAE widths, latent size, classifier outputs, head, classifier widths
    "mnist": ((28, 28, 1), (32, 64), 16, 10, "softmax", (32, 64)),
    "celeba": ((64, 64, 3), (32, 64, 128, 256), 128, 1, "sigmoid", (32, 64, 128, 256)),
}


def one_head(classifier, attribute):
  """A one-logit `Classifier` holding one sigmoid head of a multi-attribute checkpoint.

  The same function as `cfajax.select_output(classifier, attribute)`, but a
  plain `Classifier`, so that the PyTorch peers convert it like any other.
  """
  config = classifier.config
  if config.head != "sigmoid" or config.num_outputs == 1:
    return classifier
  column = list(config.output_names).index(attribute)
  single = cfajax.Classifier(dataclasses.replace(config, num_outputs=1,
                                                 output_names=(attribute,)),
                             rngs=nnx.Rngs(0))
  state = nnx.state(classifier, nnx.Param)
  weights = nnx.to_pure_dict(state)
  weights["logits"]["kernel"] = weights["logits"]["kernel"][:, column:column + 1]
  weights["logits"]["bias"] = weights["logits"]["bias"][column:column + 1]
  target = nnx.state(single, nnx.Param)
  nnx.replace_by_pure_dict(target, weights)
  nnx.update(single, target)
  return single


def build_workload(name, vae_path=None, classifier_path=None, seed=0, attribute="Male"):
  """The workload's VAE and classifier: restored checkpoints, or fresh random weights.

  A multi-attribute CelebA classifier is cut down to its `attribute` head.
  """
  shape, widths, latent, outputs, head, classifier_widths = WORKLOADS[name]
  if vae_path:
    vae = cfajax.load_model(vae_path)
  else:
    vae = cfajax.ConvVAE(cfajax.VAEConfig(shape, latent, widths), rngs=nnx.Rngs(seed))
  if classifier_path:
    classifier = one_head(cfajax.load_model(classifier_path), attribute)
  else:
    config = cfajax.ClassifierConfig(shape, outputs, head, classifier_widths)
    classifier = cfajax.Classifier(config, rngs=nnx.Rngs(seed + 1))
  return vae, classifier, bool(vae_path and classifier_path)


def real_latents(name, vae, classifier, data_dir, count, seed=0):
  """Encodes real test images (when data is there) and picks targets that flip each prediction."""
  rng = np.random.default_rng(seed)
  images = None
  if data_dir:
    if name == "mnist":
      images = cfajax.load_mnist(data_dir, "test").images
    else:
      images = cfajax.load_celeba(data_dir, "all", image_size=64).images
  if images is None:
    z = rng.normal(size=(count, vae.config.latent_dim)).astype(np.float32)
    source = "random latents"
  else:
    images = images[rng.permutation(len(images))[:count]]
    z = np.concatenate([np.asarray(vae.encode(images[i:i + 2048]))
                        for i in range(0, len(images), 2048)])
    source = f"{len(z)} encoded test images"
  logits = np.concatenate([np.asarray(classifier(vae.decode(z[i:i + 2048])))
                           for i in range(0, len(z), 2048)])
  if logits.shape[1] == 1:
    target = (logits[:, 0] < 0).astype(np.int32)
  else:
    target = ((np.argmax(logits, 1) + 1) % logits.shape[1]).astype(np.int32)
  return z, target, source


def step_flops(vae, classifier, batch, latent_dim, precision):
  """FLOPs of one vmapped check-and-step of `batch` latents, by XLA's cost analysis."""
  config = experimental.AttackConfig(optimizer=PLAIN_ASCENT, precision=precision)
  hyper = experimental.make_hyper(0.5, 0.1, 10, 0.0, np.float32)
  decode, classify = as_pure_callable(vae.decode), as_pure_callable(classifier)

  def one_step(decode, classify, z, target):
    decode = experimental.cast_model(decode, precision)
    classify = experimental.cast_model(classify, precision)
    states = jax.vmap(experimental.init_state, in_axes=(None, None, 0, 0))(config, hyper, z, target)
    return experimental.attack_step(decode, classify, config, hyper, states)

  z = jax.ShapeDtypeStruct((batch, latent_dim), jnp.float32)
  target = jax.ShapeDtypeStruct((batch,), jnp.int32)
  compiled = jax.jit(one_step).lower(decode, classify, z, target).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def peak_memory_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def fixed_step_rate(vae, classifier, z, target, batch, steps, precision, schedule="static",
                    repeats=3):
  """Times `batch` latents taking exactly `steps` updates each (an unreachable threshold).

  The first call is timed, so `compile_s` is its excess over the steady
  median. (The static schedule returns before its device work is done: an
  untimed call before it would leave its run to the first timed one.)
  """
  zb, tb = z[:batch], target[:batch]
  options = dict(threshold=1 - 1e-7, max_steps=steps, step_size=1e-3, precision=precision,
                 batch_size=batch, schedule=schedule)
  run = lambda: cfajax.counterfactual_attack(vae.decode, classifier, zb, tb, **options,
                                             optimizer="ascent")
  measured = timing.time_call(run, repeats=repeats, warmup=1)
  latent_steps = int(np.sum(measured["out"].steps))
  return {"latent_steps": latent_steps, "iterations": steps + 1,
          "compile_s": measured["first_s"] - measured["median_s"],
          "median_s": measured["median_s"], "spread": measured["spread"],
          "latent_steps_per_s": latent_steps / measured["median_s"]}


def schedules_on_real_latents(vae, classifier, z, target, batch, threshold, max_steps,
                              repeats=2):
  """Counterfactuals per second and useful-step fraction, static vs continuous, f32 vs bf16."""
  rows, results = [], {}
  for schedule in ("static", "continuous"):
    for precision in ("float32", "bfloat16"):
      options = dict(threshold=threshold, max_steps=max_steps, step_size=0.1, batch_size=batch,
                     schedule=schedule, precision=precision, return_stats=True)
      # The closure below is called within this iteration, so it sees this iteration's values.
      run = lambda: cfajax.counterfactual_attack(vae.decode, classifier, z, target, **options,  # noqa: B023
                                                 optimizer="ascent")
      measured = timing.time_call(run, repeats=repeats, warmup=1)
      result, stats = measured["out"]
      steps = np.asarray(result.steps)
      if schedule == "static":
        chunks = [steps[i:i + batch] for i in range(0, len(steps), batch)]
        iterations = sum(int(c.max()) + 1 for c in chunks)
        useful = float(steps.sum() / (batch * iterations))
      else:
        useful = stats["useful_step_fraction"]
      results[(schedule, precision)] = result
      rows.append({"schedule": schedule, "precision": precision, "n": len(z), "batch": batch,
                   "flip_rate": float(np.mean(result.success)),
                   "median_steps": float(np.median(steps)), "max_steps": int(steps.max()),
                   "useful_step_fraction": useful, "median_s": measured["median_s"],
                   "counterfactuals_per_s": len(z) / measured["median_s"],
                   "latent_steps_per_s": float(steps.sum()) / measured["median_s"]})
  full, half = results[("continuous", "float32")], results[("continuous", "bfloat16")]
  agreement = {
      "same_success": float(np.mean(np.asarray(full.success) == np.asarray(half.success))),
      "same_steps": float(np.mean(np.asarray(full.steps) == np.asarray(half.steps))),
      "steps_within_1": float(np.mean(
          np.abs(np.asarray(full.steps) - np.asarray(half.steps)) <= 1)),
  }
  return rows, agreement


def planted_linear_task(n, low=10, high=500, seed=0):
  """A linear classifier of a linear decoder whose log-odds rise by 1 per step.

  Latent i starts at log-odds -U(low, high), so with step size 1 it needs
  that many plain-ascent steps: a step distribution set by hand, to measure
  the schedulers alone (the model costs next to nothing).
  """
  rng = np.random.default_rng(seed)
  u = np.full(4, 0.5, np.float32)
  decode = lambda z: z.reshape(-1, 2, 2, 1)
  classify = lambda x: (x.reshape(x.shape[0], -1) @ u)[:, None]
  start = -rng.uniform(low, high, size=n).astype(np.float32)
  return decode, classify, np.repeat(start[:, None] / 2, 4, axis=1)


def schedules_on_planted_steps(n=4096, pools=(32, 256), low=10, high=500, repeats=2):
  """Useful-step fraction of both schedules when step counts spread over low..high."""
  decode, classify, z = planted_linear_task(n, low, high)
  rows = []
  for pool in pools:
    for schedule in ("static", "continuous"):
      options = dict(threshold=0.5, step_size=1.0, max_steps=high + 100, batch_size=pool,
                     schedule=schedule, return_stats=True)
      # The closure below is called within this iteration, so it sees this iteration's values.
      run = lambda: cfajax.counterfactual_attack(decode, classify, z, 1, **options,  # noqa: B023
                                                 optimizer="ascent")
      measured = timing.time_call(run, repeats=repeats, warmup=1)
      result, stats = measured["out"]
      steps = np.asarray(result.steps)
      if schedule == "static":
        iterations = sum(int(steps[i:i + pool].max()) + 1 for i in range(0, n, pool))
        useful = float(steps.sum() / (pool * iterations))
      else:
        useful = stats["useful_step_fraction"]
      rows.append({"schedule": schedule, "n": n, "pool": pool, "steps": f"{low}-{high}",
                   "min_steps": int(steps.min()), "max_steps": int(steps.max()),
                   "useful_step_fraction": useful, "median_s": measured["median_s"]})
  return rows


def peer_ratios(rows):
  """cfajax's latent-steps/s over the best PyTorch peer's, per (precision, batch).

  The best peer is the faster of torch-eager and torch-compile at the same
  batch and precision; the one-at-a-time Adam loop is compared separately.
  """
  rate = lambda row: row.get("latent_steps_per_s") or 0.0
  loops = {r["precision"]: rate(r) for r in rows if r["impl"] == "torch-loop-adam"}
  ratios = []
  for row in rows:
    if row["impl"] != "cfajax":
      continue
    peers = [r for r in rows if r["impl"] in ("torch-eager", "torch-compile")
             and r["precision"] == row["precision"] and r["batch"] == row["batch"] and rate(r)]
    if not peers:
      continue
    best = max(peers, key=rate)
    loop = loops.get(row["precision"])
    ratios.append({"precision": row["precision"], "batch": row["batch"],
                   "cfajax": rate(row), "best_torch": best["impl"],
                   "best_torch_rate": rate(best), "cfajax_over_best_torch": rate(row) / rate(best),
                   "cfajax_over_torch_loop": rate(row) / loop if loop else None})
  return ratios


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mnist")
  parser.add_argument("--vae")
  parser.add_argument("--classifier")
  parser.add_argument("--attribute", default="Male",
                      help="the head of a multi-attribute CelebA classifier to attack")
  parser.add_argument("--data-dir")
  parser.add_argument("--batch-sizes", default="256,1024,4096")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--real-count", type=int, default=4096)
  parser.add_argument("--real-batch", type=int, default=1024)
  parser.add_argument("--threshold", type=float, default=0.5)
  parser.add_argument("--max-steps", type=int, default=500)
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--torch-loop-count", type=int, default=32,
                      help="latents for the PyTorch one-at-a-time loop (it is slow)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs after the first, for the fixed-step rows; the median "
                           "is reported (the schedule rows take max(1, repeats - 1))")
  parser.add_argument("--out", default=None)
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    if not args.out:
      parser.error("--report reads the record named by --out")
    command = f"benchmarks/attack_throughput.py --report --out {args.out}"
    with open(args.out) as f:
      for name, table in report_tables(json.load(f)).items():
        print(f"<!-- report: {command}: {name} -->\n{table}\n<!-- /report -->\n")
    return

  device = timing.device_description()
  print(f"device: {device['device']} x{device['device_count']} ({device['backend']}), "
        f"jax {device['jax']}")
  vae, classifier, trained = build_workload(args.workload, args.vae, args.classifier,
                                             attribute=args.attribute)
  batches = [int(b) for b in args.batch_sizes.split(",")]
  z, target, source = real_latents(args.workload, vae, classifier, args.data_dir,
                                   max(max(batches), args.real_count))
  print(f"weights: {'trained checkpoints' if trained else 'random (untrained)'}; latents: {source}")
  peaks = {"float32": timing.matmul_peak(jnp.float32), "bfloat16": timing.matmul_peak(jnp.bfloat16)}
  print(f"measured matmul peak: f32 {peaks['float32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s")

  # The record is written after each part, so a run cut off by a time limit (a lent GPU's
  # command limit) keeps what it measured; "complete" says how far it got.
  record = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "device": device, "workload": args.workload, "trained_weights": trained,
            "latents": source, "matmul_peak_flops": peaks, "fixed_steps": args.steps,
            "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")}

  def save(complete: str, **parts) -> None:
    record.update(parts, complete=complete)
    if args.out:
      timing.write_results(args.out, record)

  rows = []
  for batch in batches:
    zb = np.resize(z, (batch, z.shape[1])).astype(np.float32)
    tb = np.resize(target, (batch,))
    for precision in ("float32", "bfloat16"):
      row = {"impl": "cfajax", "precision": precision, "batch": batch}
      row.update(fixed_step_rate(vae, classifier, zb, tb, batch, args.steps, precision,
                                 repeats=args.repeats))
      flops = step_flops(vae, classifier, batch, z.shape[1], precision)
      row["gflops_per_s"] = flops * row["iterations"] / row["median_s"] / 1e9
      row["fraction_of_matmul_peak"] = (flops * row["iterations"] / row["median_s"]
                                        / peaks[precision])
      row["peak_memory_bytes"] = peak_memory_bytes()
      rows.append(row)
      print(f"  cfajax {precision:8s} batch {batch:6d}: "
            f"{row['latent_steps_per_s']:.4g} latent-steps/s, compile {row['compile_s']:.2f} s")
      save("cfajax rows", throughput=rows)

  torch_rows, torch_note, torch_version, torch_setup = [], "skipped (--skip-torch)", None, None
  if not args.skip_torch:
    try:
      import torch_peers
    except ImportError as e:  # torch is an optional extra: pip install -e ".[bench]"
      torch_note = f"skipped: {e}"
    else:
      torch_version = torch_peers.torch.__version__
      torch_setup = torch_peers.setup_device(torch_peers.default_device())
      torch_rows = torch_peers.run_peers(vae, classifier, z, target, batches, args.steps,
                                         loop_count=args.torch_loop_count,
                                         repeats=args.repeats,
                                         loop_repeats=max(1, args.repeats - 1))
      torch_note = "measured"
  print(f"PyTorch peers: {torch_note}")
  rows.extend(torch_rows)
  ratios = peer_ratios(rows)
  save("peers", throughput=rows, torch=torch_note, torch_version=torch_version,
       torch_setup=torch_setup, peer_ratios=ratios)

  real_z, real_t = z[:args.real_count], target[:args.real_count]
  schedule_rows, agreement = schedules_on_real_latents(
      vae, classifier, real_z, real_t, args.real_batch, args.threshold, args.max_steps,
      repeats=max(1, args.repeats - 1))
  save("schedules", schedules=schedule_rows, bf16_agreement=agreement)

  planted_rows = schedules_on_planted_steps(repeats=max(1, args.repeats - 1))

  print("\nfixed-step throughput")
  timing.print_table(rows, ["impl", "precision", "batch", "latent_steps_per_s", "compile_s",
                            "spread", "gflops_per_s", "fraction_of_matmul_peak"])
  print("\nschedules on real latents")
  timing.print_table(schedule_rows, ["schedule", "precision", "n", "batch", "flip_rate",
                                     "median_steps", "max_steps", "useful_step_fraction",
                                     "counterfactuals_per_s"])
  print("\nschedules on planted step counts (a linear toy: the schedulers alone)")
  timing.print_table(planted_rows, ["schedule", "n", "pool", "steps", "min_steps", "max_steps",
                                    "useful_step_fraction", "median_s"])
  if ratios:
    print("\ncfajax over the best PyTorch peer (latent-steps/s, same precision and batch)")
    timing.print_table(ratios, ["precision", "batch", "cfajax", "best_torch", "best_torch_rate",
                                "cfajax_over_best_torch", "cfajax_over_torch_loop"])
  print(f"\nbf16 vs float32 (continuous): {agreement}")
  save("all", schedules_planted=planted_rows)
  if args.out:
    print(f"wrote {args.out}")


def _table(columns: list[str], rows: list[list[str]]) -> str:
  """A markdown table; a column whose name ends in ":" is right-aligned."""
  header = [c.rstrip(":") for c in columns]
  rules = ["---:" if c.endswith(":") else "---" for c in columns]
  return "\n".join(["| " + " | ".join(header) + " |", "| " + " | ".join(rules) + " |"]
                   + ["| " + " | ".join(row) + " |" for row in rows])


def report_tables(record: dict) -> dict[str, str]:
  """The tables of benchmarks/RESULTS.md ("CPU") from a record of this script."""
  loop_repeats = max(1, record["repeats"] - 1)
  rows = []
  for r in record["throughput"]:
    compiles = r["impl"] in ("cfajax", "torch-compile")
    # A single timed run has no spread to show.
    single = r["impl"] == "torch-loop-adam" and loop_repeats == 1
    spread = "(1 repeat)" if single else f"{100 * r['spread']:.1f}%"
    rows.append([r["impl"], r["precision"], str(r["batch"]), f"{r['latent_steps_per_s']:.0f}",
                 f"{r['compile_s']:.1f}" if compiles else "-", spread])
  tables = {"fixed steps": _table(
      ["impl", "precision", "batch:", "latent-steps/s:", "compile (s):", "spread:"], rows)}
  ratios = sorted(record["peer_ratios"], key=lambda r: (r["precision"] != "float32", r["batch"]))
  tables["peers"] = _table(
      ["precision", "batch:", "cfajax:", "best PyTorch", "cfajax / best PyTorch:",
       "cfajax / torch-loop-adam:"],
      [[r["precision"], str(r["batch"]), f"{r['cfajax']:.0f}",
        f"{r['best_torch']}, {r['best_torch_rate']:.0f}", f"{r['cfajax_over_best_torch']:.2f}",
        f"{r['cfajax_over_torch_loop']:.1f}"] for r in ratios])
  tables["schedules"] = _table(
      ["schedule", "precision", "flip rate:", "median steps:", "max steps:",
       "useful-step fraction:", "counterfactuals/s:"],
      [[r["schedule"], r["precision"], f"{r['flip_rate']:.3f}", f"{r['median_steps']:g}",
        str(r["max_steps"]), f"{r['useful_step_fraction']:.3f}",
        f"{r['counterfactuals_per_s']:.1f}"] for r in record["schedules"]])
  planted = {(r["pool"], r["schedule"]): r for r in record["schedules_planted"]}
  tables["planted"] = _table(
      ["pool:", "static useful-step fraction:", "continuous useful-step fraction:"],
      [[str(pool)] + [f"{planted[pool, s]['useful_step_fraction']:.3f}"
                      for s in ("static", "continuous")]
       for pool in dict.fromkeys(r["pool"] for r in record["schedules_planted"])])
  return tables


if __name__ == "__main__":
  main()
