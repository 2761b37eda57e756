"""Saliency from counterfactuals against gradient maps, on planted defects with known masks.

Run:

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/saliency.py \\
        --data-dir ../shared/data

Per seed (0, 1, 2): thin bright "cracks" (`cfajax.saliency.plant_defects`: 6-10
pixels, random angle and place) are planted in half of the first 20,000 MNIST
training digits and of the first 2,000 test digits; a binary classifier (the
MNIST recipe's CNN, one sigmoid logit, 2 epochs) learns "defective", and a VAE
(latent 16, beta 0.5, 5 epochs) learns the defective and clean digits alike.
For up to 300 defective test digits the classifier calls defective, each
method's map is scored against the crack's pixels:

- latent attack: `|G(z') - G(z)|`, z' from `counterfactual_attack` toward
  "clean" (threshold 0.9, plain ascent, step 0.1);
- pixel attack: `|x' - x|` (threshold 0.9, plain ascent, step 0.01);
- gradient: `max_c |d log-odds / dx|` of "defective";
- integrated gradients: `|IG|` of "defective" from a black baseline, 32 steps.

Every map is smoothed by a Gaussian of 1 pixel; its mask is its largest 1.5%
of pixels (12 of 784, about a crack's size; the same rule for every method).
Scores: IoU with the crack's mask and the pointing game (the map's peak on the
crack), averaged per seed; the table gives the mean over seeds with a 95%
t-interval (3 seeds, t = 4.30), and the paired differences between methods
(the same seeds, data and queries) with theirs. Writes
experiments/results/saliency_mnist.json and experiments/figures/saliency_mnist.png.
About 12 minutes on 2 CPU cores. `--report` prints the tables of the record at
--out, running nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import cfajax
from cfajax import metrics
from cfajax import saliency

from common import Stopwatch
from common import _pyplot
from common import _show
from common import apply
from common import hardware
from common import interval
from common import markdown_table
from common import print_report
from common import results_table
from common import save_figure
from common import show_map
from common import write_json

SEEDS = (0, 1, 2)
SIGMA = 1.0
FRACTION = 0.015
METHODS = ("latent attack", "pixel attack", "gradient", "integrated gradients")


def one_seed(seed, train, test, count):
  clock = Stopwatch()
  x_train, y_train, _ = saliency.plant_defects(train.images, seed=seed)
  x_test, y_test, m_test = saliency.plant_defects(test.images, seed=seed + 100)
  clf = cfajax.build_model("classifier", cfajax.ClassifierConfig(
      (28, 28, 1), num_outputs=1, head="sigmoid", widths=(32, 64)), seed=seed)
  clf, _ = cfajax.train_classifier(clf, cfajax.ImageDataset(x_train, y_train), epochs=2,
                                   progress=False)
  vae = cfajax.build_model("vae", cfajax.VAEConfig((28, 28, 1), latent_dim=16, widths=(32, 64),
                                                   beta=0.5), seed=seed)
  vae, _ = cfajax.train_vae(vae, cfajax.ImageDataset(x_train), epochs=5, progress=False)
  clock.lap("train")
  p_test = metrics.target_probability(clf, x_test, 1)
  accuracy = float(np.mean((p_test >= 0.5) == (y_test == 1)))
  rows = np.flatnonzero((y_test == 1) & (p_test >= 0.5))[:count]
  x, masks = x_test[rows], m_test[rows]
  z = np.asarray(apply(vae.encode, x))
  start = np.asarray(apply(vae.decode, z))
  p_start = metrics.target_probability(clf, start, 1)
  latent = cfajax.counterfactual_attack(vae.decode, clf, z, 0, threshold=0.9, step_size=0.1,
                                        optimizer="ascent")
  latent_cf = np.asarray(apply(vae.decode, np.asarray(latent.z)))
  pixel = metrics.pixel_attack(clf, x, 0, threshold=0.9, step_size=0.01)
  pixel_cf = metrics.pixel_counterfactuals(pixel, x.shape[1:])
  maps = {
      "latent attack": saliency.counterfactual_saliency(start, latent_cf, sigma=SIGMA),
      "pixel attack": saliency.counterfactual_saliency(x, pixel_cf, sigma=SIGMA),
      "gradient": saliency.smooth(saliency.gradient_saliency(clf, x, 1), SIGMA),
      "integrated gradients": saliency.smooth(
          np.abs(saliency.integrated_gradients(clf, x, 1)).max(-1), SIGMA),
  }
  clock.lap("maps")
  success = {"latent attack": np.asarray(latent.success), "pixel attack": np.asarray(pixel.success)}
  scores = {}
  for name, m in maps.items():
    judged = success.get(name, np.ones(len(x), bool))
    scores[name] = {
        "iou": float(saliency.iou(saliency.saliency_mask(m, fraction=FRACTION),
                                  masks)[judged].mean()),
        "pointing": float(saliency.pointing_game(m, masks)[judged].mean()),
        "n": int(judged.sum())}
  record = {"seed": seed, "classifier_test_accuracy": accuracy, "queries": int(len(x)),
            "reconstructions_still_defective": float(np.mean(p_start >= 0.5)),
            "latent_flip_rate": float(np.mean(success["latent attack"])),
            "pixel_flip_rate": float(np.mean(success["pixel attack"])),
            "mean_crack_pixels": float(masks.sum((1, 2)).mean()),
            "scores": scores, "stages_s": clock.stages}
  return record, (x[:6], masks[:6], {k: v[:6] for k, v in maps.items()})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--count", type=int, default=300)
  parser.add_argument("--out", default="experiments/results/saliency_mnist.json")
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    print_report("experiments/saliency.py --report",
                 report_tables(json.loads(Path(args.out).read_text())))
    return
  train = cfajax.load_mnist(args.data_dir, "train").subset(slice(0, 20000))
  test = cfajax.load_mnist(args.data_dir, "test").subset(slice(0, 2000))
  record = {"hardware": hardware(), "sigma": SIGMA, "mask_fraction": FRACTION, "seeds": []}
  example = None
  for seed in SEEDS:
    result, shown = one_seed(seed, train, test, args.count)
    record["seeds"].append(result)
    example = example or shown
    print(result, flush=True)
  table = []
  for name in METHODS:
    row = {"method": name}
    for score in ("iou", "pointing"):
      mean, half = interval([r["scores"][name][score] for r in record["seeds"]])
      row[score] = f"{mean:.3f} ± {half:.3f}"
      row[f"{score}_per_seed"] = [round(r["scores"][name][score], 3) for r in record["seeds"]]
    table.append(row)
  record["table"] = table
  write_json(args.out, record)
  print(markdown_table(table, ["method", "iou", "iou_per_seed", "pointing", "pointing_per_seed"]))
  print_report("experiments/saliency.py --report", report_tables(record))
  draw(*example)


LABELS = {"latent attack": "latent attack, \\|G(z′) − G(z)\\|",
          "pixel attack": "pixel attack, \\|x′ − x\\|", "gradient": "gradient",
          "integrated gradients": "integrated gradients (black baseline, 32 steps)"}
PAIRED = (("pixel attack", "gradient"), ("integrated gradients", "pixel attack"),
          ("integrated gradients", "gradient"))


def score_cells(per_seed, as_percent: bool, sign: str = "") -> list[str]:
  """"mean ± half-width" of the 95% t-interval, and the per-seed values."""
  scale, unit, digits = (100, "%", 1) if as_percent else (1, "", 3)
  mean, half = interval(per_seed)
  return [f"{scale * mean:{sign}.{digits}f}{unit} ± {scale * half:.{digits}f}{unit}",
          ", ".join(f"{scale * v:{sign}.{digits}f}" for v in per_seed) + unit]


def report_tables(record: dict) -> dict:
  """The tables of experiments/RESULTS.md, "Saliency from counterfactuals"."""
  seeds = record["seeds"]
  def per_seed(method, score):
    return [s["scores"][method][score] for s in seeds]
  maps = results_table(
      ["map", "IoU with the crack", "per seed", "pointing game", "per seed"],
      [[LABELS[m], *score_cells(per_seed(m, "iou"), False),
        *score_cells(per_seed(m, "pointing"), True)] for m in METHODS])
  paired = results_table(
      ["difference", "IoU", "per seed", "pointing game", "per seed"],
      [[f"{a} − {b}",
        *score_cells(np.subtract(per_seed(a, "iou"), per_seed(b, "iou")), False, "+"),
        *score_cells(np.subtract(per_seed(a, "pointing"), per_seed(b, "pointing")), True, "+")]
       for a, b in PAIRED])
  return {"maps": maps, "paired differences": paired}


def draw(x, masks, maps):
  plt = _pyplot()
  columns = ["digit with crack", "crack (truth)", *METHODS]
  fig, axes = plt.subplots(len(x), len(columns), figsize=(1.3 * len(columns), 1.3 * len(x) + 0.4))
  for i in range(len(x)):
    _show(axes[i, 0], x[i])
    _show(axes[i, 1], masks[i][..., None].astype(np.float32))
    for j, name in enumerate(METHODS):
      show_map(axes[i, 2 + j], maps[name][i], masks[i])
  for j, name in enumerate(columns):
    axes[0, j].set_title(name, fontsize=6)
  fig.suptitle("Saliency on planted cracks (seed 0; cyan: the crack)", fontsize=8)
  fig.tight_layout()
  save_figure(fig, "saliency_mnist.png")


if __name__ == "__main__":
  main()
