"""MNIST: the paper's Figure 1, counterfactual quality, ablations and a global 4-vs-9 explanation.

Run (after the `cfajax train` commands in experiments/RESULTS.md, "Models"):

    PYTHONPATH=. python experiments/mnist.py --data-dir ../shared/data --runs runs/mnist

Reads <runs>/vae, <runs>/classifier and <runs>/oracle and the official test
split, and:

1. fixes every misclassified test digit (target = its true label);
2. edits every correctly classified test digit of each pair's source class
   (4→9, 8→9, 1→7, 9→7, 5→6, 0→8, 3→2) in latent space and, as the
   adversarial baseline, in pixel space, at the same classifier threshold;
3. ablates the objective (logit, prob) and the optimizer (plain ascent, Adam)
   on 4→9;
4. explains 4 vs 9 over the test split with the morphometric descriptors
   (`cfajax.explain`).

Writes experiments/results/mnist.json, prints the markdown tables of
experiments/RESULTS.md, and draws experiments/figures/mnist_*.png. About
15 minutes on 2 CPU cores; `--limit N` caps the digits per pair for a quick run.
`--report` prints the tables of the record at --out, running nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax

import cfajax
from cfajax import metrics

from common import FIGURES
from common import Stopwatch
from common import apply
from common import compact
from common import hardware
from common import latent_and_pixel
from common import load_runs
from common import markdown_table
from common import percent
from common import print_report
from common import progression
from common import progression_grid
from common import results_table
from common import signed
from common import write_json

PAIRS = ((4, 9), (8, 9), (1, 7), (9, 7), (5, 6), (0, 8), (3, 2))
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
LATENT = {"threshold": 0.5, "step_size": 0.1, "max_steps": 500, "objective": "logit"}
PIXEL = {"threshold": 0.5, "step_size": 0.01, "max_steps": 500, "objective": "logit"}
THRESHOLDS = (0.5, 0.9)


def subset(result, select):
  """The rows `select` of an `AttackResult` (every field has the examples first)."""
  return jax.tree_util.tree_map(lambda a: a[select], result)


def pixel_vs_latent_grid(path, originals, latent_cf, pixel_cf, labels):
  """Columns: x, the latent counterfactual, the pixel counterfactual, and both changes."""
  frames = np.stack([latent_cf, pixel_cf], axis=1)
  progression_grid(path, originals, frames, labels, ["latent x'", "pixel x'"], diff=False,
                   title="latent vs pixel space\n(same classifier, p ≥ 0.5)")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--runs", default="runs/mnist")
  parser.add_argument("--out", default="experiments/results/mnist.json")
  parser.add_argument("--explain-out", default="runs/experiments/mnist-4v9")
  parser.add_argument("--limit", type=int, default=0, help="digits per pair (0: all)")
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    record = json.loads(Path(args.out).read_text())
    print_report("experiments/mnist.py --report", report_tables(record))
    return

  clock = Stopwatch()
  runs = Path(args.runs)
  vae, classifier, oracle = load_runs(runs)
  test = cfajax.load_mnist(args.data_dir, "test")
  x, y = test.images, test.labels
  z = np.asarray(apply(vae.encode, x))
  predicted = np.asarray(apply(classifier, x)).argmax(-1)
  real = x[np.random.default_rng(0).choice(len(x), 2000, replace=False)]
  record = {"hardware": hardware(), "latent_options": LATENT, "pixel_options": PIXEL,
            "classifier_test_accuracy": float((predicted == y).mean())}
  clock.lap("load_and_encode")

  # 1. Fix misclassified digits: the target is the true label.
  wrong = np.nonzero(predicted != y)[0]
  (fixed, fixed_cf, fixed_report), (pix, pix_cf, pix_report) = latent_and_pixel(
      vae, classifier, oracle, x[wrong], z[wrong], y[wrong], latent_options=LATENT,
      pixel_options=PIXEL, real_images=real)
  record["misclassified"] = {"latent": fixed_report, "pixel": pix_report}
  # Misclassified digits are often ambiguous: how often the oracle already
  # calls the unchanged digit by its true label.
  record["misclassified"]["oracle_on_originals"] = metrics.oracle_agreement(
      oracle, x[wrong], y[wrong])["agreement"]
  show = wrong[:10]
  frames = progression(vae.decode, classifier, z[show], y[show], FRACTIONS,
                       np.asarray(fixed.steps)[:10], **LATENT)
  progression_grid(FIGURES / "mnist_misclassified.png", x[show], frames,
                   [f"{p}→{t}" for p, t in zip(predicted[show], y[show], strict=True)],
                   [f"{int(f * 100)}%" for f in FRACTIONS],
                   title="fixing misclassified test digits (predicted→true)")
  clock.lap("misclassified")

  # 2. Digit-to-digit edits, latent and pixel space, all pairs in one attack
  #    per threshold; the reports are then taken per pair and pooled.
  sources = {}
  for a, b in PAIRS:
    idx = np.nonzero((y == a) & (predicted == a))[0]
    sources[(a, b)] = idx[:args.limit] if args.limit else idx
  idx = np.concatenate(list(sources.values()))
  target = np.concatenate([np.full(len(v), b) for (a, b), v in sources.items()])
  pair_of = np.concatenate([np.full(len(v), i) for i, v in enumerate(sources.values())])
  rows, pooled = [], []
  record["pairs"] = {}
  for threshold in THRESHOLDS:
    (latent, cf, _), (pixel, pixel_cf, _) = latent_and_pixel(
        vae, classifier, oracle, x[idx], z[idx], target,
        latent_options={**LATENT, "threshold": threshold},
        pixel_options={**PIXEL, "threshold": threshold}, real_images=real, report=False)
    starts = cfajax.reconstruct(vae, x[idx])
    for i, (a, b) in enumerate(list(sources) + [(None, None)]):
      sel = pair_of == i if a is not None else np.ones(len(idx), bool)
      name = f"{a}→{b}" if a is not None else "all pairs"
      reports = {
          "latent": metrics.counterfactual_report(
              subset(latent, sel), counterfactuals=cf[sel], starts=starts[sel],
              images=x[idx[sel]], z=z[idx[sel]], oracle=oracle, generator=vae,
              real_images=real),
          "pixel": metrics.counterfactual_report(
              subset(pixel, sel), counterfactuals=pixel_cf[sel], starts=x[idx[sel]],
              images=x[idx[sel]], oracle=oracle, generator=vae, real_images=real)}
      record["pairs"][f"{name} @ {threshold}"] = reports
      for attack, report in reports.items():
        row = {"pair": name, "threshold": threshold, "attack": attack, **compact(report)}
        (pooled if a is None else rows).append(row)
    if threshold == LATENT["threshold"]:
      paths, side_by_side = [], []
      for i in range(len(sources)):
        ok = np.nonzero((pair_of == i) & np.asarray(latent.success)
                        & np.asarray(pixel.success))[0]
        paths.extend(ok[:2])
        side_by_side.extend(ok[:1])
      paths, side_by_side = np.asarray(paths), np.asarray(side_by_side)
      pixel_vs_latent_grid(FIGURES / "mnist_latent_vs_pixel.png", x[idx[side_by_side]],
                           cf[side_by_side], pixel_cf[side_by_side],
                           [f"{y[idx[k]]}→{target[k]}" for k in side_by_side])
      frames = progression(vae.decode, classifier, z[idx[paths]], target[paths], FRACTIONS,
                           np.asarray(latent.steps)[paths], **LATENT)
      progression_grid(FIGURES / "mnist_pairs.png", x[idx[paths]], frames,
                       [f"{y[idx[k]]}→{target[k]}" for k in paths],
                       [f"{int(f * 100)}%" for f in FRACTIONS],
                       title="digit-to-digit counterfactuals along the attack's path")
  clock.lap("pairs")

  # 3. Ablations on 4→9: objective x optimizer.
  idx = np.nonzero((y == 4) & (predicted == 4))[0]
  if args.limit:
    idx = idx[:args.limit]
  starts = cfajax.reconstruct(vae, x[idx])
  ablations = []
  for objective in ("logit", "prob"):
    for name, optimizer in (("ascent", None), ("adam", optax.adam(0.05))):
      options = {**LATENT, "objective": objective}
      if optimizer is not None:
        options["optimizer"] = optimizer
        del options["step_size"]
      result = cfajax.counterfactual_attack(vae.decode, classifier, z[idx], 9, **options,
                                            optimizer="ascent")
      cf = np.asarray(apply(vae.decode, np.asarray(result.z)))
      report = metrics.counterfactual_report(
          result, counterfactuals=cf, starts=starts, images=x[idx], z=z[idx], oracle=oracle,
          generator=vae, real_images=real)
      ablations.append({"objective": objective, "optimizer": name, **compact(report),
                        "statuses": report["validity"]["status"]})
  record["ablations_4_to_9"] = ablations
  clock.lap("ablations")

  # 4. A global explanation of 4 vs 9 over the test split.
  summary = cfajax.explain(dataset="mnist", data_dir=args.data_dir, out=args.explain_out,
                           generator=str(runs / "vae"), classifier=str(runs / "classifier"),
                           classes=(4, 9), explain_split="test",
                           attack=cfajax.attacks.LatentAttack(**{
                               k: LATENT[k] for k in ("step_size", "max_steps", "objective")}))
  for name in ("counterfactuals.png", "global_attributions.png"):
    shutil.copy(Path(args.explain_out) / name, FIGURES / f"mnist_4v9_{name}")
  record["global_4_vs_9"] = {k: summary[k] for k in (
      "task", "num_examples", "flip_rate", "steps", "global_attributions", "probes",
      "reconstruction_agreement", "timings_s")}
  clock.lap("global_4_vs_9")
  record["wall_seconds"] = clock.stages
  write_json(args.out, record)

  columns = ["pair", "threshold", "attack", "n", "flip_rate", "median_steps", "oracle_agreement",
             "realism_ratio", "realism_outliers", "median_latent_l2", "median_pixel_l2",
             "median_pixel_l2_to_original"]
  fix_rows = [{"attack": k, **compact(record["misclassified"][k])} for k in ("latent", "pixel")]
  print("## Fixing misclassified digits\n")
  print(markdown_table(fix_rows, columns[2:]))
  print("\noracle agrees with the true label on the unchanged digits:",
        record["misclassified"]["oracle_on_originals"])
  print("\n## Digit pairs\n")
  print(markdown_table(pooled, columns))
  print()
  print(markdown_table(rows, columns))
  print("\n## Ablations on 4→9\n")
  print(markdown_table(ablations, ["objective", "optimizer", "n", "flip_rate", "median_steps",
                                   "oracle_agreement", "realism_ratio", "median_latent_l2",
                                   "median_pixel_l2"]))
  psi = summary["global_attributions"]["attributes"]
  print("\n## Global 4 vs 9\n")
  print(markdown_table(
      [{"attribute": n, "psi": psi[n]["psi"], "ci_low": psi[n]["ci"][0],
        "ci_high": psi[n]["ci"][1]} for n in summary["global_attributions"]["ranking"]],
      ["attribute", "psi", "ci_low", "ci_high"]))
  print("\nwall seconds:", clock.stages)
  print_report("experiments/mnist.py --report", report_tables(record))


def _steps(value) -> str:
  return f"{value:g}"


def _quality_cells(row: dict, latent_l2=True) -> list[str]:
  cells = [percent(row["flip_rate"]), _steps(row["median_steps"]),
           percent(row["oracle_agreement"]), f"{row['realism_ratio']:.3g}"]
  if "realism_outliers" in row:
    cells.append(percent(row["realism_outliers"]))
  if latent_l2:
    cells.append(f"{row['median_latent_l2']:.2f}" if "median_latent_l2" in row else "—")
  return cells + [f"{row['median_pixel_l2']:.2f}"]


def report_tables(record: dict) -> dict:
  """The tables of experiments/RESULTS.md, "MNIST", from a record of this script."""
  tables = {}
  rows = []
  for attack in ("latent", "pixel"):
    row = compact(record["misclassified"][attack])
    rows.append([attack, str(row["n"]), *_quality_cells(row),
                 f"{row['median_pixel_l2_to_original']:.2f}"])
  tables["misclassified"] = results_table(
      ["attack", "n:", "flip rate:", "median steps:", "oracle agreement:", "realism ratio:",
       "realism outliers:", "median latent L2:", "median pixel L2:", "to original:"], rows)
  rows = []
  for threshold in THRESHOLDS:
    for attack in ("latent", "pixel"):
      row = compact(record["pairs"][f"all pairs @ {threshold}"][attack])
      rows.append([f"{threshold:g}", attack, str(row["n"]), *_quality_cells(row)])
  tables["pairs pooled"] = results_table(
      ["threshold:", "attack", "n:", "flip rate:", "median steps:", "oracle agreement:",
       "realism ratio:", "realism outliers:", "median latent L2:", "median pixel L2:"], rows)
  rows = []
  for a, b in PAIRS:
    runs = {t: {k: compact(v) for k, v in record["pairs"][f"{a}→{b} @ {t}"].items()}
            for t in THRESHOLDS}
    rows.append([f"{a}→{b}", str(runs[0.5]["latent"]["n"]),
                 *(percent(runs[t][k]["oracle_agreement"], 2 if k == "pixel" else 1)
                   for t in THRESHOLDS for k in ("latent", "pixel")),
                 _steps(runs[0.9]["latent"]["median_steps"])])
  tables["pairs"] = results_table(
      ["pair", "n:", "latent @ 0.5:", "pixel @ 0.5:", "latent @ 0.9:", "pixel @ 0.9:",
       "latent median steps @ 0.9:"], rows)
  optimizers = {"ascent": f"plain ascent, η = {LATENT['step_size']:g}", "adam": "Adam, lr 0.05"}
  tables["ablations"] = results_table(
      ["objective", "optimizer", "flip rate:", "median steps:", "oracle agreement:",
       "realism ratio:", "median latent L2:", "median pixel L2:"],
      [[row["objective"], optimizers[row["optimizer"]],
        *_quality_cells({k: v for k, v in row.items() if k != "realism_outliers"})]
       for row in record["ablations_4_to_9"]])
  explanation = record["global_4_vs_9"]
  psi = explanation["global_attributions"]
  tables["global 4 vs 9"] = results_table(
      ["rank:", "attribute", "ψ:", "95% bootstrap interval", "probe AUC (held out):"],
      [[str(rank), name, signed(psi["attributes"][name]["psi"]),
        "[{}, {}]".format(*(signed(v) for v in psi["attributes"][name]["ci"])),
        f"{explanation['probes'][name]['val_auc']:.2f}"]
       for rank, name in enumerate(psi["ranking"], start=1)])
  return tables


if __name__ == "__main__":
  main()
