"""Does the default step rule reach the target whatever the classifier's scale?

Run from the repository root:

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/step_rules.py \\
        [--data-dir ../shared/data/mnist --limit 600]

For the embedded digits (and MNIST with `--data-dir`), it trains a VAE, an
oracle (another architecture and seed, other images) and classifiers for a
few epochs and the recipe's full length (digits: 6, 12 and 40 epochs, 6
being the briefly trained model that reached no target before; MNIST: 1, 3
and 5), then attacks the examples each
classifier calls a 4 or a 9 toward the other class at threshold 0.9 with
each step rule: the trust region (the default), plain ascent (the paper's
update, step 0.1) and Adam (learning rate 0.05, `cfajax explain`'s), on the
classifier as it is and with its logits multiplied by 0.05 and by 20. It
reports the share that reached the target, the median steps, the oracle's
agreement with the counterfactuals that did, the median latent distance
travelled, and how many of the real images the classifier calls the target
reach the threshold themselves (where none do, the decoder's images rarely
can: its range bounds the logits). Digits: every image predicted 4 or 9 (both splits; 5 minutes on 2
CPU cores, models included); MNIST: the first `--limit` test digits predicted
4 or 9 (with `--limit 600`, about 40 minutes on 2 shared cores after about an
hour of training, most of it the 500 steps of every rule on the flat
classifier). Writes experiments/results/step_rules.json;
`--report` prints its table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

import cfajax
from cfajax import experimental
from cfajax import metrics
from cfajax.experimental import as_pure_callable

from common import apply
from common import hardware
from common import percent
from common import print_report
from common import results_table
from common import write_json

RULES = {"trust region (default)": dict(optimizer="trust-region", step_size=0.1),
         "plain ascent": dict(optimizer="ascent", step_size=0.1),
         "Adam": dict(optimizer="adam", step_size=0.05)}
SCALES = (0.05, 1.0, 20.0)
THRESHOLD = 0.9
MAX_STEPS = 500


def _scaled(classify, scale, images):
  return scale * classify(images)


def scaled(classifier, scale: float):
  """The classifier with its logits multiplied by `scale`, as a pytree callable."""
  return jax.tree_util.Partial(_scaled, as_pure_callable(classifier), scale)


EPOCHS = {"digits": (6, 12, 40), "mnist": (1, 3, 5)}


def models(dataset: str, folder: Path, train, test):
  """VAE, oracle and classifiers trained for `EPOCHS[dataset]` (saved in `folder`)."""
  out = {}
  plan = [("vae", "vae", False, None), ("oracle", "classifier", True, None)]
  plan += [(f"classifier {e} epoch{'s' if e > 1 else ''}", "classifier", False, e)
           for e in EPOCHS[dataset]]
  for name, kind, oracle, epochs in plan:
    path = folder / name.replace(" ", "-")
    if not path.exists():
      model, history, info = experimental.train_model(kind, dataset, train, test, oracle=oracle,
                                                  epochs=epochs, progress=False)
      cfajax.save_model(path, model, metrics={"history": history, **info})
    out[name] = cfajax.load_model(path)
  return out


def measure(m, images, labels):
  """One row per classifier, scale and step rule."""
  vae, oracle = m["vae"], m["oracle"]
  rows = []
  for name, classifier in m.items():
    if not name.startswith("classifier"):
      continue
    logits = np.asarray(apply(classifier, images))
    accuracy = float(np.mean(logits.argmax(-1) == labels))
    predicted = logits.argmax(-1)
    chosen = np.isin(predicted, (4, 9))
    x = images[chosen]
    target = np.where(predicted[chosen] == 4, 9, 4)
    z = np.asarray(apply(vae.encode, x))
    for scale in SCALES:
      # The real images' own probability of their predicted class, at this scale.
      own = jax.nn.softmax(scale * logits[chosen])[np.arange(len(x)), predicted[chosen]]
      real_reach = float(np.mean(np.asarray(own) >= THRESHOLD))
      for rule, options in RULES.items():
        result = cfajax.counterfactual_attack(
            vae.decode, scaled(classifier, scale), z, target, threshold=THRESHOLD,
            max_steps=MAX_STEPS, **options)
        success = np.asarray(result.success)
        cf = np.asarray(apply(vae.decode, np.asarray(result.z)))
        steps = np.asarray(result.steps)[success]
        distance = np.linalg.norm(np.asarray(result.z) - z, axis=1)[success]
        rows.append({
            "classifier": name, "test accuracy": accuracy, "logit scale": scale,
            "real images at threshold": real_reach,
            "step rule": rule, "n": int(len(z)), "reached": float(success.mean()),
            "median steps": float(np.median(steps)) if steps.size else None,
            "oracle agreement": (metrics.oracle_agreement(oracle, cf, target, success=success)
                                 ["agreement"] if success.any() else None),
            "median latent distance": float(np.median(distance)) if distance.size else None})
        print({k: rows[-1][k] for k in ("classifier", "logit scale", "step rule", "reached",
                                         "median steps", "oracle agreement")}, flush=True)
  return rows


def report_tables(record) -> dict:
  """The tables of experiments/RESULTS.md, "Step rules", from a record of this script."""
  number = lambda v, f: "—" if v is None else f.format(v)
  tables = {}
  for decision, rows in record["decisions"].items():
    tables[decision] = results_table(
        ["classifier", "test accuracy:", "logit scale:", "real images at 0.9:", "step rule",
         "n:", "reached:", "median steps:", "oracle agreement:", "latent distance:"],
        [[row["classifier"], percent(row["test accuracy"]), f"{row['logit scale']:g}",
          percent(row["real images at threshold"]), row["step rule"], str(row["n"]),
          percent(row["reached"]), number(row["median steps"], "{:g}"),
          percent(row["oracle agreement"]), number(row["median latent distance"], "{:.2f}")]
         for row in rows])
  return tables


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="", help="MNIST's folder (empty: digits only)")
  parser.add_argument("--models", default="runs/step_rules")
  parser.add_argument("--limit", type=int, default=2000, help="MNIST test digits considered")
  parser.add_argument("--out", default="experiments/results/step_rules.json")
  parser.add_argument("--report", action="store_true", help="print the stored record's table")
  args = parser.parse_args(argv)
  if args.report:
    print_report("experiments/step_rules.py --report",
                 report_tables(json.loads(Path(args.out).read_text())))
    return

  record = {"hardware": hardware(), "threshold": THRESHOLD, "max_steps": MAX_STEPS,
            "rules": RULES, "decisions": {}}
  train, test = experimental.load_train_test("digits", progress=False)
  digits = cfajax.load_digits()
  m = models("digits", Path(args.models) / "digits", train, test)
  record["decisions"]["digits 4 vs 9"] = measure(m, digits.images, digits.labels)
  write_json(args.out, record)
  if args.data_dir:
    train, test = experimental.load_train_test("mnist", args.data_dir, progress=False)
    m = models("mnist", Path(args.models) / "mnist", train, test)
    record["decisions"]["MNIST 4 vs 9"] = measure(m, test.images[:args.limit],
                                                  test.labels[:args.limit])
    write_json(args.out, record)
  print_report("experiments/step_rules.py --report", report_tables(record))


if __name__ == "__main__":
  main()
