"""Time `cfajax.invert` of MNIST digits through a briefly trained GAN, and measure its error.

Run: OMP_WAIT_POLICY=PASSIVE PYTHONPATH=. python benchmarks/inversion_bench.py \\
         --data-dir ../shared/data/mnist [--images 2000] [--subset 256] \\
         [--out benchmarks/results/inversion-mnist-cpu.json]

Trains the MNIST recipe's ConvGAN (latent 32, widths 32 and 64) for one epoch
on the first 6,000 training digits (a generator a user might bring, trained
briefly; the inversion's cost does not depend on how well it was trained),
then inverts the first `--subset` test digits with each inversion setting
below (starts, steps, step size) and reports its wall time (compilation
included: each setting compiles once, as an explain run does) and the pixel
MSE of the reconstructions; finally it inverts `--images` test digits with
`ExplainConfig`'s defaults, the number a user explains. The 1-minute load
averages before and after say whether other work shared the cores.

`--out` writes the numbers as a JSON record, and `--report` prints the table
of benchmarks/RESULTS.md, "Inversion of MNIST digits", from the record at
--out, running nothing.
"""

import argparse
import datetime
import os
import sys
import time

import numpy as np

import cfajax
from cfajax.experimental import train_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

RECORD = "benchmarks/results/inversion-mnist-cpu.json"
# (starts, steps, step size): the defaults before, and the settings tried against them.
SETTINGS = ((4, 500, 0.05), (4, 100, 0.1), (2, 200, 0.1), (2, 150, 0.1), (2, 100, 0.1),
            (1, 300, 0.1))


def invert_timed(decode, images, starts, steps, step_size):
  started = time.perf_counter()
  result = cfajax.invert(decode, images, latent_dim=32, starts=starts, max_steps=steps,
                         step_size=step_size, batch_size=cfajax.ExplainConfig().pool_size)
  errors = np.asarray(result.pixel_mse)
  return {"starts": starts, "steps": steps, "step_size": step_size, "images": len(images),
          "latent_steps": int(len(images) * starts * steps),
          "seconds": time.perf_counter() - started,
          "median_mse": float(np.median(errors)), "p90_mse": float(np.percentile(errors, 90)),
          "max_mse": float(errors.max())}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", default="../shared/data/mnist")
  parser.add_argument("--images", type=int, default=2000)
  parser.add_argument("--subset", type=int, default=256)
  parser.add_argument("--out", default="", help=f"a JSON record, e.g. {RECORD}")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    path = args.out or RECORD
    command = "benchmarks/inversion_bench.py --report" + (f" --out {path}" if args.out else "")
    timing.print_record_report(command, "inversion", path, report_table)
    return
  record = {"device": timing.device_description(), "date": datetime.date.today().isoformat(),
            "command": " ".join(sys.argv), "load_average_before": os.getloadavg()[0]}
  train = cfajax.load_mnist(args.data_dir, "train")
  test = cfajax.load_mnist(args.data_dir, "test")
  started = time.perf_counter()
  gan, history, _ = train_model("gan", "mnist", train.subset(slice(0, 6000), "mnist [:6000]"),
                                test.subset(slice(0, 500), "mnist test [:500]"), epochs=1,
                                progress=False)
  record["gan"] = {"train_images": 6000, "epochs": 1,
                   "train_seconds": time.perf_counter() - started,
                   "test_inversion_mse": float(history[-1].get("test_inversion_mse", np.nan))}
  print(f"GAN trained in {record['gan']['train_seconds']:.0f} s", flush=True)
  images = test.images[:args.images]
  record["settings"] = []
  for starts, steps, step_size in SETTINGS:
    row = invert_timed(gan.decode, images[:args.subset], starts, steps, step_size)
    print(row, flush=True)
    record["settings"].append(row)
  if args.images > args.subset:
    config = cfajax.ExplainConfig()
    record["defaults"] = invert_timed(gan.decode, images, config.inversion_starts,
                                      config.inversion_steps, config.inversion_step_size)
    print(record["defaults"], flush=True)
  record["load_average_after"] = os.getloadavg()[0]
  if args.out:
    timing.write_results(args.out, record)


def report_table(record: dict) -> str:
  """The table of benchmarks/RESULTS.md, "Inversion of MNIST digits"."""
  lines = ["| starts | steps | step size | images | latent-steps | seconds | median MSE | "
           "90th pct. MSE |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for row in [*record["settings"], *filter(None, [record.get("defaults")])]:
    lines.append(f"| {row['starts']} | {row['steps']} | {row['step_size']} | {row['images']} | "
                 f"{row['latent_steps']:,} | {row['seconds']:.0f} | {row['median_mse']:.4f} | "
                 f"{row['p90_mse']:.4f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
