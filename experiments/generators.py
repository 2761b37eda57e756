"""VAE, GAN and diffusion model: the same decisions explained through each generator, on the
same images.

Run (after the `cfajax train` commands in experiments/RESULTS.md, "Models",
including the GAN's and, for `--edit-depths`, the diffusion model's):

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.:experiments python experiments/generators.py \\
        --dataset mnist --data-dir ../shared/data --runs runs/mnist

Reads <runs>/vae, <runs>/gan, <runs>/classifier and <runs>/oracle, and with
`--edit-depths` <runs>/diffusion. For each explained decision (MNIST: 4 vs 9;
CelebA: Young, Attractive, Male) it runs `cfajax.explain` once per generator
on the same images with the same classifier, attack and attribute table: the
VAE (latents from its encoder), the GAN (latents from `invert`, run once on
the explained images and once on the attribute table's, and shared by every
decision; badly inverted images are left out by the pipeline and counted),
and the diffusion model at each edit depth (latents from DDIM inversion). All
are then measured on the images all kept:

- validity (flip rate) and steps, at threshold 0.5 and, attacking the same
  latents again, at 0.9;
- oracle agreement at 0.5 and 0.9 (an independent classifier's verdict on
  the counterfactuals);
- proximity: pixel L2 from the generator's start G(z) and from the image x;
- how well each generator reproduces x (pixel MSE, and whether the classifier
  decides G(z) as it decides x);
- realism: the Fréchet distance, in the oracle's penultimate-layer features,
  between each set of images (x, G(z), counterfactuals at 0.5 and 0.9, and
  pixel-attack counterfactuals of the same images) and as many real
  reference images disjoint from them (`metrics.frechet_distance`); x gives
  the floor of real data;
- top-5 global attributions with 95% bootstrap intervals, and their
  stability over 100 random halvings of the images.

Writes experiments/results/generators_<dataset>.json (or --out), prints the
markdown tables of experiments/RESULTS.md, and draws the figure of the same
name in experiments/figures. `--report` prints the tables
of the record at --out, running nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import cfajax
from cfajax import metrics
from cfajax.experimental import badly_inverted
from cfajax.experimental import descriptor_tables
from cfajax.experimental import inversion_options

from common import FIGURES
from common import Stopwatch
from common import apply
from common import hardware
from common import oracle_features
from common import percent
from common import print_report
from common import progression_grid
from common import psi_agreement
from common import quantize_png
from common import results_table
from common import signed
from common import split_half_overlap
from common import write_json

LATENT = {"threshold": 0.5, "step_size": 0.1, "max_steps": 500, "objective": "logit"}
PIXEL = {"threshold": 0.5, "step_size": 0.01, "max_steps": 500, "objective": "logit"}
GENERATORS = ("vae", "gan")  # and "diffusion@<depth>" per edit depth
CELEBA_HEADS = ("Young", "Attractive", "Male")


def decisions(args):
  """Per explained decision: (name, images, classifier, oracle, explain options), the
  attribute table, the real reference images, and a description of the data."""
  classifier = cfajax.load_model(Path(args.runs) / "classifier")
  oracle = cfajax.load_model(Path(args.runs) / "oracle")
  rng = np.random.default_rng(0)
  if args.dataset == "mnist":
    train = cfajax.load_mnist(args.data_dir, "train")
    test = cfajax.load_mnist(args.data_dir, "test")
    predicted = np.asarray(apply(classifier, test.images)).argmax(-1)
    idx = np.flatnonzero(np.isin(predicted, (4, 9)))[:args.limit or None]
    aux = cfajax.split_dataset(train, args.aux, seed=0)[1]
    (table,), _ = descriptor_tables(aux)
    pool = np.flatnonzero(np.isin(train.labels, (4, 9)))
    reference = train.images[rng.choice(pool, args.reference, replace=False)]
    tasks = [("4 vs 9", test.images[idx], classifier, oracle, {"classes": (4, 9)})]
    data = (f"MNIST test digits predicted 4 or 9 ({len(idx)}); probes on {len(aux)} training "
            f"digits' descriptors; reference: {args.reference} training 4s and 9s")
    return tasks, table, reference, data
  faces = cfajax.load_celeba(args.data_dir, "train", 64)
  aux, test = cfajax.split_dataset(faces, 1000, seed=None)  # as `cfajax train` held out
  x = test.images[:args.limit or None]
  aux_part = cfajax.split_dataset(aux, args.aux, seed=0)[1]
  keep, _ = cfajax.select_probe_attributes(faces.attribute_names, aux.attributes, CELEBA_HEADS)
  table = cfajax.AttributeTable.from_dataset(aux_part).columns(keep)
  reference = aux.images[rng.choice(len(aux), args.reference, replace=False)]
  tasks = [(head, x, cfajax.select_output(classifier, head), cfajax.select_output(oracle, head),
            {}) for head in CELEBA_HEADS]
  data = (f"{len(x)} held-out CelebA faces (64x64); probes on {len(aux_part)} auxiliary faces' "
          f"labels; reference: {args.reference} auxiliary faces")
  return tasks, table, reference, data


def invert_once(gan, x, table, args):
  """The GAN's inversions of the explained images and of the attribute table's images.

  Each decision's `explain` takes them as `latents=` and an attribute table of
  latents, instead of inverting the same images again. Options as `explain`'s
  own inversion; the table's badly inverted rows are left out by its rule.
  """
  config = cfajax.ExplainConfig(inversion_starts=args.starts, inversion_steps=args.inversion_steps)
  options = inversion_options(config, gan.config.latent_dim)
  images = cfajax.invert(gan.decode, x, **options, progress=True)
  found = cfajax.invert(gan.decode, table.images, **options, progress=True)
  errors = np.asarray(found.pixel_mse)
  bad, _ = badly_inverted(config, errors)
  latents = cfajax.AttributeTable(table.names, table.values[~bad],
                                  latents=np.asarray(found.z)[~bad],
                                  name=f"{table.name}, inverted")
  return images, latents, {"table_images": len(errors), "table_left_out": int(bad.sum()),
                           "table_median_error": float(np.median(errors))}


def label(g: str) -> str:
  """A generator's name in the tables: VAE, GAN, or diffusion (edit depth d)."""
  if g.startswith("diffusion@"):
    return f"diffusion, depth {g.split('@')[1]}"
  return g.upper()


def load_generators(args) -> dict:
  """The VAE, the GAN and the diffusion model at each edit depth, by name."""
  generators = {g: cfajax.load_model(Path(args.runs) / g) for g in args.generators.split(",")}
  if args.edit_depths:
    diffusion = cfajax.load_model(Path(args.runs) / "diffusion")
    for depth in args.edit_depths.split(","):
      generators[f"diffusion@{float(depth):g}"] = diffusion.with_edit(
          depth=float(depth), steps=args.ddim_steps or None)
  return generators


def measure(decode, classifier, oracle, x, ex, rows, fd, reference, thresholds,
            attribute_oracle=None):
  """The metrics of one generator's run on `rows` of its examples.npz.

  `attribute_oracle`: (oracle of every attribute, their names, the explained
  one) for MNAC, or None where there is no attribute oracle (MNIST).
  """
  z, z_cf, target = ex["z"][rows], ex["z_cf"][rows], ex["target"][rows]
  starts = np.asarray(apply(decode, z))
  out = {"reconstruction_mse_median": float(np.median(np.mean((starts - x) ** 2, (1, 2, 3))))}
  decided = lambda images: np.asarray(apply(classifier, images))
  logits_x = decided(x)
  source = 1 - target if logits_x.shape[-1] == 1 else logits_x.argmax(-1)
  same = lambda a, b: ((a.argmax(-1) == b.argmax(-1)) if a.shape[-1] > 1
                       else ((a > 0) == (b > 0))[:, 0])
  out["reconstruction_agreement"] = float(np.mean(same(decided(starts), decided(x))))
  sets = {"G(z)": starts}
  for threshold in thresholds:
    if threshold == LATENT["threshold"]:
      status, steps, z_t = ex["status"][rows], ex["steps"][rows], z_cf
    else:
      result = cfajax.counterfactual_attack(decode, classifier, z, target,
                                            **{**LATENT, "threshold": threshold},
                                            optimizer="ascent")
      status, steps, z_t = map(np.asarray, (result.status, result.steps, result.z))
    success = status == cfajax.Status.REACHED
    cf = np.asarray(apply(decode, z_t))
    # The closure below is called within this iteration, so it sees this iteration's values.
    l2 = lambda a, b: np.sqrt(np.sum((a - b) ** 2, (1, 2, 3)))[success]  # noqa: B023
    out[f"t{threshold}"] = {
        "flip_rate": float(success.mean()),
        "median_steps": float(np.median(steps[success])) if success.any() else None,
        "p90_steps": float(np.percentile(steps[success], 90)) if success.any() else None,
        "oracle_agreement": metrics.oracle_agreement(oracle, cf, target,
                                                     success=success)["agreement"],
        "median_pixel_l2_from_start": float(np.median(l2(cf, starts))),
        "median_pixel_l2_from_x": float(np.median(l2(cf, x))),
        "cout": metrics.cout(classifier, x, cf, source, target, success=success)["cout"]}
    if attribute_oracle is not None:
      every, names, explained = attribute_oracle
      out[f"t{threshold}"]["mnac"] = metrics.mnac(every, x, cf, names=names, exclude=(explained,),
                                                  success=success)["mnac"]
    sets[f"x' at {threshold}"] = cf
  out["frechet"] = {name: metrics.frechet_distance(oracle_features(oracle), images[:fd],
                                                   reference)["distance"]
                    for name, images in sets.items()}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=("mnist", "celeba"), required=True)
  parser.add_argument("--data-dir", default="../shared/data")
  parser.add_argument("--runs", default=None,
                      help="folder with vae, gan, classifier, oracle (default: runs/<dataset>)")
  parser.add_argument("--work", default="runs/generators", help="the explain runs' folders")
  parser.add_argument("--out", default="")
  parser.add_argument("--limit", type=int, default=0, help="images to explain (0: all)")
  parser.add_argument("--aux", type=int, default=2000, help="images the probes learn from")
  parser.add_argument("--reference", type=int, default=1000,
                      help="real reference images for the Fréchet distance")
  parser.add_argument("--fd", type=int, default=1000, help="images per Fréchet distance")
  parser.add_argument("--starts", type=int, default=2, help="inversion starts per image")
  parser.add_argument("--inversion-steps", type=int, default=300)
  parser.add_argument("--thresholds", default="0.5,0.9")
  parser.add_argument("--generators", default=",".join(GENERATORS),
                      help="the trained generators compared (vae first): vae,gan or vae")
  parser.add_argument("--edit-depths", default="",
                      help="also the diffusion model at <runs>/diffusion, at these edit depths "
                      "(comma-separated, e.g. 0.3,0.6)")
  parser.add_argument("--ddim-steps", type=int, default=0,
                      help="the diffusion model's DDIM steps (0: its own)")
  parser.add_argument("--report", action="store_true",
                      help="print the tables of the record at --out, running nothing")
  args = parser.parse_args(argv)
  args.runs = args.runs or f"runs/{args.dataset}"
  thresholds = [float(t) for t in args.thresholds.split(",")]
  out = Path(args.out or f"experiments/results/generators_{args.dataset}.json")
  command = f"experiments/generators.py --dataset {args.dataset} --report" + (
      f" --out {args.out}" if args.out else "")
  if args.report:
    print_report(command, report_tables(json.loads(out.read_text()), args.dataset))
    return

  clock = Stopwatch()
  generators = load_generators(args)
  full_oracle = cfajax.load_model(Path(args.runs) / "oracle")
  tasks, table, reference, data = decisions(args)
  record = {"hardware": hardware(), "data": data, "generators": list(generators),
            "latent_options": LATENT,
            "pixel_options": PIXEL, "inversion": {"starts": args.starts,
                                                  "steps": args.inversion_steps},
            "thresholds": thresholds, "decisions": {},
            "edits": {g: m.config.to_dict() | {"edit_steps": m.edit_steps}
                      for g, m in generators.items() if g.startswith("diffusion@")}}
  clock.lap("load")
  print(data)
  x_all = tasks[0][1]
  assert all(task[1] is x_all for task in tasks), "every decision explains the same images"
  inverted = gan_table = None
  if "gan" in generators:
    inverted, gan_table, record["inversion"]["table"] = invert_once(generators["gan"], x_all,
                                                                    table, args)
    clock.lap("invert with the GAN")

  for name, x_all, classifier, oracle, options in tasks:
    runs = {}
    for g, generator in generators.items():
      folder = Path(args.work) / f"{args.dataset}-{name.replace(' ', '')}-{g}"
      given = {"latents": inverted, "attributes": gan_table} if g == "gan" else {
          "attributes": table}
      # The tables' intervals are computed here from the examples' phi, so explain's
      # permutation null and probe-refitting bootstrap (thousands of probe fits, slow on
      # a diffusion model's 784-dimensional latents) are left out.
      summary = cfajax.explain(images=x_all, classifier=classifier, generator=generator,
                               out=str(folder), **given, **options,
                               attack=cfajax.attacks.LatentAttack(**LATENT),
                               num_permutations=0, probe_bootstrap=False, log=print)
      runs[g] = (summary, dict(np.load(folder / "examples.npz")))
      clock.lap(f"{name}: explain with the {g}")
    common = runs["vae"][1]["index"]
    for _, ex in runs.values():
      common = np.intersect1d(common, ex["index"])
    x = x_all[common]
    fd = min(args.fd, len(common), len(reference))
    entry = {"explained": len(common), "frechet_images": fd,
             "frechet_real_floor": metrics.frechet_distance(oracle_features(oracle), x[:fd],
                                                            reference)["distance"]}
    target = runs["vae"][1]["target"][np.searchsorted(runs["vae"][1]["index"], common)]
    pixel = metrics.pixel_attack(classifier, x[:fd], target[:fd], **PIXEL)
    pixel_cf = metrics.pixel_counterfactuals(pixel, x.shape[1:])
    pixel_ok = np.asarray(pixel.status) == cfajax.Status.REACHED
    entry["pixel"] = {
        "flip_rate": float(pixel_ok.mean()),
        "oracle_agreement": metrics.oracle_agreement(oracle, pixel_cf, target[:fd],
                                                     success=pixel_ok)["agreement"],
        "frechet": metrics.frechet_distance(oracle_features(oracle), pixel_cf,
                                            reference)["distance"]}
    clock.lap(f"{name}: pixel baseline")
    figure = {}
    for g, (summary, ex) in runs.items():
      rows = np.searchsorted(ex["index"], common)
      decode = generators[g].decode
      every = None
      if args.dataset == "celeba":  # the oracle's other heads count for MNAC
        every = (full_oracle, full_oracle.config.output_names, name)
      result = measure(decode, classifier, oracle, x, ex, rows, fd, reference, thresholds,
                       every)
      success = ex["status"][rows] == cfajax.Status.REACHED
      names = [str(n) for n in ex["attribute_names"]]
      psi = cfajax.global_attributions(ex["phi"][rows], ex["original_prob"][rows],
                                       success=success, names=names, num_bootstrap=1000)
      result.update(
          run_examples=summary["num_examples"], inversion=summary["inversion"],
          probes_mean_auc=float(np.nanmean([p["val_auc"] for p in summary["probes"].values()
                                            if p["val_auc"] is not None])),
          top5=[{"attribute": psi.names[a], "psi": float(psi.psi[a]),
                 "ci": [float(psi.ci_low[a]), float(psi.ci_high[a])]}
                for a in psi.ranking[:5]],
          split_half=split_half_overlap(ex["phi"][rows], ex["original_prob"][rows], success,
                                        names))
      result["psi"] = dict(zip(psi.names, map(float, psi.psi), strict=True))
      entry[g] = result
      figure[g] = (np.asarray(apply(decode, ex["z"][rows[:8]])),
                   np.asarray(apply(decode, ex["z_cf"][rows[:8]])))
      clock.lap(f"{name}: measure the {g}")
    names = list(entry["vae"]["psi"])
    if "gan" in generators:
      entry["vae_vs_gan"] = psi_agreement(*([entry[g]["psi"][n] for n in names]
                                            for g in GENERATORS))
    entry["with_vae"] = {g: psi_agreement([entry["vae"]["psi"][n] for n in names],
                                          [entry[g]["psi"][n] for n in names])
                         for g in generators if g != "vae"}
    record["decisions"][name] = entry
    frames = np.stack([image for g in generators for image in figure[g]], axis=1)
    suffix = "" if len(tasks) == 1 else "_" + name.lower()
    figure_path = FIGURES / f"{out.stem}{suffix}.png"  # generators_<dataset> by default
    progression_grid(figure_path, x[:8], frames,
                     [f"→ {t}" if "classes" in options else f"→ {'' if t else 'not '}{name}"
                      for t in target[:8]],
                     [f"{label(g)} {part}" for g in generators for part in ("G(z)", "x'")],
                     diff=False,
                     title=f"{name}: the same images through each generator (p ≥ 0.5)")
    if x.shape[-1] == 3:  # photos: 256 colours keep the figure small
      quantize_png(figure_path)
  record["wall_seconds"] = clock.stages
  write_json(out, record)
  print_report(command, report_tables(record, args.dataset))


def _three(value: float) -> str:
  """Three significant figures: 20.0, 93.4, 111, 2.31."""
  return f"{value:#.3g}".rstrip(".")


def _each(values, text) -> str:
  """One value when every decision has the same, else each decision's, "a / b / c"."""
  values = list(values)
  if all(v == values[0] for v in values):
    values = values[:1]
  return " / ".join(text(v) for v in values)


def report_tables(record: dict, dataset: str) -> dict:
  """The tables of experiments/RESULTS.md, "VAE against GAN", from a record of this script."""
  entries = record["decisions"]
  generators = record.get("generators", list(GENERATORS))
  several = len(entries) > 1
  per_decision = f" ({' / '.join(entries)})" if several else ""
  n = _each((e["explained"] for e in entries.values()), str)
  tables = {}
  rows = []
  measured = [entry[g][f"t{t}"] for entry in entries.values() for g in generators
              for t in record["thresholds"]]
  with_cout = any("cout" in m for m in measured)
  with_mnac = any("mnac" in m for m in measured)
  for name, entry in entries.items():
    for g in generators:
      for t in record["thresholds"]:
        m = entry[g][f"t{t}"]
        rows.append([name] * several + [
            label(g), f"{t:g}", percent(m["flip_rate"]),
            f"{m['median_steps']:g} ({m['p90_steps']:g})", percent(m["oracle_agreement"]),
            _three(m["median_pixel_l2_from_start"]), _three(m["median_pixel_l2_from_x"]),
            _three(entry[g]["frechet"][f"x' at {t}"])]
            + ([f"{m['cout']:.2f}" if "cout" in m else "—"] if with_cout else [])
            + ([f"{m['mnac']:.2f}" if "mnac" in m else "—"] if with_mnac else []))
  tables["counterfactuals"] = results_table(
      ["decision"] * several + ["generator", "threshold:", "flip rate:", "median steps (p90)",
                                "oracle agreement:", "pixel L2 from G(z):", "pixel L2 from x:",
                                "Fréchet of x′:"]
      + ["COUT:"] * with_cout + ["MNAC:"] * with_mnac, rows)
  real = "test digits" if dataset == "mnist" else "held-out faces"
  values = list(entries.values())
  rows = [[f"real {real} x (the floor)", _each((e["frechet_real_floor"] for e in values), _three),
           "—", "—", "—"],
          [f"pixel-attack counterfactuals (threshold {PIXEL['threshold']:g}"
           + (f"; {' / '.join(entries)})" if several else ")"),
           " / ".join(_three(e["pixel"]["frechet"]) for e in values), "—", "—", "—"]]
  for g in generators:
    shown = {"vae": "VAE G(E(x))", "gan": "GAN G(z\\*) (inverted)"}.get(g, f"{label(g)} G(E(x))")
    rows.append([shown, _each((e[g]["frechet"]["G(z)"] for e in values), _three),
                 _each((e[g]["reconstruction_mse_median"] for e in values), lambda v: f"{v:.4f}"),
                 " / ".join(percent(e[g]["reconstruction_agreement"]) for e in values),
                 _each((e[g]["probes_mean_auc"] for e in values), lambda v: f"{v:.3f}")])
  tables["images"] = results_table(
      [f"images ({n} each)", "Fréchet:", "reproduction of x: median MSE / pixel:",
       f"classifier decides G(z) as x{per_decision}", "probe AUC (held out):"], rows)
  rows = []
  for name, entry in entries.items():
    for g in generators:
      top = entry[g]["top5"]
      first = "{} {} [{}, {}]".format(top[0]["attribute"], *map(signed, [top[0]["psi"],
                                                                         *top[0]["ci"]]))
      rest = [f"{t['attribute']} {signed(t['psi'])}" for t in top[1:]]
      half = entry[g]["split_half"]
      rows.append([name] * several + [
          label(g), ", ".join([first, *rest]),
          f"{half['top5_overlap_mean']:.2f} ({half['top5_overlap_min']:.1f})",
          f"{half['rank_correlation_mean']:.2f}"])
  tables["top 5"] = results_table(
      ["decision"] * several + ["generator", "top 5", "top-5 overlap between halves (min):",
                                "Spearman ρ of \\|ψ\\| between halves:"], rows)
  if all("with_vae" in e for e in values):
    tables["against the VAE"] = results_table(
        ["decision", "generator", "top 5 shared with the VAE's:", "Spearman ρ of \\|ψ\\|:",
         "correlation of ψ:"],
        [[name, label(g), str(a["top_shared"]), f"{a['rank_correlation']:.2f}",
          f"{a['signed_correlation']:.2f}"]
         for name, entry in entries.items() for g, a in entry["with_vae"].items()])
  elif all("vae_vs_gan" in e for e in values):
    tables["VAE against GAN"] = results_table(
        ["decision", "VAE and GAN: top 5 shared:", "Spearman ρ of \\|ψ\\|:",
         "correlation of ψ:"],
        [[name, str(a["top_shared"]), f"{a['rank_correlation']:.2f}",
          f"{a['signed_correlation']:.2f}"]
         for name, entry in entries.items() for a in [entry["vae_vs_gan"]]])
  return tables


if __name__ == "__main__":
  main()
