"""Time `cfajax.fit_probes` against scikit-learn on the same probes.

Run: PYTHONPATH=. python benchmarks/fit_probes_bench.py [--n 10000] [--d 64] [--attributes 40]
         [--out benchmarks/results/probes-cpu.json]

Fits A logistic-regression probes on (n, d) latents with cfajax (float32
L-BFGS, jitted) and with scikit-learn's `LogisticRegression` (float64 lbfgs,
one fit per attribute, tol=1e-6: the same objective scale as ours, whose
tol=1e-6 bounds the 2-norm rather than the max-norm of the gradient). Reports
cfajax's first call (compilation included) apart from its steady state, for
attributes fitted one at a time and side by side under vmap, and the largest
difference between the two libraries' probabilities.

`--out` writes the numbers as a JSON record, and `--report` prints the table
of benchmarks/RESULTS.md, "Probes against scikit-learn", from the record at
--out, running nothing.
"""

import argparse
import datetime
import os
import sys
import time

import jax
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

import cfajax
from cfajax import experimental

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

RECORD = "benchmarks/results/probes-cpu.json"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10000)
  parser.add_argument("--d", type=int, default=64)
  parser.add_argument("--attributes", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="", help=f"a JSON record, e.g. {RECORD}")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    path = args.out or RECORD
    command = "benchmarks/fit_probes_bench.py --report" + (f" --out {path}" if args.out else "")
    timing.print_record_report(command, "probes", path, report_table)
    return
  # The 1-minute load average says whether other work shared the cores.
  record = {"device": timing.device_description(), "date": datetime.date.today().isoformat(),
            "command": " ".join(sys.argv), "load_average_before": os.getloadavg()[0],
            "n": args.n, "d": args.d,
            "attributes": args.attributes, "repeats": args.repeats, "cfajax": []}

  rng = np.random.default_rng(0)
  z = rng.normal(size=(args.n, args.d)).astype(np.float32)
  logits = z @ rng.normal(size=(args.d, args.attributes)) / np.sqrt(args.d) * 3
  attributes = (logits + rng.logistic(size=logits.shape) > 0).astype(np.int32)

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), float32; "
        f"{args.attributes} probes on {args.n} x {args.d} latents")
  default = experimental.default_attribute_batch_size(args.attributes, args.n, args.d)
  for batch in sorted({1, 4, args.attributes} | {default}):
    start = time.perf_counter()
    probes = cfajax.fit_probes(z, attributes, attribute_batch_size=batch)
    jax.block_until_ready(probes.coef)
    first = time.perf_counter() - start
    steady = []
    for repeat in range(args.repeats):
      start = time.perf_counter()
      probes = cfajax.fit_probes(  # new values, same program
          z, attributes, C=1.0 + 1e-3 * repeat, attribute_batch_size=batch)
      jax.block_until_ready(probes.coef)
      steady.append(time.perf_counter() - start)
    print(f"cfajax.fit_probes, {batch} attribute(s) per vmapped loop"
          f"{' (default here)' if batch == default else ''}: first call {first:.2f} s "
          f"(with compilation), steady state median {np.median(steady):.3f} s "
          f"(min {min(steady):.3f}); {int(probes.iterations.max())} iterations at most, "
          f"all converged: {bool(probes.converged.all())}")
    record["cfajax"].append({
        "attribute_batch_size": batch, "default": batch == default, "first_s": first,
        "steady_median_s": float(np.median(steady)), "steady_min_s": min(steady),
        "max_iterations": int(probes.iterations.max()),
        "all_converged": bool(probes.converged.all())})
  probes = cfajax.fit_probes(z, attributes)

  # scikit-learn fits float32 inputs in float32 (and then stops early); give it float64.
  z64 = z.astype(np.float64)
  start = time.perf_counter()
  reference = [LogisticRegression(tol=1e-6, max_iter=1000).fit(z64, attributes[:, a])
               for a in range(args.attributes)]
  sklearn_time = time.perf_counter() - start
  ours = np.asarray(probes.predict_proba(z))
  theirs = np.stack([r.predict_proba(z64)[:, 1] for r in reference], axis=1)

  print(f"scikit-learn LogisticRegression x {args.attributes}: {sklearn_time:.2f} s")
  print(f"max |proba difference|: {np.abs(ours - theirs).max():.1e}")
  record["scikit_learn"] = {"version": sklearn.__version__, "seconds": sklearn_time}
  record["max_proba_difference"] = float(np.abs(ours - theirs).max())
  record["load_average_after"] = os.getloadavg()[0]
  if args.out:
    timing.write_results(args.out, record)


def report_table(record: dict) -> str:
  """The table of benchmarks/RESULTS.md, "Probes against scikit-learn"."""
  lines = ["| implementation | first call (s) | steady state (s) |", "| --- | ---: | ---: |"]
  for row in record["cfajax"]:
    batch = row["attribute_batch_size"]
    name = ("one attribute" if batch == 1 else f"all {batch}" if batch == record["attributes"]
            else f"{batch}") + " per vmapped loop"
    lines.append(f"| cfajax, {name}{' (default here)' if row['default'] else ''} | "
                 f"{row['first_s']:.2f} | {row['steady_median_s']:.3f} |")
  lines.append(f"| scikit-learn {record['scikit_learn']['version']}, {record['attributes']} "
               f"fits | - | {record['scikit_learn']['seconds']:.2f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
