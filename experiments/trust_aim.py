"""How far past the threshold should the trust region aim?

Run from the repository root (after experiments/step_rules.py has trained
its models, which this script reuses):

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/trust_aim.py \\
        [--data-dir ../shared/data/mnist --limit 2000]

The trust region's step aims at target probability `threshold + overshoot
* (1 - threshold)`. Plain ascent has no aim: on a sharp classifier its fixed
step carries the latent far past the threshold, and the oracle agrees more
often with counterfactuals that are further into the target class. For each
of step_rules.py's classifiers, on the classifier as it is and with its
logits ×20, this attacks the examples predicted 4 or 9 toward the other
class at threshold 0.9 with the trust region at several overshoots and with
plain ascent (step 0.1), and reports the share reached, median steps, the
oracle's agreement with its 95% interval, the paired difference in
agreement from plain ascent on the examples both reached (bootstrap 95%
interval), and the median latent distance. Digits: every image (both
splits); MNIST: the first `--limit` test digits. Writes
experiments/results/trust_aim.json; `--report` prints its table.
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
from common import percent
from common import print_report
from common import results_table
from common import write_json
from step_rules import THRESHOLD
from step_rules import models
from step_rules import scaled

OVERSHOOTS = (0.5, 0.8, 0.9, 0.97)
SCALES = (1.0, 20.0)
MAX_STEPS = 500
BOOTSTRAP = 2000


def rules() -> dict:
  out = {f"trust region, overshoot {o:g}": cfajax.TrustRegion(overshoot=o) for o in OVERSHOOTS}
  return {**out, "plain ascent": "ascent"}


def wilson(agree: np.ndarray) -> tuple[float, float]:
  """The Wilson score 95% interval of a proportion."""
  n, z = len(agree), 1.959964
  if n == 0:
    return float("nan"), float("nan")
  p = agree.mean()
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return float(centre - half), float(centre + half)


def paired_difference(agree, reference, both, seed=0) -> dict:
  """Agreement minus the reference's on the examples both reached, with a bootstrap interval."""
  a, b = agree[both].astype(float), reference[both].astype(float)
  if not len(a):
    return {"difference": None, "interval": None, "n": 0}
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(a), (BOOTSTRAP, len(a)))
  low, high = np.percentile((a[draws] - b[draws]).mean(1), [2.5, 97.5])
  return {"difference": float((a - b).mean()), "interval": [float(low), float(high)],
          "n": int(len(a))}


def measure(m, images, labels):
  vae, oracle = m["vae"], m["oracle"]
  rows = []
  for name, classifier in m.items():
    if not name.startswith("classifier"):
      continue
    predicted = np.asarray(apply(classifier, images)).argmax(-1)
    chosen = np.isin(predicted, (4, 9))
    x = images[chosen]
    target = np.where(predicted[chosen] == 4, 9, 4)
    z = np.asarray(apply(vae.encode, x))
    for scale in SCALES:
      outcome = {}
      for rule, optimizer in rules().items():
        result = cfajax.counterfactual_attack(
            vae.decode, scaled(classifier, scale), z, target, threshold=THRESHOLD,
            max_steps=MAX_STEPS, optimizer=optimizer, step_size=0.1)
        success = np.asarray(result.success)
        cf = np.asarray(apply(vae.decode, np.asarray(result.z)))
        agree = metrics.oracle_agreement(oracle, cf, target)["per_example"]
        outcome[rule] = (success, agree, result)
      ref_success, ref_agree, _ = outcome["plain ascent"]
      for rule, (success, agree, result) in outcome.items():
        distance = np.linalg.norm(np.asarray(result.z) - z, axis=1)[success]
        rows.append({
            "classifier": name, "logit scale": scale, "step rule": rule, "n": int(len(z)),
            "reached": float(success.mean()),
            "median steps": float(np.median(np.asarray(result.steps)[success]))
                            if success.any() else None,
            "median final probability": float(np.median(np.asarray(result.final_prob)[success]))
                                        if success.any() else None,
            "oracle agreement": float(agree[success].mean()) if success.any() else None,
            "agreement interval": list(wilson(agree[success])),
            "against plain ascent": paired_difference(agree, ref_agree, success & ref_success),
            "median latent distance": float(np.median(distance)) if distance.size else None})
        row = rows[-1]
        print({k: row[k] for k in ("classifier", "logit scale", "step rule", "reached",
                                    "median steps", "oracle agreement")},
              row["against plain ascent"]["difference"], flush=True)
  return rows


def report_tables(record) -> dict:
  """The tables of experiments/RESULTS.md, "How far past the threshold", from a record."""
  number = lambda v, f: "—" if v is None else f.format(v)

  def versus(d):
    if d["difference"] is None:
      return "—"
    low, high = d["interval"]
    return f"{100 * d['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"

  tables = {}
  for decision, rows in record["decisions"].items():
    tables[decision] = results_table(
        ["classifier", "logit scale:", "step rule", "n:", "reached:", "median steps:",
         "median p:", "oracle agreement:", "vs plain ascent (points):", "latent distance:"],
        [[row["classifier"], f"{row['logit scale']:g}", row["step rule"], str(row["n"]),
          percent(row["reached"]), number(row["median steps"], "{:g}"),
          number(row["median final probability"], "{:.3f}"),
          f"{percent(row['oracle agreement'])} [{percent(row['agreement interval'][0])}, "
          f"{percent(row['agreement interval'][1])}]" if row["oracle agreement"] is not None
          else "—",
          versus(row["against plain ascent"]), number(row["median latent distance"], "{:.2f}")]
         for row in rows])
  return tables


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="", help="MNIST's folder (empty: digits only)")
  parser.add_argument("--models", default="runs/step_rules")
  parser.add_argument("--limit", type=int, default=2000, help="MNIST test digits considered")
  parser.add_argument("--out", default="experiments/results/trust_aim.json")
  parser.add_argument("--report", action="store_true", help="print the stored record's table")
  args = parser.parse_args(argv)
  if args.report:
    print_report("experiments/trust_aim.py --report",
                 report_tables(json.loads(Path(args.out).read_text())))
    return

  record = {"hardware": hardware(), "threshold": THRESHOLD, "max_steps": MAX_STEPS,
            "overshoots": OVERSHOOTS, "decisions": {}}
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
  print_report("experiments/trust_aim.py --report", report_tables(record))


if __name__ == "__main__":
  main()
