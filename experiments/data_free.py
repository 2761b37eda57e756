"""Counterfactuals without a generator: DISC's components, one at a time, against the attacks.

Run (after the `cfajax train` commands in experiments/RESULTS.md, "Models"):

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/data_free.py \\
        --data-dir ../shared/data --runs runs/mnist
    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/data_free.py \\
        --dataset celeba --data-dir ../shared/data --runs runs/celeba

Reads <runs>/classifier (explained), <runs>/oracle (an independent judge)
and <runs>/vae (the latent attack, and the encoder that measures
attributions), and DISC's manifold-consistency models: for MNIST
<runs>/duq (trained here, 3 epochs, when absent); for CelebA one per
decision, <runs>/duq-<Head> (`cfajax train duq --dataset celeba
--attributes <Head>`). The queries:

- MNIST: test digits of each of the seven digit pairs of experiments/mnist.py
  (correctly classified sources, `--per-pair` each);
- CelebA 64×64: for each of Young, Attractive and Male, `--per-decision`
  held-out faces (the last 1,000 of the shared 10,000) whose attribute the
  classifier gets right, half on each side, each pushed to the other side.

On them it runs, at thresholds 0.5 and 0.9:

- the pixel attack (plain ascent, step 0.01: the adversarial baseline);
- plain deep inversion: pixels with total-variation, l2 and proximity priors;
- plain deep inversion plus each DISC component alone: the implicit (INR)
  prior, the manifold-consistency term (DUQ), progressive optimisation;
- full DISC (all three);
- cfajax's latent attack through the VAE.

Each is measured by flip rate, median steps, oracle agreement, proximity to
the query (pixel L1 and L2), realism (the Fréchet distance, in the oracle's
penultimate features, to as many real training images of the target
classes) and counterfactuals per second (wall time of the attack call on
this machine, compilation included, as a user meets it). Global
attributions psi of plain inversion, full DISC and the latent attack are
measured by encoding x and x' with the VAE's encoder (the VAE is used for
measurement only): for MNIST 4→9 on the digit descriptors, for CelebA each
decision on the other attributes' labels. The defaults of
`data_free_attack` were chosen by `--tune` on MNIST training digits (4→9,
disjoint from the test digits): the setting of highest oracle agreement
among those flipping >= 95%. `--dataset celeba --tune` repeats a smaller
search on auxiliary faces (Young, disjoint from the held-out faces), and the
CelebA ablation uses its choice when its record exists.

Writes experiments/results/data_free_<dataset>.json, prints the markdown
tables of experiments/RESULTS.md, and draws
experiments/figures/data_free_<dataset>.png. MNIST: about 15 minutes on 2 CPU
cores (`--tune`, run first: about 13). CelebA: about 18 minutes (`--tune`:
about 7). `--report` prints the tables of an existing record.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

import cfajax
from cfajax import metrics
from cfajax.experimental import descriptor_tables
from cfajax.experimental import with_attribute_labels

from common import FIGURES
from common import Stopwatch
from common import _pyplot
from common import _show
from common import apply
from common import hardware
from common import markdown_table
from common import oracle_features
from common import percent
from common import print_report
from common import psi_agreement
from common import results_table
from common import save_figure
from common import save_small
from common import signed
from common import write_json

PAIRS = ((4, 9), (8, 9), (1, 7), (9, 7), (5, 6), (0, 8), (3, 2))
HEADS = ("Young", "Attractive", "Male")
HOLDOUT = 1000  # the held-out CelebA faces, as `cfajax train` holds them out
THRESHOLDS = (0.5, 0.9)
PIXEL = {"step_size": 0.01, "max_steps": 500}
LATENT = {"step_size": 0.1, "max_steps": 500}
PLAIN = {"prior": "pixels", "progressive": False, "l2_weight": 0.05}
VARIANTS = {
    "plain deep inversion": {**PLAIN},
    "+ implicit prior": {**PLAIN, "prior": "implicit"},
    "+ manifold (DUQ)": {**PLAIN, "manifold": True},
    "+ progressive": {**PLAIN, "progressive": True},
    "DISC (all three)": {**PLAIN, "prior": "implicit", "progressive": True, "manifold": True},
}
SHOWN = ("pixel attack", "plain deep inversion", "DISC (all three)", "latent attack (VAE)")
# The weight searches (tv, proximity, manifold, learning rate of full DISC): MNIST's chose
# `data_free_attack`'s defaults; CelebA's leaves out learning rate 3e-4, for 2 CPU cores.
TUNE_GRIDS = {
    "mnist": ((0.05,), (1.0, 3.0, 10.0, 30.0, 100.0), (0.003, 0.03, 0.3), (3e-4, 1e-3)),
    "celeba": ((0.05,), (1.0, 3.0, 10.0, 30.0, 100.0), (0.003, 0.03, 0.3), (1e-3,)),
}


def variants(weights=None):
  """`VARIANTS` with tuned weights: tv, proximity and manifold for all, the learning
  rate for those with the implicit prior (the pixel variants keep theirs)."""
  if not weights:
    return VARIANTS
  shared = {k: weights[k] for k in ("tv_weight", "proximity_weight", "manifold_weight")}
  return {name: {**options, **shared,
                 **({"step_size": weights["step_size"]} if options["prior"] == "implicit" else {})}
          for name, options in VARIANTS.items()}


def data_free(classifier, duq, x, target, threshold, options):
  options = dict(options)
  manifold = duq if options.pop("manifold", False) else None
  return cfajax.data_free_attack(classifier, x, target, threshold=threshold, max_steps=500,
                                 manifold=manifold, **options)


def target_certainty(duq, images, target) -> np.ndarray:
  """DUQ's certainty K_t(x) of each image's target class."""
  return np.exp(np.asarray(apply(duq.log_certainty, images)))[np.arange(len(images)), target]


def measure(name, images, cf, result, target, seconds, oracle, features, reference, duq):
  success = np.asarray(result.status) == cfajax.Status.REACHED
  delta = (cf - images).reshape(len(images), -1)[success]
  certainty = target_certainty(duq, cf, target)
  return {
      "variant": name, "n": int(len(images)), "flip_rate": float(success.mean()),
      "median_steps": (float(np.median(np.asarray(result.steps)[success])) if success.any()
                       else None),
      "oracle_agreement": metrics.oracle_agreement(oracle, cf, target,
                                                   success=success)["agreement"],
      "median_l1": float(np.median(np.abs(delta).mean(1))) if success.any() else None,
      "median_l2": float(np.median(np.linalg.norm(delta, axis=1))) if success.any() else None,
      "frechet": metrics.frechet_distance(features, cf, reference, success=success)["distance"],
      "duq_target_certainty": float(np.median(certainty[success])) if success.any() else None,
      "per_second": float(len(images) / seconds), "seconds": round(seconds, 2)}


def tune(classifier, oracle, duq, x, target, grid):
  """Full DISC's weights on queries disjoint from the ablation's, at threshold 0.9."""
  rows = []
  for tv, proximity, manifold, lr in itertools.product(*grid):
    options = {**VARIANTS["DISC (all three)"], "tv_weight": tv, "proximity_weight": proximity,
               "manifold_weight": manifold, "step_size": lr}
    start = time.perf_counter()
    result = data_free(classifier, duq, x, target, 0.9, options)
    success = np.asarray(result.success)
    cf = np.asarray(result.images)
    rows.append({"tv_weight": tv, "proximity_weight": proximity, "manifold_weight": manifold,
                 "step_size": lr, "flip_rate": float(success.mean()),
                 "oracle_agreement": metrics.oracle_agreement(
                     oracle, cf, target, success=success)["agreement"],
                 "median_l1": float(np.median(np.abs(cf - x).mean((1, 2, 3)))),
                 "seconds": round(time.perf_counter() - start, 1)})
    print(rows[-1], flush=True)
  eligible = [r for r in rows if r["flip_rate"] >= 0.95]
  best = max(eligible, key=lambda r: (r["oracle_agreement"], -r["median_l1"]))
  floor = metrics.oracle_agreement(oracle, x, target)["agreement"]
  return {"grid": rows, "chosen": best, "oracle_agreement_on_queries": floor}


def ablation(classifier, oracle, duq, vae, x, z, target, reference, weights=None):
  """Every attack on the queries `x` (encoded: `z`) at each threshold.

  Returns (rows, images, reached): the metrics of each (attack, threshold), and
  its counterfactuals and which reached the target, by (attack, threshold).
  """
  features = oracle_features(oracle)
  rows, images, reached = [], {}, {}

  def attack(name, threshold, run):
    start = time.perf_counter()
    result, cf = run()
    seconds = time.perf_counter() - start
    rows.append({"threshold": threshold, **measure(name, x, cf, result, target, seconds,
                                                   oracle, features, reference, duq)})
    images[(name, threshold)] = cf
    reached[(name, threshold)] = np.asarray(result.success)
    print(rows[-1], flush=True)

  def pixel(threshold):
    result = metrics.pixel_attack(classifier, x, target, threshold=threshold, **PIXEL)
    return result, metrics.pixel_counterfactuals(result, x.shape[1:])

  def latent(threshold):
    result = cfajax.counterfactual_attack(vae.decode, classifier, z, target,
                                          threshold=threshold, **LATENT, optimizer="ascent")
    return result, np.asarray(apply(vae.decode, np.asarray(result.z)))

  # Each closure in this loop is called within its iteration, so it sees that iteration's values.
  for threshold in THRESHOLDS:
    attack("pixel attack", threshold, lambda: pixel(threshold))  # noqa: B023
    for name, options in variants(weights).items():
      def run(options=options):
        result = data_free(classifier, duq, x, target, threshold, options)  # noqa: B023
        return result, np.asarray(result.images)
      attack(name, threshold, run)
    attack("latent attack (VAE)", threshold, lambda: latent(threshold))  # noqa: B023
  return rows, images, reached


def confirmed(oracle, images, reached, target, groups, threshold=0.9):
  """Per group of queries (a digit pair, a direction of a decision) at `threshold`:
  flip rate, oracle agreement over the flips, and the share of all its queries whose
  counterfactual reached the target and is called the target by the oracle (a failed
  attack counts against its variant)."""
  out = []
  for label, rows in groups:
    for name in ("plain deep inversion", "DISC (all three)", "latent attack (VAE)"):
      done = reached[(name, threshold)][rows]
      believed = metrics.oracle_agreement(oracle, images[(name, threshold)][rows], target[rows],
                                          success=done)
      out.append({"group": label, "variant": name, "flip_rate": float(done.mean()),
                  "oracle_agreement": believed["agreement"],
                  "confirmed": float(np.mean(done & believed["per_example"]))})
  return out


def attributions(probes, encode, prob, z, images, reached, rows, names, threshold=0.9):
  """psi of plain inversion, DISC and the latent attack on `rows` of the queries, phi
  measured by encoding x' with `encode` (for measurement only); None for an attack
  that reached the target on none of them."""
  out = {}
  for name in ("DISC (all three)", "plain deep inversion", "latent attack (VAE)"):
    if not reached[(name, threshold)][rows].any():
      out[name] = None
      continue
    z_cf = np.asarray(apply(encode, images[(name, threshold)][rows]))
    phi = np.asarray(cfajax.local_attributions(probes, z[rows], z_cf))
    psi = cfajax.global_attributions(phi, prob[rows], success=reached[(name, threshold)][rows],
                                     names=names, num_bootstrap=1000, seed=0)
    out[name] = psi.to_dict()
  return out


def load_duq(path, train=None, test=None):
  """The manifold model at `path`; for MNIST trained there (3 epochs) when absent."""
  if Path(path).exists():
    return cfajax.load_model(path)
  if train is None:
    raise SystemExit(f"no DUQ at {path}: train one with `cfajax train duq --dataset celeba "
                     f"--attributes {Path(path).name.removeprefix('duq-')} --out {path}`")
  duq = cfajax.DUQ(cfajax.DUQConfig(image_shape=train.image_shape),
                   rngs=__import__("flax").nnx.Rngs(0))
  duq, history = cfajax.train_duq(duq, train, test, epochs=3)
  cfajax.save_model(path, duq, metrics=history[-1])
  return duq


def run_mnist(args, record, clock):
  runs = Path(args.runs)
  classifier, oracle, vae = (cfajax.load_model(runs / n) for n in ("classifier", "oracle", "vae"))
  train = cfajax.load_mnist(args.data_dir, "train")
  test = cfajax.load_mnist(args.data_dir, "test")
  record["per_pair"] = args.per_pair
  duq = load_duq(runs / "duq", train, test)
  record["duq"] = cfajax.evaluate_duq(duq, test)
  clock.lap("models")
  if args.tune:
    x = train.images[np.flatnonzero(train.labels == 4)[-60:]]
    record["tuning"] = tune(classifier, oracle, duq, x, np.full(len(x), 9), TUNE_GRIDS["mnist"])
    return

  predicted = np.asarray(apply(classifier, test.images)).argmax(-1)
  chosen = [np.flatnonzero((test.labels == a) & (predicted == a))[:args.per_pair] for a, _ in PAIRS]
  idx = np.concatenate(chosen)
  x = test.images[idx]
  target = np.concatenate([np.full(len(c), b) for c, (_, b) in zip(chosen, PAIRS, strict=True)])
  source = test.labels[idx]
  rng = np.random.default_rng(0)
  reference = np.stack([train.images[rng.choice(np.flatnonzero(train.labels == t))]
                        for t in target])
  record["queries"] = int(len(x))
  z = np.asarray(apply(vae.encode, x))
  rows, images, reached = ablation(classifier, oracle, duq, vae, x, z, target, reference)
  record["ablation"] = rows
  record["duq_target_certainty_of_queries"] = float(np.median(target_certainty(duq, x, target)))
  record["real_frechet_floor"] = metrics.frechet_distance(
      oracle.features, test.images[np.flatnonzero(np.isin(test.labels, target))[:len(x)]],
      reference)["distance"]
  clock.lap("ablation")
  record["groups"] = confirmed(oracle, images, reached, target,
                               [(f"{a}→{b}", source == a) for a, b in PAIRS])

  # Global attributions for 4→9: phi through the VAE's encoder, for measurement only.
  aux = cfajax.split_dataset(train, 5000, seed=0)[1]
  (table,), _ = descriptor_tables(aux)
  probes = cfajax.fit_probes(np.asarray(apply(vae.encode, aux.images)), table.values,
                             names=table.names)
  four = source == 4
  prob = np.asarray(apply(classifier.probabilities, x))[:, 9]
  record["attributions"] = {"4→9": attributions(probes, vae.encode, prob, z, images, reached,
                                                four, table.names)}
  clock.lap("attributions")
  picks = [int(np.flatnonzero(source == a)[0]) for a, _ in PAIRS]
  draw(x, images, reached, picks, [f"{source[k]}→{target[k]}" for k in picks],
       "MNIST counterfactuals at threshold 0.9", "data_free_mnist.png")


def balanced_queries(classifier, dataset, count):
  """Up to `count` faces whose attribute (`dataset`'s 0/1 labels) the classifier gets
  right, half with it and half without, and their targets (the other side)."""
  label = dataset.labels
  right = (metrics.target_probability(classifier, dataset.images, 1) >= 0.5) == (label == 1)
  rows = np.concatenate([np.flatnonzero(right & (label == side))[:count // 2] for side in (1, 0)])
  return rows, 1 - label[rows]


def run_celeba(args, record, clock):
  runs = Path(args.runs)
  classifier, oracle = (cfajax.load_model(runs / n) for n in ("classifier", "oracle"))
  duqs = {head: load_duq(runs / f"duq-{head}") for head in HEADS[:1 if args.tune else None]}
  faces = cfajax.load_celeba(args.data_dir, "train", 64)
  aux, test = cfajax.split_dataset(faces, HOLDOUT, seed=None)  # as `cfajax train` held out
  record["duq"] = {head: cfajax.evaluate_duq(duq, with_attribute_labels(test, head))
                   for head, duq in duqs.items()}
  clock.lap("models")
  heads = {head: (cfajax.select_output(classifier, head), cfajax.select_output(oracle, head))
           for head in HEADS}
  if args.tune:
    clf, judge = heads[HEADS[0]]
    rows, target = balanced_queries(clf, with_attribute_labels(aux, HEADS[0]), 40)
    record["tuning"] = tune(clf, judge, duqs[HEADS[0]], aux.images[rows], target,
                            TUNE_GRIDS["celeba"])
    return

  vae = cfajax.load_model(runs / "vae")
  tuned = tuning_path(args)
  weights = json.loads(tuned.read_text())["tuning"]["chosen"] if tuned.exists() else None
  record["weights"] = weights or "data_free_attack's defaults"
  z_aux = np.asarray(apply(vae.encode, aux.images))
  keep, excluded = cfajax.select_probe_attributes(faces.attribute_names, aux.attributes, HEADS)
  names = [faces.attribute_names[i] for i in keep]
  probes = cfajax.fit_probes(z_aux, aux.attributes[:, keep], names=names, standardize=True,
                             class_weight="balanced")
  record.update({"per_decision": args.per_decision, "probe_attributes": names,
                 "excluded_attributes": excluded, "decisions": {}})
  clock.lap("probes")
  rng = np.random.default_rng(0)
  shown, labels = [], []  # per decision: a query of each side and its counterfactuals at 0.9
  for head, (clf, judge) in heads.items():
    test_head, aux_head = (with_attribute_labels(d, head) for d in (test, aux))
    rows, target = balanced_queries(clf, test_head, args.per_decision)
    x = test.images[rows]
    reference = aux.images[[rng.choice(np.flatnonzero(aux_head.labels == t)) for t in target]]
    others = np.setdiff1d(np.arange(len(test)), rows)
    side = test_head.labels[others]
    real = np.concatenate([test.images[others[side == t]][:int((target == t).sum())]
                           for t in (0, 1)])
    duq = duqs[head]
    z = np.asarray(apply(vae.encode, x))
    table, images, reached = ablation(clf, judge, duq, vae, x, z, target, reference, weights)
    out = {"queries": int(len(x)), "ablation": table,
           # the oracle's agreement with the target before any change: the floor to beat
           "oracle_agreement_on_queries": metrics.oracle_agreement(judge, x, target)["agreement"],
           "duq_target_certainty_of_queries": float(np.median(target_certainty(duq, x, target))),
           "real_frechet_floor": metrics.frechet_distance(oracle_features(judge), real,
                                                          reference)["distance"],
           "groups": confirmed(judge, images, reached, target,
                               [(f"→ {head}", target == 1), (f"→ not {head}", target == 0)])}
    prob = metrics.target_probability(clf, x, 1)
    out["attributions"] = {head: attributions(probes, vae.encode, prob, z, images, reached,
                                              np.ones(len(x), bool), names)}
    record["decisions"][head] = out
    picks = [int(np.flatnonzero(target == t)[0]) for t in (1, 0)]
    shown.append((x[picks], {k: v[picks] for k, v in images.items() if k[1] == 0.9},
                  {k: v[picks] for k, v in reached.items() if k[1] == 0.9}))
    labels += [f"→ {'' if target[k] else 'not '}{head}" for k in picks]
    clock.lap(head)
  joined = lambda part: {k: np.concatenate([s[part][k] for s in shown]) for k in shown[0][part]}
  draw(np.concatenate([s[0] for s in shown]), joined(1), joined(2), np.arange(len(labels)),
       labels, "CelebA 64×64 counterfactuals at threshold 0.9", "data_free_celeba.png")


def tuning_path(args) -> Path:
  name = "data_free_tuning.json" if args.dataset == "mnist" else "data_free_celeba_tuning.json"
  return Path(args.out).with_name(name)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=("mnist", "celeba"), default="mnist")
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--runs", default=None, help="default: runs/<dataset>")
  parser.add_argument("--per-pair", type=int, default=40, help="MNIST queries per digit pair")
  parser.add_argument("--per-decision", type=int, default=100,
                      help="CelebA queries per decision (half on each side)")
  parser.add_argument("--tune", action="store_true",
                      help="run only the weight search (writes data_free_tuning.json for MNIST, "
                           "data_free_celeba_tuning.json for CelebA)")
  parser.add_argument("--out", default=None,
                      help="default: experiments/results/data_free_<dataset>.json")
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  args.runs = args.runs or f"runs/{args.dataset}"
  command = f"experiments/data_free.py --dataset {args.dataset} --report" + (
      f" --out {args.out}" if args.out else "")
  args.out = args.out or f"experiments/results/data_free_{args.dataset}.json"
  if args.report:
    report(json.loads(Path(args.out).read_text()), command)
    return
  clock = Stopwatch()
  record = {"hardware": hardware(), "dataset": args.dataset}
  (run_mnist if args.dataset == "mnist" else run_celeba)(args, record, clock)
  if args.tune:
    clock.lap("tune")
    record["stages_s"] = clock.stages
    write_json(tuning_path(args), record)
    print(markdown_table(record["tuning"]["grid"], list(record["tuning"]["grid"][0])))
    print("chosen:", record["tuning"]["chosen"])
    return
  record["stages_s"] = clock.stages
  write_json(args.out, record)
  report(record, command)


def draw(x, images, reached, picks, labels, title, name):
  """Queries and their counterfactuals at 0.9 (rows `picks`); a failed attack's last
  image is framed in red and marked "failed"."""
  plt = _pyplot()
  columns = ("query",) + SHOWN
  fig, axes = plt.subplots(len(picks), len(columns), figsize=(1.3 * len(columns),
                                                                1.3 * len(picks) + 0.4))
  for i, k in enumerate(picks):
    for j, column in enumerate(columns):
      _show(axes[i, j], x[k] if column == "query" else images[(column, 0.9)][k])
      if column != "query" and not reached[(column, 0.9)][k]:
        for spine in axes[i, j].spines.values():
          spine.set_color("red")
          spine.set_linewidth(2)
        axes[i, j].set_xlabel("failed", fontsize=6, color="red")
      if i == 0:
        axes[i, j].set_title(column, fontsize=6)
    axes[i, 0].set_ylabel(labels[i], fontsize=7)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  if x.shape[-1] == 3:
    save_small(fig, FIGURES / name, dpi=110)
  else:
    save_figure(fig, name)


def report(record, command):
  """Prints the tables of experiments/RESULTS.md, then the numbers its prose quotes."""
  print_report(command, report_tables(record))
  parts = record["decisions"] if record["dataset"] == "celeba" else {"MNIST": record}
  for title, part in parts.items():
    print(f"{title}: real images' Fréchet floor {part['real_frechet_floor']:.1f}; DUQ's "
          f"certainty of the target at the queries {part['duq_target_certainty_of_queries']:.3f}")
    if "oracle_agreement_on_queries" in part:
      print(f"{title}: the oracle's agreement with the target on the queries themselves "
            f"{part['oracle_agreement_on_queries']:.3f}")
    for decision, by_attack in part["attributions"].items():
      latent = by_attack["latent attack (VAE)"]
      for name in ("DISC (all three)", "plain deep inversion"):
        if by_attack[name] is not None and latent is not None:
          values = [[p["attributes"][a]["psi"] for a in latent["attributes"]]
                    for p in (by_attack[name], latent)]
          print(f"{decision}, psi of {name} against the latent attack's:", psi_agreement(*values))
  print(record["stages_s"])


def _top(psi, count: int) -> str:
  """`count` attributes of largest |psi|, each with its 95% bootstrap interval."""
  if psi is None:
    return "no counterfactual reached the target"
  cells = []
  for name in psi["ranking"][:count]:
    value = psi["attributes"][name]
    cells.append("{} {} [{}, {}]".format(name, *(signed(v, 2) for v in [value["psi"],
                                                                         *value["ci"]])))
  return ", ".join(cells)


def report_tables(record) -> dict:
  """The tables of experiments/RESULTS.md, "Counterfactuals without a generator"."""
  if record["dataset"] == "celeba":
    return _celeba_tables(record)
  tables = {"ablation": results_table(
      ["threshold:", "attack", "flip rate:", "median steps:", "oracle agreement:",
       "median L1 / L2 from x", "Fréchet:", "DUQ certainty of target:"],
      [[f"{row['threshold']:g}", row["variant"], percent(row["flip_rate"]),
        f"{row['median_steps']:g}", percent(row["oracle_agreement"]),
        f"{row['median_l1']:.3f} / {row['median_l2']:.2f}", f"{row['frechet']:.0f}",
        f"{row['duq_target_certainty']:.2f}"] for row in record["ablation"]])}
  shown = ("plain deep inversion", "DISC (all three)", "latent attack (VAE)")
  cells = {(g["group"], g["variant"]): g for g in record["groups"]}
  groups = list(dict.fromkeys(g["group"] for g in record["groups"]))
  tables["pairs"] = results_table(
      ["pair"] + [f"{variant}: flip / confirmed" for variant in shown],
      [[group] + [f"{percent(cells[group, v]['flip_rate'])} / "
                  f"{percent(cells[group, v]['confirmed'])}" for v in shown]
       for group in groups])
  tables["attributions"] = results_table(
      ["decision", "attack", "top 5 (ψ, 95% bootstrap interval)"],
      [[decision, name, _top(psi, 5)]
       for decision, by_attack in record["attributions"].items()
       for name, psi in by_attack.items()])
  return tables


def _celeba_tables(record) -> dict:
  parts = record["decisions"]
  heads = " / ".join(parts)
  tables = {}
  for threshold in (0.9, 0.5):
    rows = {}
    for part in parts.values():
      for row in part["ablation"]:
        if row["threshold"] == threshold:
          rows.setdefault(row["variant"], []).append(row)
    tables[f"ablation at {threshold:g}"] = results_table(
        ["threshold", "attack", f"oracle agreement: {heads}", f"Fréchet: {heads}",
         "median steps", "median L1 from x", "DUQ certainty of target", "counterfactuals/s"],
        [[f"{threshold:g}", variant,
          " / ".join(percent(r["oracle_agreement"], 0) for r in by_head),
          " / ".join(f"{r['frechet']:.0f}" for r in by_head),
          " / ".join(f"{r['median_steps']:g}" for r in by_head),
          " / ".join(f"{r['median_l1']:.3f}" for r in by_head),
          " / ".join(f"{r['duq_target_certainty']:.2f}" for r in by_head),
          " / ".join(f"{r['per_second']:.1f}" for r in by_head)]
         for variant, by_head in rows.items()])
  shown = ("plain deep inversion", "DISC (all three)", "latent attack (VAE)")
  rows = []
  for part in parts.values():
    cells = {(g["group"], g["variant"]): g for g in part["groups"]}
    for group in dict.fromkeys(g["group"] for g in part["groups"]):
      rows.append([group] + [percent(cells[group, v]["confirmed"]) for v in shown])
  tables["directions"] = results_table(["direction"] + [f"{v}:" for v in shown], rows)
  tables["attributions"] = results_table(
      ["decision", "attack", "top 3 (ψ, 95% bootstrap interval)"],
      [[decision, name, _top(psi, 3)]
       for part in parts.values()
       for decision, by_attack in part["attributions"].items()
       for name, psi in by_attack.items()])
  return tables


if __name__ == "__main__":
  main()
