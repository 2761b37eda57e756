"""Bischof et al.'s translator on the planted-crack benchmark: its saliency, flips and fakeness.

Run:

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/translator.py \\
        --data-dir ../shared/data

The data and queries are those of experiments/saliency.py, seed for seed:
cracks planted in half of the first 20,000 MNIST training digits and of the
first 2,000 test digits, and a binary classifier (2 epochs) that learns
"defective". Per seed (0, 1, 2) a `Translator` (`cfajax.train_translator`,
3 epochs, its defaults: batch 64, Adam 2e-4, cycle weight 10, change weight
1) learns the same data; then:

- saliency: each defective test digit the classifier calls defective (up to
  300) is translated to "clean" in one pass; its map `|x' - x|`, smoothed by
  a Gaussian of 1 pixel, masked at its largest 1.5% of pixels, is scored by
  IoU with the crack and the pointing game, the saliency study's rule, over
  the translations the classifier (an independent judge) calls clean;
- flips: the share of those translations the classifier, and the critic,
  call clean;
- fakeness as uncertainty: AUROC of the critic's probability of "fake" at
  telling (a) the test digits the critic misclassifies from the rest and
  (b) out-of-distribution inputs (2,000 CelebA faces in grey at 28x28, if the
  data folder has them, and 2,000 images of uniform noise) from the test
  digits; against the softmax baseline `1 - max p` of the critic's class
  logits and of the plain classifier.

Means over seeds with 95% t-intervals. Seed 0's classifier and translator,
and its queries with their masks, are saved under runs/cracks/ for a look.
Writes experiments/results/translator_mnist.json and
experiments/figures/translator_mnist.png. About 25 minutes on 2 CPU cores
(7 minutes of it per seed training the translator). `--report` prints the
tables of the record at --out, running nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import roc_auc_score

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
SIGMA = 1.0       # the saliency study's smoothing ...
FRACTION = 0.015  # ... and mask rule (experiments/saliency.py)
EPOCHS = 3


def greyscale_faces(data_dir, count: int) -> np.ndarray | None:
  """The first `count` CelebA faces as (count, 28, 28, 1) grey images, or None without them."""
  try:
    faces = cfajax.load_celeba(data_dir, "train", image_size=28, progress=False)
  except (FileNotFoundError, ValueError) as error:
    print(f"no CelebA faces for the out-of-distribution test: {error}")
    return None
  return faces.images[:count].mean(-1, keepdims=True).astype(np.float32)


def auroc(positive, negative) -> float:
  """AUROC of a score at ranking `positive` rows above `negative` ones."""
  scores = np.concatenate([positive, negative])
  labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
  return float(roc_auc_score(labels, scores))


def softmax_doubt(logits) -> np.ndarray:
  """`1 - max p` over the class logits: one sigmoid logit as two classes."""
  logits = np.asarray(logits)
  if logits.shape[-1] == 1:
    logits = np.concatenate([np.zeros_like(logits), logits], -1)
  return 1 - np.asarray(jax.nn.softmax(logits)).max(-1)


def one_seed(seed, train, test, count, out_of_distribution, runs):
  clock = Stopwatch()
  x_train, y_train, _ = saliency.plant_defects(train.images, seed=seed)
  x_test, y_test, m_test = saliency.plant_defects(test.images, seed=seed + 100)
  y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
  clf = cfajax.build_model("classifier", cfajax.ClassifierConfig(
      (28, 28, 1), num_outputs=1, head="sigmoid", widths=(32, 64)), seed=seed)
  clf, _ = cfajax.train_classifier(clf, cfajax.ImageDataset(x_train, y_train), epochs=2,
                                   progress=False)
  clock.lap("train classifier")
  translator = cfajax.build_model("translator", cfajax.TranslatorConfig(
      (28, 28, 1), num_classes=2, widths=(16, 32, 64), critic_widths=(32, 64),
      class_names=("clean", "defective")), seed=seed)
  translator, history = cfajax.train_translator(
      translator, cfajax.ImageDataset(x_train, y_train), cfajax.ImageDataset(x_test, y_test),
      epochs=EPOCHS, seed=seed, progress=False)
  clock.lap("train translator")

  p_test = metrics.target_probability(clf, x_test, 1)
  rows = np.flatnonzero((y_test == 1) & (p_test >= 0.5))[:count]
  x, masks = x_test[rows], m_test[rows]
  translated = apply(lambda images: translator.translate(images, jnp.zeros(len(images),
                                                                           jnp.int32)), x)
  translated = np.asarray(translated)
  judged = metrics.target_probability(clf, translated, 0) >= 0.5
  critic_clean = np.asarray(apply(translator, translated)).argmax(-1) == 0
  maps = saliency.counterfactual_saliency(x, translated, sigma=SIGMA)
  iou = saliency.iou(saliency.saliency_mask(maps, fraction=FRACTION), masks)
  pointing = saliency.pointing_game(maps, masks)
  clock.lap("translate and score")

  critic_logits = np.asarray(apply(translator.critic_logits, x_test))
  critic_wrong = critic_logits[:, :2].argmax(-1) != y_test
  fakeness = np.asarray(jax.nn.softmax(critic_logits))[:, -1]
  scores = {"fakeness": lambda images: np.asarray(apply(translator.fakeness, images)),
            "critic softmax": lambda images: softmax_doubt(apply(translator, images)),
            "classifier softmax": lambda images: softmax_doubt(apply(clf, images))}
  detection = {"misclassified by the critic": {
      "fakeness": auroc(fakeness[critic_wrong], fakeness[~critic_wrong]),
      "critic softmax": auroc(*(softmax_doubt(critic_logits[:, :2])[m]
                                for m in (critic_wrong, ~critic_wrong)))}}
  for name, images in out_of_distribution.items():
    detection[name] = {score: auroc(fn(images), fn(x_test)) for score, fn in scores.items()}
  clock.lap("fakeness")
  if runs is not None:
    for name, model in (("classifier", clf), ("translator", translator)):
      cfajax.save_model(Path(runs) / name, model)
    np.savez_compressed(Path(runs) / "queries.npz", images=x, masks=masks)
  record = {
      "seed": seed, "queries": int(len(x)),
      "classifier_test_accuracy": float(np.mean((p_test >= 0.5) == (y_test == 1))),
      "critic_test_accuracy": float(1 - critic_wrong.mean()),
      "critic_errors": int(critic_wrong.sum()),
      "flip_rate_by_classifier": float(judged.mean()),
      "flip_rate_by_critic": float(critic_clean.mean()),
      "mean_abs_change": float(np.abs(translated - x).mean()),
      "iou": float(iou[judged].mean()), "pointing": float(pointing[judged].mean()),
      "detection_auroc": detection, "history": history, "stages_s": clock.stages}
  return record, (x[:6], masks[:6], translated[:6], maps[:6])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--count", type=int, default=300)
  parser.add_argument("--runs", default="runs/cracks",
                      help="where seed 0's models go ('' for nowhere)")
  parser.add_argument("--out", default="experiments/results/translator_mnist.json")
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    print_report("experiments/translator.py --report",
                 report_tables(json.loads(Path(args.out).read_text())))
    return
  train = cfajax.load_mnist(args.data_dir, "train").subset(slice(0, 20000))
  test = cfajax.load_mnist(args.data_dir, "test").subset(slice(0, 2000))
  out_of_distribution = {"uniform noise": np.random.default_rng(0).random(
      (2000, 28, 28, 1)).astype(np.float32)}
  faces = greyscale_faces(args.data_dir, 2000)
  if faces is not None:
    out_of_distribution["CelebA faces"] = faces
  record = {"hardware": hardware(), "sigma": SIGMA, "mask_fraction": FRACTION,
            "epochs": EPOCHS, "seeds": []}
  example = None
  for seed in SEEDS:
    result, shown = one_seed(seed, train, test, args.count, out_of_distribution,
                             args.runs if seed == 0 and args.runs else None)
    record["seeds"].append(result)
    example = example or shown
    print({k: v for k, v in result.items() if k != "history"}, flush=True)
  seeds = record["seeds"]
  summary = []
  for key in ("iou", "pointing", "flip_rate_by_classifier", "flip_rate_by_critic",
              "critic_test_accuracy", "classifier_test_accuracy", "mean_abs_change"):
    mean, half = interval([r[key] for r in seeds])
    summary.append({"measure": key, "mean ± 95%": f"{mean:.3f} ± {half:.3f}",
                    "per seed": [round(r[key], 3) for r in seeds]})
  detection = []
  for task in seeds[0]["detection_auroc"]:
    row = {"detect": task}
    for score in ("fakeness", "critic softmax", "classifier softmax"):
      if score in seeds[0]["detection_auroc"][task]:
        mean, half = interval([r["detection_auroc"][task][score] for r in seeds])
        row[score] = f"{mean:.3f} ± {half:.3f}"
    detection.append(row)
  record["summary"], record["detection"] = summary, detection
  write_json(args.out, record)
  print(markdown_table(summary, ["measure", "mean ± 95%", "per seed"]))
  print(markdown_table(detection, ["detect", "fakeness", "critic softmax", "classifier softmax"]))
  print_report("experiments/translator.py --report", report_tables(record))
  draw(*example)


MEASURES = (("iou", "IoU with the crack", False),
            ("pointing", "pointing game", True),
            ("flip_rate_by_classifier", "translations the classifier calls clean", True),
            ("flip_rate_by_critic", "translations the critic calls clean", True),
            ("critic_test_accuracy", "critic's test accuracy (real digits, 2 classes)", True),
            ("classifier_test_accuracy", "the classifier's test accuracy", True),
            ("mean_abs_change", "mean \\|x′ − x\\| per pixel", False))
FLAGS = (("misclassified by the critic", "the critic's errors"),
         ("uniform noise", "uniform noise"), ("CelebA faces", "CelebA faces"))


def report_tables(record: dict) -> dict:
  """The tables of experiments/RESULTS.md, "The translator", from a record of this script."""
  seeds = record["seeds"]
  rows = []
  for key, label, as_percent in MEASURES:
    values = [s[key] for s in seeds]
    mean, half = interval(values)
    if as_percent:
      rows.append([label, f"{100 * mean:.1f}% ± {100 * half:.1f}%",
                   ", ".join(f"{100 * v:.1f}" for v in values) + "%"])
    else:
      rows.append([label, f"{mean:.3f} ± {half:.3f}", ", ".join(f"{v:.3f}" for v in values)])
  tables = {"translations": results_table(["measure", "mean ± 95%", "per seed"], rows)}
  rows = []
  for task, label in FLAGS:
    if task not in seeds[0]["detection_auroc"]:
      continue
    cells = [label]
    for score in ("fakeness", "critic softmax", "classifier softmax"):
      values = [s["detection_auroc"][task].get(score) for s in seeds]
      cells.append("—" if None in values else "{:.3f} ± {:.3f}".format(*interval(values)))
    rows.append(cells + [", ".join(f"{s['detection_auroc'][task]['fakeness']:.3f}"
                                   for s in seeds)])
  tables["fakeness"] = results_table(
      ["flag", "fakeness", "critic softmax", "classifier softmax", "per seed (fakeness)"], rows)
  return tables


def draw(x, masks, translated, maps):
  plt = _pyplot()
  columns = ["digit with crack", "crack (truth)", "translated to clean", "|x' - x|, smoothed"]
  fig, axes = plt.subplots(len(x), len(columns), figsize=(1.5 * len(columns), 1.3 * len(x) + 0.4))
  for i in range(len(x)):
    _show(axes[i, 0], x[i])
    _show(axes[i, 1], masks[i][..., None].astype(np.float32))
    _show(axes[i, 2], translated[i])
    show_map(axes[i, 3], maps[i], masks[i])
  for j, name in enumerate(columns):
    axes[0, j].set_title(name, fontsize=6)
  fig.suptitle("The translator on planted cracks (seed 0; cyan: the crack)", fontsize=8)
  fig.tight_layout()
  save_figure(fig, "translator_mnist.png")


if __name__ == "__main__":
  main()
