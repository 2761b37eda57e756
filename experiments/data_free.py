"""Counterfactuals without a generator: DISC's components, one at a time, against the attacks.

Run (after the `cfajax train` commands in experiments/RESULTS.md, "Models"):

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/data_free.py \\
        --data-dir ../shared/data --runs runs/mnist

Reads <runs>/classifier (explained), <runs>/oracle (an independent judge),
<runs>/vae (the latent attack, and the encoder that measures attributions)
and <runs>/duq (DISC's manifold-consistency model; trained here, 3 epochs,
when absent). On MNIST test digits of each of the seven digit pairs of
experiments/mnist.py (correctly classified sources, `--per-pair` each), it
runs, at thresholds 0.5 and 0.9:

- the pixel attack (plain ascent, step 0.01: the adversarial baseline);
- plain deep inversion: pixels with total-variation, l2 and proximity priors;
- plain deep inversion plus each DISC component alone: the implicit (INR)
  prior, the manifold-consistency term (DUQ), progressive optimisation;
- full DISC (all three);
- cfajax's latent attack through the VAE.

Each is measured by flip rate, median steps, oracle agreement, proximity to
the query (pixel L1 and L2), realism (the Fréchet distance, in the oracle's
penultimate features, to as many real training digits of the target
classes) and counterfactuals per second (wall time of the attack call on
this machine, compilation included, as a user meets it). For 4→9 the
global attributions psi of full DISC are measured by encoding x and x' with
the VAE's encoder (the VAE is used for measurement only) and compared with
the latent attack's. The defaults of `data_free_attack` were chosen by
`--tune` on training digits (4→9, disjoint from the test digits): the
setting of highest oracle agreement among those flipping >= 95%.

Writes experiments/results/data_free_mnist.json, prints the markdown tables of
experiments/RESULTS.md, and draws experiments/figures/data_free_mnist.png.
Takes about 15 minutes on 2 CPU cores (`--tune`, run first: about 5).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

import cfajax
from cfajax import metrics
from cfajax._attribute_tables import descriptor_tables

from common import Stopwatch
from common import _pyplot
from common import _show
from common import apply
from common import hardware
from common import markdown_table
from common import save_figure
from common import write_json

PAIRS = ((4, 9), (8, 9), (1, 7), (9, 7), (5, 6), (0, 8), (3, 2))
PIXEL = {"step_size": 0.01, "max_steps": 500}
LATENT = {"step_size": 0.1, "max_steps": 500}
PLAIN = {"prior": "pixels", "progressive": False, "l2_weight": 0.05}
VARIANTS = {
    "plain deep inversion": {**PLAIN},
    "+ implicit prior": {**PLAIN, "prior": "implicit"},
    "+ manifold (DUQ)": {**PLAIN, "manifold": True},
    "+ progressive": {**PLAIN, "progressive": True},
    "DISC (all three)": {**PLAIN, "prior": "implicit", "progressive": True, "manifold": True},
}


def data_free(classifier, duq, x, target, threshold, options):
  options = dict(options)
  manifold = duq if options.pop("manifold", False) else None
  return cfajax.data_free_attack(classifier, x, target, threshold=threshold, max_steps=500,
                                 manifold=manifold, **options)


def measure(name, images, cf, result, target, seconds, oracle, features, reference, duq):
  success = np.asarray(result.status) == cfajax.Status.REACHED
  delta = (cf - images).reshape(len(images), -1)[success]
  certainty = np.exp(np.asarray(apply(duq.log_certainty, cf)))[np.arange(len(cf)), target]
  return {
      "variant": name, "n": int(len(images)), "flip_rate": float(success.mean()),
      "median_steps": float(np.median(np.asarray(result.steps)[success])) if success.any() else None,
      "oracle_agreement": metrics.oracle_agreement(oracle, cf, target, success=success)["agreement"],
      "median_l1": float(np.median(np.abs(delta).mean(1))) if success.any() else None,
      "median_l2": float(np.median(np.linalg.norm(delta, axis=1))) if success.any() else None,
      "frechet": metrics.frechet_distance(features, cf, reference, success=success)["distance"],
      "duq_target_certainty": float(np.median(certainty[success])) if success.any() else None,
      "per_second": float(len(images) / seconds), "seconds": round(seconds, 2)}


def tune(classifier, oracle, duq, train):
  """Full DISC's weights on 60 training 4s attacked toward 9 (disjoint from the test digits)."""
  x = train.images[np.flatnonzero(train.labels == 4)[-60:]]
  target = np.full(len(x), 9)
  rows = []
  grid = itertools.product((0.05,), (1.0, 3.0, 10.0, 30.0, 100.0), (0.003, 0.03, 0.3),
                           (3e-4, 1e-3))
  for tv, proximity, manifold, lr in grid:
    options = {**VARIANTS["DISC (all three)"], "tv_weight": tv, "proximity_weight": proximity,
               "manifold_weight": manifold, "step_size": lr}
    result = data_free(classifier, duq, x, target, 0.9, options)
    success = np.asarray(result.success)
    cf = np.asarray(result.images)
    rows.append({"tv_weight": tv, "proximity_weight": proximity, "manifold_weight": manifold,
                 "step_size": lr, "flip_rate": float(success.mean()),
                 "oracle_agreement": metrics.oracle_agreement(
                     oracle, cf, target, success=success)["agreement"],
                 "median_l1": float(np.median(np.abs(cf - x).mean((1, 2, 3))))})
    print(rows[-1], flush=True)
  eligible = [r for r in rows if r["flip_rate"] >= 0.95]
  best = max(eligible, key=lambda r: (r["oracle_agreement"], -r["median_l1"]))
  return {"grid": rows, "chosen": best}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--runs", default="runs/mnist")
  parser.add_argument("--per-pair", type=int, default=40)
  parser.add_argument("--tune", action="store_true",
                      help="run only the weight search (writes data_free_tuning.json)")
  parser.add_argument("--out", default="experiments/results/data_free_mnist.json")
  args = parser.parse_args()
  clock = Stopwatch()
  runs = Path(args.runs)
  classifier, oracle, vae = (cfajax.load_model(runs / n) for n in ("classifier", "oracle", "vae"))
  train = cfajax.load_mnist(args.data_dir, "train")
  test = cfajax.load_mnist(args.data_dir, "test")
  record = {"hardware": hardware(), "per_pair": args.per_pair}
  if (runs / "duq").exists():
    duq = cfajax.load_model(runs / "duq")
  else:
    duq = cfajax.DUQ(cfajax.DUQConfig(image_shape=(28, 28, 1)), rngs=__import__("flax").nnx.Rngs(0))
    duq, history = cfajax.train_duq(duq, train, test, epochs=3)
    cfajax.save_model(runs / "duq", duq, metrics=history[-1])
  record["duq"] = cfajax.evaluate_duq(duq, test)
  clock.lap("models")
  if args.tune:
    record["tuning"] = tune(classifier, oracle, duq, train)
    record["stages_s"] = clock.stages | {"tune": clock.lap("tune")}
    write_json(Path(args.out).with_name("data_free_tuning.json"), record)
    print(markdown_table(record["tuning"]["grid"], list(record["tuning"]["grid"][0])))
    print("chosen:", record["tuning"]["chosen"])
    return

  predicted = np.asarray(apply(classifier, test.images)).argmax(-1)
  chosen = [np.flatnonzero((test.labels == a) & (predicted == a))[:args.per_pair] for a, _ in PAIRS]
  idx = np.concatenate(chosen)
  x = test.images[idx]
  target = np.concatenate([np.full(len(c), b) for c, (_, b) in zip(chosen, PAIRS)])
  source = test.labels[idx]
  rng = np.random.default_rng(0)
  reference = np.stack([train.images[rng.choice(np.flatnonzero(train.labels == t))]
                        for t in target])
  features = oracle.features
  z = np.asarray(apply(vae.encode, x))
  record["queries"] = int(len(x))
  rows, images, reached = [], {}, {}
  for threshold in (0.5, 0.9):
    start = time.perf_counter()
    pixel = metrics.pixel_attack(classifier, x, target, threshold=threshold, **PIXEL)
    seconds = time.perf_counter() - start
    cf = metrics.pixel_counterfactuals(pixel, x.shape[1:])
    rows.append({"threshold": threshold, **measure("pixel attack", x, cf, pixel, target, seconds,
                                                   oracle, features, reference, duq)})
    images[("pixel attack", threshold)] = cf
    reached[("pixel attack", threshold)] = np.asarray(pixel.success)
    for name, options in VARIANTS.items():
      start = time.perf_counter()
      result = data_free(classifier, duq, x, target, threshold, options)
      cf = np.asarray(result.images)
      seconds = time.perf_counter() - start
      rows.append({"threshold": threshold, **measure(name, x, cf, result, target, seconds,
                                                     oracle, features, reference, duq)})
      images[(name, threshold)] = cf
      reached[(name, threshold)] = np.asarray(result.success)
      print(rows[-1], flush=True)
    start = time.perf_counter()
    latent = cfajax.counterfactual_attack(vae.decode, classifier, z, target, threshold=threshold,
                                          **LATENT)
    cf = np.asarray(apply(vae.decode, np.asarray(latent.z)))
    seconds = time.perf_counter() - start
    rows.append({"threshold": threshold, **measure("latent attack (VAE)", x, cf, latent, target,
                                                   seconds, oracle, features, reference, duq)})
    images[("latent attack (VAE)", threshold)] = cf
    reached[("latent attack (VAE)", threshold)] = np.asarray(latent.success)
  record["ablation"] = rows
  record["duq_target_certainty_of_queries"] = float(np.median(np.exp(np.asarray(
      apply(duq.log_certainty, x)))[np.arange(len(x)), target]))
  record["real_frechet_floor"] = metrics.frechet_distance(
      features, test.images[np.flatnonzero(np.isin(test.labels, target))[:len(x)]],
      reference)["distance"]
  clock.lap("ablation")

  # Per pair at 0.9: the share of all queries whose counterfactual the oracle calls the
  # target (a failed attack counts against its variant).
  record["pairs"] = []
  for (a, b) in PAIRS:
    rows_ab = source == a
    for name in ("plain deep inversion", "DISC (all three)", "latent attack (VAE)"):
      cf = images[(name, 0.9)][rows_ab]
      believed = metrics.oracle_agreement(oracle, cf, target[rows_ab],
                                          success=reached[(name, 0.9)][rows_ab])
      record["pairs"].append({"pair": f"{a}→{b}", "variant": name,
                              "flip_rate": float(reached[(name, 0.9)][rows_ab].mean()),
                              "oracle_agreement": believed["agreement"],
                              "confirmed": float(np.mean(reached[(name, 0.9)][rows_ab]
                                                         & believed["per_example"]))})

  # Global attributions for 4→9: phi through the VAE's encoder, for measurement only.
  aux = cfajax.split_dataset(train, 5000, seed=0)[1]
  (table,), _ = descriptor_tables(aux)
  probes = cfajax.fit_probes(np.asarray(apply(vae.encode, aux.images)), table.values,
                             names=table.names)
  four = source == 4
  prob = np.asarray(apply(classifier.probabilities, x[four]))[:, 9]
  record["attributions_4_to_9"] = {}
  for name in ("DISC (all three)", "plain deep inversion", "latent attack (VAE)"):
    cf = images[(name, 0.9)][four]
    z_cf = np.asarray(apply(vae.encode, cf))
    phi = np.asarray(cfajax.local_attributions(probes, z[four], z_cf))
    psi = cfajax.global_attributions(phi, prob, success=reached[(name, 0.9)][four],
                                     names=table.names, num_bootstrap=1000)
    record["attributions_4_to_9"][name] = psi.to_dict()
  clock.lap("attributions")
  record["stages_s"] = clock.stages
  write_json(args.out, record)
  draw(x, images, reached, source, target)
  report(record)


def draw(x, images, reached, source, target):
  """One query per pair and its counterfactuals at 0.9; a failed attack's last image is
  framed in red and marked "failed"."""
  plt = _pyplot()
  picks = [int(np.flatnonzero(source == a)[0]) for a, _ in PAIRS]
  columns = ["query", "pixel attack", "plain deep inversion", "DISC (all three)",
             "latent attack (VAE)"]
  fig, axes = plt.subplots(len(picks), len(columns), figsize=(1.3 * len(columns),
                                                                1.3 * len(picks) + 0.4))
  for i, k in enumerate(picks):
    for j, name in enumerate(columns):
      _show(axes[i, j], x[k] if name == "query" else images[(name, 0.9)][k])
      if name != "query" and not reached[(name, 0.9)][k]:
        for spine in axes[i, j].spines.values():
          spine.set_color("red")
          spine.set_linewidth(2)
        axes[i, j].set_xlabel("failed", fontsize=6, color="red")
      if i == 0:
        axes[i, j].set_title(name, fontsize=6)
    axes[i, 0].set_ylabel(f"{source[k]}→{target[k]}", fontsize=7)
  fig.suptitle("MNIST counterfactuals at threshold 0.9", fontsize=8)
  fig.tight_layout()
  save_figure(fig, "data_free_mnist.png")


def report(record):
  columns = ["threshold", "variant", "flip_rate", "median_steps", "oracle_agreement",
             "median_l1", "median_l2", "frechet", "duq_target_certainty", "per_second"]
  print(markdown_table(record["ablation"], columns))
  print(f"\nreal digits' Fréchet floor: {record['real_frechet_floor']:.1f}; DUQ's certainty "
        f"of the target at the queries: {record['duq_target_certainty_of_queries']:.3f}")
  print(markdown_table(record["pairs"], ["pair", "variant", "flip_rate", "oracle_agreement",
                                         "confirmed"]))
  for name, psi in record["attributions_4_to_9"].items():
    top = [(a, round(psi["attributes"][a]["psi"], 3),
            [round(v, 3) for v in psi["attributes"][a]["ci"]]) for a in psi["ranking"]]
    print(f"{name} (n = {psi['num_used']}):", top)
  print(record["stages_s"])


if __name__ == "__main__":
  main()
