"""Counterfactual training for robustness (Bischof et al.), against PGD training, measured.

Run:

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/robustness.py \\
        --data-dir ../shared/data

Two datasets: MNIST (the first 10,000 training digits; the first 1,000 test
digits) and scikit-learn's 8x8 digits (80/20 split, seed 0). Per seed (0, 1,
2), four classifiers of the same architecture (the recipe's CNN, 10 classes)
learn the same images for the same number of epochs:

- plain: cross-entropy on the images;
- PGD training: on each batch's L-infinity PGD images (epsilon 0.1, 7 steps,
  random start; `train_classifier(pgd_epsilon=...)`), the standard reference;
- translator critic (Bischof's recipe): a `Translator` trained on the images;
  its critic, which learns real images as their class and the translator's
  counterfactuals as an 11th class "fake", is the classifier (its 10 class
  logits);
- latent counterfactuals as fake: the same 11-class idea with cfajax's
  counterfactuals instead of a translator's: the latent attack through a VAE
  (trained once per dataset) against the plain classifier of the seed moves
  every training image to a random other class (threshold 0.9, step 0.1, at
  most 200 steps); the classifier learns the images as their classes and the
  counterfactuals that flipped as "fake".

Each is scored on the test images: clean accuracy, and accuracy under PGD
(`robust_accuracy`, random start, step 2.5 epsilon / steps) in L-infinity
and L2 for several epsilons, at 10 and 40 steps. Tables: mean over seeds
with a 95% t-interval. Writes experiments/results/robustness.json and
experiments/figures/robustness.png, and seed 0's translators to
runs/robustness/<dataset>/translator. About 50 minutes on 2 CPU cores.
`--report` prints the tables of the record at --out, running nothing: the
accuracies at 40 steps, and each method's paired difference from the plain
classifier (the same seeds, data and attacks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from flax import nnx

import cfajax

from common import Stopwatch
from common import _pyplot
from common import apply
from common import hardware
from common import interval
from common import markdown_table
from common import print_report
from common import results_table
from common import save_figure
from common import write_json

SEEDS = (0, 1, 2)
STEPS = (10, 40)
METHODS = ("plain", "PGD training", "translator critic (Bischof)",
           "latent counterfactuals as fake")


@dataclasses.dataclass(frozen=True)
class Setup:
  """One dataset's sizes, training lengths and attack budgets."""
  classifier_widths: tuple[int, ...]
  translator_widths: tuple[int, ...]
  latent_dim: int
  beta: float
  epochs: int
  vae_epochs: int
  linf: tuple[float, ...]
  l2: tuple[float, ...]
  train_epsilon: float = 0.1


SETUPS = {
    "mnist": Setup((32, 64), (16, 32, 64), 16, 0.5, 3, 5, (0.05, 0.1, 0.2, 0.3), (1.0, 2.0)),
    "digits": Setup((32, 64), (16, 32), 8, 0.25, 30, 60, (0.05, 0.1, 0.2), (0.5, 1.0)),
}


class ClassLogits(nnx.Module):
  """The first K logits of a (K + 1)-output classifier: its classes, not "fake"."""

  def __init__(self, model, k: int):
    self.model = model
    self.k = k

  def __call__(self, x):
    return self.model(x)[:, :self.k]


def load(name, data_dir):
  if name == "mnist":
    return (cfajax.load_mnist(data_dir, "train").subset(slice(0, 10000)),
            cfajax.load_mnist(data_dir, "test").subset(slice(0, 1000)))
  return cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)


def latent_counterfactuals(vae, classifier, train, seed):
  """Each training image moved by the latent attack to a random other class; those that
  reached it."""
  rng = np.random.default_rng(seed)
  targets = (train.labels + rng.integers(1, 10, len(train))) % 10
  z = np.asarray(apply(vae.encode, train.images))
  result = cfajax.counterfactual_attack(vae.decode, classifier, z, targets, threshold=0.9,
                                        step_size=0.1, max_steps=200, progress=False,
                                        optimizer="ascent")
  success = np.asarray(result.success)
  images = np.asarray(apply(vae.decode, np.asarray(result.z)[success]))
  return images, float(success.mean())


def train_all(name, setup, train, test, vae, seed):
  """The four classifiers of one seed, with their training seconds."""
  clock = Stopwatch()
  shape = train.image_shape
  config = cfajax.ClassifierConfig(shape, widths=setup.classifier_widths)
  options = dict(epochs=setup.epochs, seed=seed, progress=False)
  plain, _ = cfajax.train_classifier(cfajax.build_model("classifier", config, seed), train,
                                     **options)
  clock.lap("plain")
  pgd, _ = cfajax.train_classifier(cfajax.build_model("classifier", config, seed), train,
                                   pgd_epsilon=setup.train_epsilon, pgd_steps=7, **options)
  clock.lap("PGD training")
  translator = cfajax.build_model("translator", cfajax.TranslatorConfig(
      shape, num_classes=10, widths=setup.translator_widths,
      critic_widths=setup.classifier_widths), seed)
  translator, history = cfajax.train_translator(translator, train, **options)
  clock.lap("translator critic (Bischof)")
  fakes, flipped = latent_counterfactuals(vae, plain, train, seed)
  clock.lap("latent counterfactuals")
  augmented = cfajax.ImageDataset(
      np.concatenate([train.images, fakes]),
      np.concatenate([train.labels, np.full(len(fakes), 10)]).astype(np.int32))
  fake_aware = cfajax.build_model("classifier", dataclasses.replace(config, num_outputs=11),
                                  seed)
  fake_aware, _ = cfajax.train_classifier(fake_aware, augmented, **options)
  clock.lap("latent counterfactuals as fake")
  models = {"plain": plain, "PGD training": pgd, "translator critic (Bischof)": translator,
            "latent counterfactuals as fake": ClassLogits(fake_aware, 10)}
  info = {"latent_counterfactuals": int(len(fakes)), "latent_flip_rate": flipped,
          "translator_flipped": history[-1]["train_flipped"], "train_s": clock.stages}
  return models, info


def evaluate(model, setup, test, seed):
  scores = {}
  for norm, epsilons in (("linf", setup.linf), ("l2", setup.l2)):
    for epsilon in epsilons:
      for steps in STEPS:
        out = cfajax.robust_accuracy(model, test.images, test.labels, epsilon=epsilon,
                                     norm=norm, steps=steps, seed=seed)
        scores["clean"] = out["clean"]
        scores[f"{norm} {epsilon:g} ({steps})"] = out["robust"]
  return scores


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--datasets", default="digits,mnist")
  parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  parser.add_argument("--runs", default="runs/robustness",
                      help="where seed 0's translators go ('' for nowhere)")
  parser.add_argument("--out", default="experiments/results/robustness.json")
  parser.add_argument("--quick", action="store_true",
                      help="2 epochs (VAE 3): a check that the script runs, not a result")
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    print_report("experiments/robustness.py --report",
                 report_tables(json.loads(Path(args.out).read_text())))
    return
  record = {"hardware": hardware(), "steps": STEPS, "datasets": {}}
  for name in args.datasets.split(","):
    setup = SETUPS[name]
    if args.quick:
      setup = dataclasses.replace(setup, epochs=2, vae_epochs=3)
    train, test = load(name, args.data_dir)
    clock = Stopwatch()
    vae = cfajax.build_model("vae", cfajax.VAEConfig(
        train.image_shape, latent_dim=setup.latent_dim, widths=setup.classifier_widths,
        beta=setup.beta), seed=0)
    vae, _ = cfajax.train_vae(vae, train, epochs=setup.vae_epochs, progress=False)
    entry = {"setup": dataclasses.asdict(setup), "train_examples": len(train),
             "test_examples": len(test), "vae_train_s": clock.lap("vae"), "seeds": []}
    for seed in (int(s) for s in args.seeds.split(",")):
      models, info = train_all(name, setup, train, test, vae, seed)
      if seed == 0 and args.runs:  # benchmarks/translator_throughput.py times this one
        cfajax.save_model(Path(args.runs) / name / "translator",
                          models["translator critic (Bischof)"])
      scores = {method: evaluate(model, setup, test, seed) for method, model in models.items()}
      info["seed_s"] = clock.lap(f"seed {seed}")  # training and scoring
      entry["seeds"].append({"seed": seed, **info, "scores": scores})
      print(name, seed, info, {m: s["clean"] for m, s in scores.items()}, flush=True)
    entry["table"] = table(entry["seeds"])
    record["datasets"][name] = entry
    write_json(args.out, record)
    print(f"\n{name}\n" + markdown_table(entry["table"], ["method"] + columns(entry["seeds"], 40)))
  print_report("experiments/robustness.py --report", report_tables(record))
  draw(record)


TITLES = {"mnist": "MNIST", "digits": "digits (8×8)"}


def _heading(key: str) -> str:
  """"linf 0.1 (40)" -> "L∞ 0.1"."""
  norm, epsilon = key.split()[:2]
  return f"{'L∞' if norm == 'linf' else 'L2'} {epsilon}"


def _mean_and_half(values, sign: str = "") -> str:
  mean, half = interval(values)
  text = f"{mean:{sign}.3f}".replace("-", "−")
  return text if round(half, 3) == 0 else f"{text} ± {half:.3f}"


def report_tables(record: dict, steps: int = 40) -> dict:
  """The tables of experiments/RESULTS.md, "Counterfactual training against PGD training"."""
  tables = {}
  for name, entry in record["datasets"].items():
    seeds, keys = entry["seeds"], columns(entry["seeds"], steps)
    title = TITLES.get(name, name)
    headings = ["clean"] + [_heading(k) for k in keys[1:]]
    tables[f"{name} accuracy"] = results_table(
        [title, *headings],
        [[method, *(_mean_and_half([s["scores"][method][k] for s in seeds]) for k in keys)]
         for method in METHODS])
    tables[f"{name} against plain"] = results_table(
        [f"{title}: minus plain", *headings],
        [[method, *(_mean_and_half([s["scores"][method][k] - s["scores"]["plain"][k]
                                    for s in seeds], "+") for k in keys)]
         for method in METHODS[1:]])
  return tables


def columns(seeds, steps):
  keys = seeds[0]["scores"]["plain"]
  return ["clean"] + [k for k in keys if k.endswith(f"({steps})")]


def table(seeds):
  rows = []
  for method in METHODS:
    row = {"method": method}
    for key in seeds[0]["scores"][method]:
      mean, half = interval([s["scores"][method][key] for s in seeds])
      row[key] = f"{mean:.3f} ± {half:.3f}"
    rows.append(row)
  return rows


def draw(record):
  plt = _pyplot()
  panels = [(name, norm) for name in record["datasets"] for norm in ("linf", "l2")]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
  for ax, (name, norm) in zip(np.atleast_1d(axes), panels, strict=True):
    seeds = record["datasets"][name]["seeds"]
    setup = record["datasets"][name]["setup"]
    epsilons = [0.0] + list(setup[norm])
    for i, method in enumerate(METHODS):
      for steps, style in zip(STEPS, (":", "-"), strict=True):
        values = [[s["scores"][method]["clean"]] + [
            s["scores"][method][f"{norm} {e:g} ({steps})"] for e in setup[norm]] for s in seeds]
        ax.plot(epsilons, np.mean(values, 0), style, color=f"C{i}",
                label=method if steps == STEPS[-1] else None)
    ax.set_title(f"{name}, {'L∞' if norm == 'linf' else 'L2'} PGD", fontsize=8)
    ax.set_xlabel("epsilon", fontsize=7)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=6)
  axes[0].set_ylabel("test accuracy (solid: 40 steps, dotted: 10)", fontsize=7)
  axes[0].legend(fontsize=5.5, loc="lower left")
  fig.tight_layout()
  save_figure(fig, "robustness.png", dpi=120)


if __name__ == "__main__":
  main()
