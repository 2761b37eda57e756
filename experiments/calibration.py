"""Does psi call noise significant? Its false-positive rate and power on a planted setup.

Run from the repository root:

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/calibration.py

The planted setup, where the truth is known: 8-dimensional latents z ~ N(0, I),
a linear decoder to 8x8 images and its exact encoder, and a one-logit
classifier that decides by latent dimensions 2 and 4 alone,
`logit = 2 (z_2 + z_4)`. The attribute table (n other latents) holds six real
attributes, `1[z_j + 0.5 e > 0]` for j = 0..5, of which 2 and 4 drive the
decision and 0, 1, 3 and 5 do not, and 20 coin flips, which nothing encodes.
For each of `--seeds` seeds and each n in `--sizes` (examples explained =
table rows = n), it attacks every example toward the other side (threshold
0.9), fits the probes as `cfajax explain` does (C = 1, balanced, standardised,
a fifth held out) and computes psi three ways: the interval that resamples
the examples only (the probes held fixed), the interval whose resamples refit
the probes too, and the permutation p-values (Holm-adjusted across the 26
attributes). It reports, per kind of attribute, how often each calls it
significant (interval excludes 0, or p <= 0.05). About 25 minutes on 2 CPU
cores at the defaults.

It also measures the step rules on the planted classifier with its logit
scaled by 0.05, 1 and 20 (here any target is reachable: nothing bounds a
linear decoder's images). Writes experiments/results/calibration.json;
`--report` prints its tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

import cfajax
from cfajax import probe_refits

from common import hardware
from common import percent
from common import print_report
from common import results_table
from common import write_json

LATENT_DIM = 8
DECIDING = (2, 4)
NUM_REAL = 6
NUM_RANDOM = 20
KINDS = {"deciding (2, 4)": list(DECIDING),
         "real, not deciding (0, 1, 3, 5)": [0, 1, 3, 5],
         "coin flips (20)": list(range(NUM_REAL, NUM_REAL + NUM_RANDOM))}


def _linear(matrix, scale, x):
  return scale * x.reshape(x.shape[0], -1) @ matrix


def planted_models(seed: int, scale: float = 1.0):
  """(decode, encode, classify) of the planted setup; classify's logit is `scale` times
  2 (z_2 + z_4) of the image's latent."""
  rng = np.random.default_rng(1000 + seed)
  mixing = rng.normal(size=(LATENT_DIM, 64)).astype(np.float32) / np.sqrt(LATENT_DIM)
  unmix = np.linalg.pinv(mixing).astype(np.float32)  # (64, d): the exact encoder
  w = np.zeros((LATENT_DIM, 1), np.float32)
  w[list(DECIDING), 0] = 2.0
  decode = jax.tree_util.Partial(lambda m, z: (z @ m).reshape(-1, 8, 8, 1), mixing)
  classify = jax.tree_util.Partial(_linear, unmix @ w, scale)
  encode = jax.tree_util.Partial(_linear, unmix, 1.0)
  return decode, encode, classify


def attributes_of(z, rng):
  real = (z[:, :NUM_REAL] + 0.5 * rng.normal(size=(len(z), NUM_REAL)) > 0)
  coins = rng.integers(0, 2, (len(z), NUM_RANDOM))
  return np.concatenate([real, coins], axis=1).astype(np.float32)


def one_run(seed: int, n: int, num_permutations: int, num_bootstrap: int):
  """Which attributes each method calls significant, for one seed and size."""
  rng = np.random.default_rng(seed)
  decode, encode, classify = planted_models(seed)
  z = rng.normal(size=(n, LATENT_DIM)).astype(np.float32)
  z_table = rng.normal(size=(n, LATENT_DIM)).astype(np.float32)
  labels = attributes_of(z_table, rng)
  # The explain pipeline's probes: a fifth of the table held out.
  order = rng.permutation(n)
  fit, held = order[n // 5:], order[:n // 5]
  options = dict(C=1.0, class_weight="balanced", standardize=True)
  probes = cfajax.fit_probes(z_table[fit], labels[fit], validation=(z_table[held], labels[held]),
                             **options)
  logit = np.asarray(classify(decode(z)))[:, 0]
  target = (logit < 0).astype(np.int32)
  result = cfajax.counterfactual_attack(decode, classify, z, target, threshold=0.9)
  success = np.asarray(result.success)
  prob = 1 / (1 + np.exp(-logit))
  phi = np.asarray(cfajax.local_attributions(probes, z, result.z))
  fixed = cfajax.global_attributions(phi, prob, success=success, num_bootstrap=1000, seed=seed)
  refits = probe_refits(z_table[fit], labels[fit], z, np.asarray(result.z), prob,
                        success=success, num_permutations=num_permutations,
                        num_bootstrap=num_bootstrap, seed=seed, **options)
  refit = cfajax.global_attributions(phi, prob, success=success, refits=refits)
  excludes = lambda g: (g.ci_low > 0) | (g.ci_high < 0)
  return {"flip_rate": float(success.mean()),
          "fixed probes, interval excludes 0": excludes(fixed).tolist(),
          "refitted probes, interval excludes 0": excludes(refit).tolist(),
          "permutation p <= 0.05": (refit.p_value <= 0.05).tolist(),
          "Holm-adjusted p <= 0.05": refit.significant.tolist(),
          "rank of first coin flip": int(np.min(np.argsort(refit.ranking)[NUM_REAL:])) + 1}


METHODS = ("fixed probes, interval excludes 0", "refitted probes, interval excludes 0",
           "permutation p <= 0.05", "Holm-adjusted p <= 0.05")


def rates(runs):
  """Per kind of attribute and method: the share of (seed, attribute) called significant."""
  rows = []
  for kind, columns in KINDS.items():
    row = {"attributes": kind}
    for method in METHODS:
      calls = np.array([np.asarray(run[method])[columns] for run in runs])
      row[method] = float(calls.mean())
    rows.append(row)
  return rows


def step_rules(seeds: int, n: int = 500):
  """Reached share and median steps of each step rule on the scaled planted classifier."""
  rows = []
  for scale in (0.05, 1.0, 20.0):
    for rule, options in (("trust region (default)", dict(optimizer="trust-region")),
                          ("plain ascent", dict(optimizer="ascent", step_size=0.1)),
                          ("Adam", dict(optimizer="adam", step_size=0.05))):
      reached, steps = [], []
      for seed in range(seeds):
        decode, _, classify = planted_models(seed, scale)
        z = np.random.default_rng(seed).normal(size=(n, LATENT_DIM)).astype(np.float32)
        target = (np.asarray(classify(decode(z)))[:, 0] < 0).astype(np.int32)
        result = cfajax.counterfactual_attack(decode, classify, z, target, threshold=0.9,
                                              max_steps=500, **options)
        reached.append(np.asarray(result.success))
        steps.append(np.asarray(result.steps)[np.asarray(result.success)])
      steps = np.concatenate(steps)
      rows.append({"logit scale": scale, "step rule": rule, "attacks": int(n * seeds),
                   "reached": float(np.concatenate(reached).mean()),
                   "median steps": float(np.median(steps)) if steps.size else None})
  return rows


def report_tables(record) -> dict:
  """The tables of experiments/RESULTS.md, "Is psi more than noise?", from a record."""
  tables = {}
  for size, runs in record["runs"].items():
    rows = [[row["attributes"], *(percent(row[m]) for m in METHODS)] for row in rates(runs)]
    tables[f"n = {size}"] = results_table(["attributes", *(f"{m}:" for m in METHODS)], rows)
    ranks = [run["rank of first coin flip"] for run in runs]
    flips = [run["flip_rate"] for run in runs]
    tables[f"n = {size}, runs"] = results_table(
        ["seeds:", "reached the target:", "median rank of the first coin flip, by absolute psi:"],
        [[str(len(runs)), percent(float(np.mean(flips))), f"{np.median(ranks):g}"]])
  tables["step rules"] = results_table(
      ["logit scale:", "step rule", "attacks:", "reached:", "median steps:"],
      [[f"{row['logit scale']:g}", row["step rule"], str(row["attacks"]), percent(row["reached"]),
        "—" if row["median steps"] is None else f"{row['median steps']:g}"]
       for row in record["step_rules"]])
  return tables


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=50)
  parser.add_argument("--sizes", default="200,2000")
  parser.add_argument("--num-permutations", type=int, default=999,
                      help="Holm across 26 attributes needs p <= 0.05/26: at least 520")
  parser.add_argument("--num-bootstrap", type=int, default=200)
  parser.add_argument("--out", default="experiments/results/calibration.json")
  parser.add_argument("--report", action="store_true", help="print the stored record's tables")
  parser.add_argument("--step-rules-only", action="store_true",
                      help="remeasure only the step rules (minutes), keeping the record's runs")
  args = parser.parse_args(argv)
  if args.report:
    print_report("experiments/calibration.py --report",
                 report_tables(json.loads(Path(args.out).read_text())))
    return
  if args.step_rules_only:
    record = json.loads(Path(args.out).read_text())
    record.setdefault("runs_default", "not recorded (the record predates the field)")
    record["step_rules"], record["step_rules_default"] = step_rules(5), repr(cfajax.TrustRegion())
    write_json(args.out, record)
    print_report("experiments/calibration.py --report", report_tables(record))
    return
  record = {"hardware": hardware(), "seeds": args.seeds, "num_permutations": args.num_permutations,
            "num_bootstrap": args.num_bootstrap, "runs": {}}
  record["step_rules"], record["step_rules_default"] = step_rules(5), repr(cfajax.TrustRegion())
  record["runs_default"] = record["step_rules_default"]
  for size in (int(s) for s in args.sizes.split(",")):
    record["runs"][str(size)] = []
    for seed in range(args.seeds):
      record["runs"][str(size)].append(one_run(seed, size, args.num_permutations,
                                               args.num_bootstrap))
      print(f"n={size} seed {seed} done", flush=True)
    write_json(args.out, record)
  print_report("experiments/calibration.py --report", report_tables(record))


if __name__ == "__main__":
  main()
