"""CelebA 64×64: the paper's Figures 2 and 3, and the stability of global attributions.

Run (after the `cfajax train` commands in experiments/RESULTS.md, "Models"):

    PYTHONPATH=. python experiments/celeba.py --data-dir ../shared/data --runs runs/celeba

Reads <runs>/vae, <runs>/classifier (heads Young, Attractive, Male, Smiling)
and <runs>/oracle, and the 10,000 shared faces: the first 9,000 are the
auxiliary set the probes learn from, the last 1,000 are held out (as in
training). For each of Young, Attractive and Male it:

1. flips the classifier's decision on every held-out face in latent space and,
   as the adversarial baseline, in pixel space; an oracle (another
   architecture and seed, trained on a disjoint half) judges both;
2. fits one probe per other attribute on the auxiliary latents, leaving out
   the classified attributes and near-duplicates (`select_probe_attributes`);
3. computes local attributions φ and the global ψ with bootstrap intervals,
   and the overlap of the top 5 between two random halves of the faces
   (100 random splits).

Writes experiments/results/celeba.json, prints the markdown tables of
experiments/RESULTS.md, and draws experiments/figures/celeba_*.png. About
15 minutes on 2 CPU cores; `--limit N` caps the faces for a quick run.
`--report` prints the tables of the record at --out, running nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import cfajax
from cfajax import metrics

from common import FIGURES
from common import Stopwatch
from common import _pyplot
from common import _show
from common import apply
from common import compact
from common import hardware
from common import load_runs
from common import markdown_table
from common import percent
from common import print_report
from common import results_table
from common import save_small
from common import signed
from common import split_half_overlap
from common import write_json

HEADS = ("Young", "Attractive", "Male")
LATENT = {"threshold": 0.5, "step_size": 0.1, "max_steps": 500, "objective": "logit"}
PIXEL = {"threshold": 0.5, "step_size": 0.01, "max_steps": 500, "objective": "logit"}
TOP = 5
HOLDOUT = 1000
THRESHOLDS = (0.5, 0.9)  # psi uses 0.5; both measure quality


def local_figure(path, name, originals, starts, cfs, phi, names, target):
  """Per face: x, G(z), x' and its five largest local attributions."""
  plt = _pyplot()
  n = len(originals)
  fig, axes = plt.subplots(n, 4, figsize=(7.6, 1.75 * n + 0.3),
                           gridspec_kw={"width_ratios": [1, 1, 1, 1.5]}, squeeze=False)
  for i in range(n):
    for j, image in enumerate((originals[i], starts[i], cfs[i])):
      _show(axes[i, j], image)
    axes[i, 0].set_ylabel(f"→ {'' if target[i] else 'not '}{name}", fontsize=7)
    top = np.argsort(-np.abs(phi[i]))[:TOP][::-1]
    bars = axes[i, 3]
    bars.barh(range(TOP), phi[i, top], color=["tab:blue" if v > 0 else "tab:red"
                                             for v in phi[i, top]])
    bars.set_yticks(range(TOP), [names[a] for a in top], fontsize=6)
    bars.tick_params(axis="x", labelsize=6)
    bars.axvline(0, color="black", linewidth=0.5)
  for j, label in enumerate(("x", "G(z)", "x' = G(z')", "φ = g(z') − g(z), top 5")):
    axes[0, j].set_title(label, fontsize=7)
  fig.suptitle(f"{name} classifier: counterfactuals and local attributions", fontsize=9)
  fig.tight_layout()
  save_small(fig, path, dpi=100)


def global_figure(path, psis):
  """One panel per classifier: its top-5 psi with 95% bootstrap intervals."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(psis), figsize=(3.6 * len(psis), 2.4), squeeze=False)
  for ax, (name, psi) in zip(axes[0], psis.items(), strict=True):
    top = list(psi.ranking[:TOP])[::-1]
    values = psi.psi[top]
    errors = np.stack([values - psi.ci_low[top], psi.ci_high[top] - values])
    ax.barh(range(TOP), values, xerr=errors, capsize=2,
            color=["tab:blue" if v > 0 else "tab:red" for v in values])
    ax.set_yticks(range(TOP), [psi.names[a] for a in top], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_title(f"{name}: global ψ (n = {psi.num_used})", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
  fig.tight_layout()
  save_small(fig, path, dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--runs", default="runs/celeba")
  parser.add_argument("--out", default="experiments/results/celeba.json")
  parser.add_argument("--limit", type=int, default=0, help="held-out faces (0: all)")
  parser.add_argument("--pixel", type=int, default=0,
                      help="faces per classifier for the pixel baseline (0: all)")
  parser.add_argument("--no-figures", action="store_true",
                      help="write no figures (for a side run that must not replace them)")
  parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)),
                      help="classifier confidences to stop at; 0.5 (which psi uses) must be one")
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  if args.report:
    print_report(report_command(args.out), report_tables(json.loads(Path(args.out).read_text())))
    return
  thresholds = [float(t) for t in args.thresholds.split(",")]
  if LATENT["threshold"] not in thresholds:
    parser.error(f"--thresholds must include {LATENT['threshold']}, the one psi uses")

  clock = Stopwatch()
  runs = Path(args.runs)
  vae, classifier, oracle = load_runs(runs)
  faces = cfajax.load_celeba(args.data_dir, "train", 64)
  aux, test = cfajax.split_dataset(faces, HOLDOUT, seed=None)  # as `cfajax train` held out
  x = test.images[:args.limit or None]
  names_all = list(faces.attribute_names)
  labels = test.attributes[:len(x)]
  z = np.asarray(apply(vae.encode, x))
  z_aux = np.asarray(apply(vae.encode, aux.images))
  starts = cfajax.reconstruct(vae, x)
  real = x
  keep, excluded = cfajax.select_probe_attributes(names_all, aux.attributes, HEADS)
  names = [names_all[i] for i in keep]
  probes = cfajax.fit_probes(z_aux, aux.attributes[:, keep], names=names, standardize=True,
                             class_weight="balanced", validation=(z, labels[:, keep]))
  record = {"hardware": hardware(), "latent_options": LATENT, "pixel_options": PIXEL,
            "held_out": len(x), "auxiliary": len(aux), "thresholds": thresholds,
            "pixel_faces": min(args.pixel or len(x), len(x)), "excluded_attributes": excluded,
            "probes": {"mean_auc": float(np.nanmean(probes.val_auc)),
                       "auc": dict(zip(names, map(float, probes.val_auc), strict=True)),
                       "accuracy": dict(zip(names, map(float, probes.val_accuracy), strict=True))}}
  clock.lap("load_encode_probes")

  rows, psis, stability = [], {}, {}
  for name in HEADS:
    clf, judge = cfajax.select_output(classifier, name), cfajax.select_output(oracle, name)
    prob = metrics.target_probability(clf, x, 1)
    target = (prob < 0.5).astype(np.int32)  # flip the decision
    pixel_n = args.pixel or len(x)
    record[name] = {}
    for threshold in thresholds:
      attack = cfajax.counterfactual_attack(vae.decode, clf, z, target,
                                            progress=True, **{**LATENT, "threshold": threshold},
                                            optimizer="ascent")
      attack_cf = np.asarray(apply(vae.decode, np.asarray(attack.z)))
      if threshold == LATENT["threshold"]:
        latent, cf = attack, attack_cf  # the counterfactuals explained below
      latent_report = metrics.counterfactual_report(
          attack, counterfactuals=attack_cf, starts=starts, images=x, z=z, oracle=judge,
          generator=vae, real_images=real)
      pixel = metrics.pixel_attack(clf, x[:pixel_n], target[:pixel_n], progress=True,
                                   **{**PIXEL, "threshold": threshold})
      pixel_report = metrics.counterfactual_report(
          pixel, counterfactuals=metrics.pixel_counterfactuals(pixel, x.shape[1:]),
          starts=x[:pixel_n], images=x[:pixel_n], oracle=judge, generator=vae,
          real_images=real)
      record[name][f"threshold {threshold}"] = {"latent": latent_report, "pixel": pixel_report}
      rows.append({"classifier": name, "threshold": threshold, "attack": "latent",
                   **compact(latent_report)})
      rows.append({"classifier": name, "threshold": threshold, "attack": "pixel",
                   **compact(pixel_report)})
    success = np.asarray(latent.success)
    phi = np.asarray(cfajax.local_attributions(probes, z, np.asarray(latent.z)))
    psi = cfajax.global_attributions(phi, prob, success=success, names=names,
                                     num_bootstrap=1000, seed=0)
    psis[name] = psi
    stability[name] = split_half_overlap(phi, prob, success, names)
    start_prob = metrics.target_probability(clf, starts, 1)
    record[name].update({
        # the oracle's agreement with the target before any step: the floor to beat
        "oracle_agreement_on_originals": metrics.oracle_agreement(judge, x, target)["agreement"],
        "oracle_agreement_on_starts": metrics.oracle_agreement(judge, starts, target)["agreement"],
        # how often the decision on G(z) already equals the decision on x
        "start_agreement": float(((start_prob >= 0.5) == (prob >= 0.5)).mean()),
        "zero_step_fraction": float((np.asarray(latent.steps) == 0).mean()),
        "accuracy_on_held_out": float(((prob >= 0.5) == labels[:, names_all.index(name)]).mean()),
        "global_attributions": psi.to_dict(), "split_half": stability[name]})
    moved = np.nonzero(success & (np.asarray(latent.steps) > 0))[0]
    show = np.concatenate([moved[target[moved] == 1][:3], moved[target[moved] == 0][:3]])
    if not args.no_figures:
      local_figure(FIGURES / f"celeba_local_{name.lower()}.png", name, x[show], starts[show],
                   cf[show], phi[show], names, target[show])
    clock.lap(name)
  if not args.no_figures:
    global_figure(FIGURES / "celeba_global.png", psis)
  record["wall_seconds"] = clock.stages
  write_json(args.out, record)

  print("## Counterfactual quality\n")
  print(markdown_table(rows, ["classifier", "threshold", "attack", "n", "flip_rate", "median_steps",
                              "oracle_agreement", "realism_ratio", "realism_outliers",
                              "median_latent_l2", "median_pixel_l2",
                              "median_pixel_l2_to_original"]))
  print("\n## Global attributions: top 5 with 95% bootstrap intervals\n")
  top_rows = []
  for name, psi in psis.items():
    for rank, a in enumerate(psi.ranking[:TOP], 1):
      top_rows.append({"classifier": name, "rank": rank, "attribute": psi.names[a],
                       "psi": float(psi.psi[a]), "ci_low": float(psi.ci_low[a]),
                       "ci_high": float(psi.ci_high[a])})
  print(markdown_table(top_rows, ["classifier", "rank", "attribute", "psi", "ci_low",
                                  "ci_high"]))
  print("\n## Split-half stability of the top 5 (100 random halvings)\n")
  print(markdown_table([{"classifier": k, **v} for k, v in stability.items()],
                       ["classifier", "top5_overlap_mean", "top5_overlap_min",
                        "top5_identical_fraction", "rank_correlation_mean"]))
  print("\noracle agreement with the target before the attack (on x, on G(z)):",
        {k: (record[k]["oracle_agreement_on_originals"], record[k]["oracle_agreement_on_starts"])
         for k in HEADS})
  print("left out of the probes:", excluded)
  print("probe mean AUC on the held-out faces:", record["probes"]["mean_auc"])
  print("wall seconds:", clock.stages)
  print_report(report_command(args.out), report_tables(record))


def report_command(out: str) -> str:
  default = "experiments/results/celeba.json"
  return "experiments/celeba.py --report" + ("" if out == default else f" --out {out}")


def report_tables(record: dict) -> dict:
  """The tables of experiments/RESULTS.md, "CelebA", from a record of this script."""
  tables = {}
  rows = []
  for name in HEADS:
    part = record[name]
    before = percent(part["oracle_agreement_on_originals"])
    for attack in ("latent", "pixel"):
      run = part[f"threshold {LATENT['threshold']}"][attack]
      row, steps = compact(run), run["validity"]["steps"]
      latent = attack == "latent"
      rows.append([
          name, attack, str(row["n"]), percent(row["flip_rate"]),
          f"{steps['median']:g} ({steps['p90']:g}, {steps['max']:g})",
          percent(part["zero_step_fraction"]) if latent else "—",
          percent(row["oracle_agreement"]),
          f"{before} / {percent(part['oracle_agreement_on_starts']) if latent else '—'}",
          f"{row['realism_ratio']:.3f}",
          f"{row['median_latent_l2']:.2f}" if latent else "—",
          f"{row['median_pixel_l2']:.2f}", f"{row['median_pixel_l2_to_original']:.2f}"])
  tables[f"quality at {LATENT['threshold']:g}"] = results_table(
      ["classifier", "attack", "n:", "flip rate:", "median steps (p90, max)", "zero steps:",
       "oracle agreement:", "oracle agreement before the attack (on x / on G(z))",
       "realism ratio:", "median latent L2:", "median pixel L2:", "to original:"], rows)
  rows = []
  for name in HEADS:
    for threshold in record["thresholds"]:
      cells = [name, f"{threshold:g}"]
      for attack in ("latent", "pixel"):
        run = record[name][f"threshold {threshold}"][attack]
        steps = run["validity"]["steps"]
        cells += [percent(run["oracle"]["agreement"]), f"{steps['median']:g} ({steps['max']:g})",
                  f"{run['proximity']['pixel_l2']['median']:.2f}"]
      rows.append(cells)
  tables["thresholds"] = results_table(
      ["classifier", "threshold:", "latent: oracle agreement:", "median steps (max)",
       "median pixel L2:", "pixel: oracle agreement:", "median steps (max)",
       "median pixel L2:"], rows)
  rows = []
  for rank in range(TOP):
    cells = [str(rank + 1)]
    for name in HEADS:
      psi = record[name]["global_attributions"]
      attribute = psi["ranking"][rank]
      value = psi["attributes"][attribute]
      cells += [attribute, "{} [{}, {}]".format(*map(signed, [value["psi"], *value["ci"]]))]
    rows.append(cells)
  tables["top 5"] = results_table(
      ["rank:"] + [c for name in HEADS for c in (name, "ψ [95% CI]")], rows)
  tables["stability"] = results_table(
      ["classifier", "top-5 overlap, mean:", "minimum:", "identical top-5 sets:",
       "Spearman ρ of \\|ψ\\| between halves:"],
      [[name, f"{half['top5_overlap_mean']:.2f}", f"{half['top5_overlap_min']:.2f}",
        percent(half["top5_identical_fraction"]), f"{half['rank_correlation_mean']:.3f}"]
       for name in HEADS for half in [record[name]["split_half"]]])
  return tables


if __name__ == "__main__":
  main()
