"""The README's quick start, timed: `cfajax explain` on the embedded digits from an empty folder.

Run from the repository root, with cfajax installed and nothing else running:

    python benchmarks/quick_start.py --out benchmarks/results/quick_start-cpu.json

It runs the console script `cfajax explain --no-progress` in a new temporary
folder (so the models are trained, as on a fresh machine), and records the wall
time of the whole command, the summary's time per stage, the machine, its load
average before and after, and the versions. `--report` prints the README's
number from the record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECORD = "benchmarks/results/quick_start-cpu.json"


def report_table(record: dict) -> str:
  stages = ", ".join(f"{k} {v:.1f} s" for k, v in record["timings_s"].items())
  return (f"| command | wall time | stages | CPUs | load average before, after |\n"
          f"|---|---:|---|---:|---|\n"
          f"| `{record['command']}` | {record['wall_seconds']:.1f} s | {stages} | "
          f"{record['cpus']} | {record['load_average_before']:.2f}, "
          f"{record['load_average_after']:.2f} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=RECORD)
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    print(f"<!-- report: benchmarks/quick_start.py --report: quick start -->\n"
          f"{report_table(json.loads(Path(args.out).read_text()))}\n<!-- /report -->")
    return
  command = ["cfajax", "explain", "--no-progress"]
  if shutil.which("cfajax") is None:
    sys.exit("install cfajax first (pip install .): the console script is what is timed")
  folder = tempfile.mkdtemp(prefix="cfajax-quick-start-")
  before = os.getloadavg()[0]
  started = time.perf_counter()
  subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL)
  wall = time.perf_counter() - started
  summary = json.loads((Path(folder) / "runs/explain-digits/summary.json").read_text())
  record = {"command": " ".join(command), "date": datetime.date.today().isoformat(),
            "wall_seconds": wall, "timings_s": summary["timings_s"],
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "load_average_before": before, "load_average_after": os.getloadavg()[0],
            "versions": summary["versions"], "num_examples": summary["num_examples"]}
  shutil.rmtree(folder)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(record, indent=1))
  print(report_table(record))


if __name__ == "__main__":
  main()
