"""Which stopping threshold gives counterfactuals an independent oracle believes?

Run from the repository root (after the MNIST `cfajax train` commands of
experiments/RESULTS.md, "Models", for the MNIST part):

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/thresholds.py \\
        --data-dir ../shared/data --runs runs/mnist

For the quick start's own setting (the embedded digits: `cfajax explain` with
no options) and for MNIST 4 vs 9 (the first `--limit` test digits predicted 4
or 9), it attacks every example toward the other class with the explain
defaults (logit objective, plain ascent, step 0.1, at most 500 steps) and
stops at each threshold in turn, then reports the flip rate, the steps, and
how often an oracle (another architecture and seed, trained on other
images) assigns the counterfactual to its target. The digits models are
trained here by the preset's recipe, as `cfajax explain` trains them.
Writes experiments/results/thresholds.json and prints the markdown table of
experiments/RESULTS.md; `--report` prints it from the record at --out,
running nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import cfajax
from cfajax import experimental
from cfajax import metrics

from common import apply
from common import hardware
from common import markdown_table
from common import percent
from common import print_report
from common import results_table
from common import write_json

OPTIONS = {"step_size": 0.1, "max_steps": 500, "objective": "logit"}


def digits_models(folder: Path):
  """The quick start's VAE and classifier (trained as `cfajax explain` trains them), the
  recipe's oracle, and the test split."""
  train, test = experimental.load_train_test("digits")
  models = {}
  for name, kind, oracle in (("vae", "vae", False), ("classifier", "classifier", False),
                             ("oracle", "classifier", True)):
    path = folder / name
    if not path.exists():
      model, history, info = experimental.train_model(kind, "digits", train, test, oracle=oracle,
                                                  seed=1 if oracle else 0, progress=False)
      cfajax.save_model(path, model, metrics={"history": history, **info})
    models[name] = cfajax.load_model(path)
  return models, test.images


def sweep(models, images, thresholds):
  """One row per threshold for the 4-vs-9 decision on `images`."""
  vae, classifier, oracle = models["vae"], models["classifier"], models["oracle"]
  predicted = np.asarray(apply(classifier, images)).argmax(-1)
  chosen = np.isin(predicted, (4, 9))
  x = images[chosen]
  target = np.where(predicted[chosen] == 4, 9, 4)
  z = np.asarray(apply(vae.encode, x))
  rows = []
  for threshold in thresholds:
    result = cfajax.counterfactual_attack(vae.decode, classifier, z, target,
                                          threshold=threshold, **OPTIONS, optimizer="ascent")
    success = np.asarray(result.success)
    cf = np.asarray(apply(vae.decode, np.asarray(result.z)))
    steps = np.asarray(result.steps)[success]
    rows.append({
        "threshold": threshold, "n": int(len(x)), "flip rate": float(success.mean()),
        "median steps": float(np.median(steps)) if steps.size else None,
        "p90 steps": float(np.percentile(steps, 90)) if steps.size else None,
        "oracle agreement": metrics.oracle_agreement(oracle, cf, target,
                                                     success=success)["agreement"],
        "median pixel L2 from G(z)": float(np.median(np.sqrt(np.sum(
            (cf - np.asarray(apply(vae.decode, z))) ** 2, axis=(1, 2, 3)))[success]))})
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="", help="MNIST's folder (empty: digits only)")
  parser.add_argument("--runs", default="runs/mnist", help="the MNIST vae, classifier, oracle")
  parser.add_argument("--digits-models", default="runs/thresholds/digits")
  parser.add_argument("--limit", type=int, default=2000, help="MNIST test digits considered")
  parser.add_argument("--thresholds", default="0.5,0.7,0.8,0.9,0.95")
  parser.add_argument("--out", default="experiments/results/thresholds.json")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    print_report("experiments/thresholds.py --report",
                 report_tables(json.loads(Path(args.out).read_text())))
    return
  thresholds = [float(t) for t in args.thresholds.split(",")]

  record = {"hardware": hardware(), "options": OPTIONS, "decisions": {}}
  models, images = digits_models(Path(args.digits_models))
  record["decisions"]["digits 4 vs 9 (quick start)"] = sweep(models, images, thresholds)
  if args.data_dir:
    models = {n: cfajax.load_model(Path(args.runs) / n) for n in ("vae", "classifier", "oracle")}
    test = cfajax.load_mnist(args.data_dir, "test")
    record["decisions"]["MNIST 4 vs 9"] = sweep(models, test.images[:args.limit], thresholds)
  write_json(args.out, record)
  rows = [{"decision": name, **row} for name, rows in record["decisions"].items()
          for row in rows]
  print(markdown_table(rows, list(rows[0])))
  print_report("experiments/thresholds.py --report", report_tables(record))


def report_tables(record: dict) -> dict:
  """The table of experiments/RESULTS.md, "Stopping threshold", from a record of this script."""
  short = {"digits 4 vs 9 (quick start)": "digits", "MNIST 4 vs 9": "MNIST"}
  rows = [[short.get(name, name), f"{row['threshold']:g}", str(row["n"]),
           percent(row["flip rate"]), f"{row['median steps']:g} ({row['p90 steps']:g})",
           percent(row["oracle agreement"]), f"{row['median pixel L2 from G(z)']:.2f}"]
          for name, rows in record["decisions"].items() for row in rows]
  return {"thresholds": results_table(
      ["data", "threshold:", "n:", "flip rate:", "median steps (p90)", "oracle agreement:",
       "pixel L2 from G(z):"], rows)}


if __name__ == "__main__":
  main()
