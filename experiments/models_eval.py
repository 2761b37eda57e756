"""Held-out numbers of trained VAEs and classifiers, and reconstruction grids.

Run (after the `cfajax train` commands in experiments/RESULTS.md, "Models"):

    PYTHONPATH=. python experiments/models_eval.py --dataset mnist \
        --data-dir ../shared/data --runs runs/mnist
    PYTHONPATH=. python experiments/models_eval.py --dataset celeba \
        --data-dir ../shared/data --runs runs/celeba

Reads <runs>/vae, <runs>/classifier and <runs>/oracle (those present), evaluates
them on the same held-out set the training command used (MNIST: the official
test split; CelebA: the last 1,000 of the 10,000 shared faces), and writes
experiments/figures/<dataset>_reconstructions.png (originals above their
reconstructions) and prints one JSON record (stored as
experiments/results/models_<dataset>.json). Takes about a minute on 2 CPU cores.
`--report` prints the table of experiments/RESULTS.md, "Models", from the
stored MNIST and CelebA records, running nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

import cfajax

from common import print_report
from common import results_table


def held_out(dataset: str, data_dir, holdout: int = 1000) -> cfajax.ImageDataset:
  if dataset == "mnist":
    return cfajax.load_mnist(data_dir, "test")
  if dataset == "digits":
    return cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)[1]
  train = cfajax.load_celeba(data_dir, "train", 64)
  return cfajax.split_dataset(train, holdout, seed=None)[1]


def save_grid(path: Path, originals: np.ndarray, reconstructions: np.ndarray, scale: int):
  """Row pairs: originals, then their reconstructions beneath, `scale`x upsampled."""
  n, h, w, c = originals.shape
  columns = min(n, 12)
  rows = []
  for start in range(0, n, columns):
    for block in (originals, reconstructions):
      row = block[start:start + columns]
      rows.append(np.concatenate(list(row), axis=1))
  grid = np.concatenate(rows, axis=0)
  grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
  image = Image.fromarray(grid[..., 0] if c == 1 else grid)
  image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
  if c == 3:
    image = image.quantize(256)  # a palette keeps the photo grid small in the repository
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, optimize=True)


RECORDS = Path("experiments/results")
DATASETS = {"mnist": "MNIST", "celeba": "CelebA", "digits": "digits"}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=("mnist", "celeba", "digits"))
  parser.add_argument("--data-dir")
  parser.add_argument("--runs")
  parser.add_argument("--figures", default="experiments/figures")
  parser.add_argument("--report", action="store_true",
                      help="print the table of the stored records, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    records = {d: json.loads((RECORDS / f"models_{d}.json").read_text())
               for d in ("mnist", "celeba") if (RECORDS / f"models_{d}.json").is_file()}
    print_report("experiments/models_eval.py --report",
                 {"reconstructions": reconstruction_table(records)})
    return
  if args.dataset is None or args.runs is None:
    parser.error("--dataset and --runs are required, unless --report")

  runs = Path(args.runs)
  test = held_out(args.dataset, args.data_dir)
  record = {"dataset": args.dataset, "held_out": test.name, "n": len(test)}
  start = time.perf_counter()
  vae = cfajax.load_model(runs / "vae") if (runs / "vae").is_dir() else None
  reconstructed = None
  if vae is not None:
    metrics = cfajax.evaluate_vae(vae, test)
    record["vae"] = {"recon_bce_per_pixel": metrics["recon_bce"],
                     "mse_per_pixel": metrics["mse"], "kl_nats": metrics["kl"],
                     "neg_elbo_nats": metrics["loss"]}
    reconstructed = test.with_images(cfajax.reconstruct(vae, test.images),
                                     f"{test.name} reconstructed")
    pick = np.random.default_rng(0).choice(len(test), 24, replace=False)
    save_grid(Path(args.figures) / f"{args.dataset}_reconstructions.png",
              test.images[pick], reconstructed.images[pick],
              scale=3 if args.dataset == "mnist" else 1)
  for name in ("classifier", "oracle"):
    if not (runs / name).is_dir():
      continue
    classifier = cfajax.load_model(runs / name)
    entry = {"originals": cfajax.evaluate_classifier(classifier, test)}
    if reconstructed is not None:
      entry["reconstructions"] = cfajax.evaluate_classifier(classifier, reconstructed)
    record[name] = entry
  record["seconds"] = round(time.perf_counter() - start, 1)
  print(json.dumps(record, indent=2))


def reconstruction_table(records: dict) -> str:
  """Each classifier's held-out accuracy on the images and on the VAE's reconstructions.

  One row per output of a multi-output classifier (CelebA's heads); two
  decimals of a percent for 10,000 images, one for fewer.
  """
  rows = []
  for dataset, record in records.items():
    digits = 2 if record["n"] >= 10000 else 1
    for name in ("classifier", "oracle"):
      if name not in record:
        continue
      originals, reconstructions = (record[name][k] for k in ("originals", "reconstructions"))
      heads = [k.split("/", 1)[1] for k in originals if k.startswith("accuracy/")]
      for head in heads or [None]:
        key = f"accuracy/{head}" if head else "accuracy"
        rows.append([f"{DATASETS[dataset]} {name}" + (f", {head}" if head else ""),
                     f"{100 * originals[key]:.{digits}f}%",
                     f"{100 * reconstructions[key]:.{digits}f}%"])
  return results_table(["classifier", "on originals:", "on reconstructions:"], rows)


if __name__ == "__main__":
  main()
