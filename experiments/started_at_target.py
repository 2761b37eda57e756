"""CelebA's psi with and without the attacks that start at the target, from the stored record.

Run from the repository root (it reads experiments/results/celeba.json, which
experiments/celeba.py wrote; nothing is trained or attacked):

    PYTHONPATH=.:experiments python experiments/started_at_target.py --report

An attack that starts at the target (the classifier already decides the
generator's reconstruction G(z) past the threshold on the other side) takes no
step: z' = z, so its phi is exactly 0 for every attribute. psi averages phi over
the successful attacks, so leaving those k of n out multiplies every psi by
n / (n - k) and changes neither a sign nor the ranking; the intervals, which
`cfajax explain --exclude-started-at-target` recomputes, are not rebuilt here
(the record keeps no per-face phi). The record's attacks stop at threshold 0.5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import percent
from common import print_report
from common import results_table
from common import signed

DECISIONS = ("Young", "Attractive", "Male")


def report_tables(record: dict) -> dict:
  rows = []
  for decision in DECISIONS:
    part = record[decision]
    psi = part["global_attributions"]
    n = psi["num_used"]
    started = round(part["zero_step_fraction"] * (n + psi["num_failed"]))
    scale = n / (n - started)
    top = psi["ranking"][:5]
    rows.append([decision, str(n), f"{started} ({percent(part['zero_step_fraction'])})",
                 f"{scale:.3f}",
                 ", ".join(f"{a} {signed(psi['attributes'][a]['psi'], 2)}" for a in top),
                 ", ".join(f"{signed(psi['attributes'][a]['psi'] * scale, 2)}" for a in top)])
  return {"celeba": results_table(
      ["decision", "faces in psi:", "started at the target:", "psi scales by:",
       "top five, with them", "top five, without them"], rows)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--record", default="experiments/results/celeba.json")
  parser.add_argument("--report", action="store_true", help="print the table (the only mode)")
  args = parser.parse_args(argv)
  print_report("experiments/started_at_target.py --report",
               report_tables(json.loads(Path(args.record).read_text())))


if __name__ == "__main__":
  main()
