"""The `cfajax` command line: `cfajax explain` and `cfajax train`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from cfajax import attacks
from cfajax._explain_config import ExplainConfig
from cfajax._recipes import CELEBA_DEFAULT_ATTRIBUTES
from cfajax._recipes import CELEBA_HOLDOUT
from cfajax._recipes import RECIPES
from cfajax._recipes import TRAIN_PARTS

EXPLAIN_HELP = {
    "dataset": "a preset that brings images, models and attributes: digits (embedded, no "
               "download), mnist or celeba; default digits unless --images is given",
    "out": "output folder; running again with the same folder resumes "
           "(default: runs/explain-<preset>, or runs/explain)",
    "data_dir": "a preset's data: the MNIST IDX files or the CelebA layout "
                "(default: $CFAJAX_DATA_DIR, else tensorflow-datasets)",
    "generator": "the generator: a cfajax checkpoint folder or package.module:factory "
                 "(a preset's default: OUT/models/vae, trained if absent); --vae is an alias",
    "classifier": "the classifier: a cfajax checkpoint folder or package.module:factory "
                  "(a preset's default: OUT/models/classifier, trained if absent)",
    "images": "your images to explain: a folder of image files, or tfds:NAME[:SPLIT]",
    "attributes": "your attribute CSV for the probes: a header (file, names...) and one row "
                  "per image file, values 0/1; the file paths are relative to the CSV's "
                  "folder",
    "classes": "for a multi-class classifier, the pair explained, e.g. 4,9 (the second is "
               "the positive side)",
    "target_attribute": "CelebA attribute predicted by the binary classifier",
    "exclude_attributes": "attributes to leave out of the probes, e.g. Smiling,Bald",
    "max_attribute_correlation": "CelebA attributes whose labels correlate with the target "
                                 "beyond this |r| get no probe (near-duplicates)",
    "explain_split": "a preset's examples explained: train, test or all",
    "quick": "a first look in minutes on a CPU: a preset's models trained for 1-2 epochs (the "
             "recipe's quick epochs) and at most 1,000 examples, unless --vae-epochs, "
             "--classifier-epochs or --limit say otherwise",
    "limit": "explain a random subset of this many examples (seeded, both sides of the "
             "decision in proportion; 0: all)",
    "image_size": "square side images are resized to (0: CelebA's 64, a folder's own size)",
    "latent_dim": "latent size of a preset VAE trained now (0: the recipe's), or of a "
                  "generator without an encoder",
    "vae_widths": "channel widths of a preset VAE trained now, e.g. 32,64 (empty: the recipe's)",
    "classifier_widths": "channel widths of a preset classifier trained now (empty: the "
                         "recipe's)",
    "vae_epochs": "epochs of a preset VAE trained now (0: the recipe's)",
    "classifier_epochs": "epochs of a preset classifier trained now (0: the recipe's)",
    "train_batch_size": "batch size for models trained now (0: the recipe's)",
    "threshold": "stop an attack when the target's probability reaches this, in (0, 1); 0.9 "
                 "rather than the boundary 0.5, so that counterfactuals are convincing (an "
                 "independent oracle agreed with 97.5%% of them on the digits, 69%% at 0.5)",
    "step_size": "trust-region: the first step's longest length in latent units (it then "
                 "adapts); ascent: the learning rate of plain gradient ascent",
    "max_steps": "most updates per attack",
    "objective": "what is ascended: logit (the target's log-odds), prob (its probability, the "
                 "paper's) or log_prob",
    "optimizer": "trust-region (scale-free steps along the gradient: flat or sharp logits "
                 "alike), ascent (plain gradient ascent, the paper's update) or adam",
    "learning_rate": "Adam's learning rate (with --optimizer adam)",
    "precision": "float32, or bfloat16 for the models' arithmetic",
    "pool_size": "latents on the device at once",
    "ddim_steps": "a diffusion generator's DDIM steps over the whole chain (0: its own)",
    "edit_depth": "a diffusion generator's edit depth, the fraction of the chain edited, in "
                  "(0, 1] (0: its own)",
    "probe_examples": "fit and check the probes on at most this many rows of each attribute "
                      "table (seeded; 0: all)",
    "attack": "how counterfactuals are made: latent (through the generator, the paper's), "
              "data-free (DISC-style deep inversion from the classifier alone) or pixel (the "
              "adversarial baseline); for the last two the generator only measures phi",
    "manifold": "data-free: a DUQ checkpoint (cfajax.train_duq) or module:factory for the "
                "manifold-consistency term",
    "data_free_prior": "data-free: implicit (a per-image coordinate MLP of the change) or pixels",
    "data_free_progressive": "data-free: optimise coarse to fine",
    "tv_weight": "data-free: weight of the total-variation prior",
    "l2_weight": "data-free: weight of the mean squared intensity prior",
    "proximity_weight": "data-free: weight of the mean absolute change from the query",
    "manifold_weight": "data-free: weight of the manifold-consistency term (with --manifold)",
    "inversion_starts": "starts per image when latents are found by inversion",
    "inversion_steps": "most Adam steps per inversion start",
    "inversion_step_size": "the inversion's Adam learning rate",
    "inversion_prior_weight": "weight of mean z^2 in the inversion loss",
    "max_inversion_error": "leave out images whose inversion's pixel MSE exceeds this "
                           "(0: beyond Q3 + 3 IQR of the run's errors)",
    "chunk_size": "examples per resumable chunk (0: a tenth of the run, 256 to 8192, so "
                  "finished work is saved early)",
    "probe_c": "the probes' inverse L2 regularisation strength (scikit-learn's C)",
    "probe_class_weight": "balanced, or none for unweighted probes",
    "probe_standardize": "standardise latents before the probes",
    "probe_validation_fraction": "part of the attribute table held out to check the probes",
    "num_bootstrap": "bootstrap resamples for psi's confidence intervals",
    "probe_bootstrap": "refit the probes on a resample of the attribute table in each "
                       "bootstrap resample, so the interval covers the probes' variation too",
    "num_permutations": "probes refitted to permuted labels: each attribute's p-value is "
                        "against them (0: no p-values)",
    "exclude_started_at_target": "leave out of psi the attacks that start at the target "
                                 "(G(z) already past the threshold; their phi is 0)",
    "num_figure_examples": "counterfactuals shown in counterfactuals.png",
    "seed": "seed of training, splits, inversion starts and the bootstrap",
}


def _parse_value(kind: str):
  if kind in ("tuple[int, int]", "tuple[int, ...]"):
    return lambda text: tuple(int(part) for part in text.split(",") if part.strip())
  if kind == "tuple[str, ...]":
    return lambda text: tuple(part.strip() for part in text.split(",") if part.strip())
  if kind == "str | None":
    return lambda text: None if text.lower() == "none" else text
  return {"int": int, "float": float}.get(kind, str)


def _add_explain_parser(commands) -> None:
  parser = commands.add_parser(
      "explain", help="global explanation of a classifier over a whole dataset",
      description="Encode the images, fit attribute probes, attack every example and "
                  "aggregate the attributions. With no options: scikit-learn's digits, "
                  "trained models, morphometric descriptors (no download). Your own: "
                  "--images DIR --attributes CSV --classifier SPEC --generator SPEC.")
  # The pipeline's own options, then the attack's in their flat form (one flag per option of
  # any attack, mapped to an attack value in `_run_explain`).
  options = [(f.name, str(f.type), f.default) for f in dataclasses.fields(ExplainConfig)
             if f.name != "attack"]
  options += [(name, _flat_type(default), default)
              for name, default in attacks.flat_defaults().items()]
  for name, kind, default in options:
    flags = ["--" + name.replace("_", "-")] + (["--vae"] if name == "generator" else [])
    help_text = EXPLAIN_HELP[name]
    if kind == "bool":
      parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default,
                          help=help_text)
    else:
      shown = (",".join(map(str, default)) if isinstance(default, tuple) else default)
      shown = "" if shown is None else f" (default: {shown})"
      parser.add_argument(*flags, type=_parse_value(kind), default=default,
                          help=f"{help_text}{shown}")
  parser.add_argument("--restart", "--overwrite", action="store_true",
                      help="discard the results already in --out (and the models trained "
                      "there, if an option they were trained with changed) and start over")
  parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _flat_type(default) -> str:
  """The kind `_parse_value` reads an attack flag as, from its default."""
  if default is None:
    return "str | None"
  return {bool: "bool", int: "int", float: "float"}.get(type(default), "str")


def _run_explain(args) -> int:
  from cfajax._explain import explain
  values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExplainConfig)
            if f.name != "attack"}
  try:
    # The flags name an attack value; the data-free attack's seed is the run's.
    attack = attacks.from_flat({**{name: getattr(args, name) for name in attacks.flat_defaults()},
                                "seed": args.seed})
    summary = explain(ExplainConfig(**values, attack=attack), progress=not args.no_progress,
                      restart=args.restart)
  except KeyboardInterrupt:
    out = values["out"] or "the output folder"
    print(f"\ncfajax explain: interrupted; the finished chunks are saved in {out}: the same "
          "command resumes from them", file=sys.stderr)
    return 130
  psi = summary["global_attributions"]
  print(f"\n{summary['task']} on {summary['dataset']}: {summary['num_examples']} examples, "
        f"flip rate {summary['flip_rate']:.1%}, median steps {summary['steps'].get('median')}")
  if psi is None:
    print("no counterfactual reached its target: no global attributions")
    return 1
  print(f"top global attributions (psi, 95% interval over {psi['interval']}"
        + (f"; Holm-adjusted p against {psi['num_permutations']} permuted-label probes"
           if psi["num_permutations"] else "") + "; probe's held-out AUC):")
  for name in psi["ranking"][:8]:
    row = psi["attributes"][name]
    low, high = row["ci"]
    auc = "   —" if row["probe_val_auc"] is None else f"{row['probe_val_auc']:.2f}"
    test = ""
    if row["p_adjusted"] is not None:
      test = (f"  p={row['p_adjusted']:.3g}" + ("" if row["significant"]
                                                 else "  not distinguishable from noise"))
    print(f"  {name:>24s}  {row['psi']:+.3f}  [{low:+.3f}, {high:+.3f}]  AUC {auc}{test}")
  if summary.get("warnings"):
    print(f"{len(summary['warnings'])} warning(s), kept in summary.json: "
          + " | ".join(w.split(":")[0] for w in summary["warnings"]))
  print(f"written to {summary['config']['out']}/: summary.json, examples.npz, counterfactuals.png, "
        "global_attributions.png")
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="cfajax", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  _add_explain_parser(commands)
  _add_train_parser(commands)
  parser.add_argument("--debug", action="store_true",
                      help="show the full traceback of an error (default: one line)")
  args = parser.parse_args(argv)
  run = {"explain": _run_explain, "train": _run_train}[args.command]
  try:
    return run(args)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    if args.debug:
      raise
    # The library's errors say what was expected; a traceback adds nothing.
    print(f"cfajax {args.command}: error: {e}", file=sys.stderr)
    return 2


# -- cfajax train -------------------------------------------------------------


def _add_train_parser(commands) -> None:
  """Adds `cfajax train vae|classifier` to the subcommands."""
  train = commands.add_parser(
      "train", help="train a VAE, a GAN, a diffusion model, a classifier (or the oracle), a DUQ "
      "or a translator and save a checkpoint",
      description="Train a model on MNIST, CelebA or scikit-learn's digits and save it with "
      "orbax. Classifiers learn from the first half of the training split and oracles "
      "(--oracle) from the second half, so that the oracle never saw the classifier's data.")
  train.add_argument("model", choices=("vae", "classifier", "gan", "diffusion", "duq",
                                      "translator"),
                     help="diffusion: a DDPM noise predictor, explained through by DDIM "
                     "inversion to an edit depth; duq: the data-free attack's manifold model "
                     "(explain --manifold); "
                     "translator: a counterfactual generator G(x, target) and its "
                     "classifier-discriminator")
  train.add_argument("--dataset", choices=sorted(RECIPES), required=True)
  train.add_argument("--data-dir", help="folder with the dataset's files (or holding mnist/ or "
                     "celeba/); default $CFAJAX_DATA_DIR, else tensorflow-datasets")
  train.add_argument("--out", required=True,
                     help="checkpoint folder to write (replaced if present)")
  train.add_argument("--epochs", type=int, help="passes over the training data (default: the "
                     "dataset's recipe)")
  train.add_argument("--batch-size", type=int, help="examples per step (default: the recipe's)")
  train.add_argument("--lr", type=float,
                     help="peak learning rate (default 1e-3; a GAN's: 2e-4, constant; a "
                     "translator's: 1e-3, constant)")
  train.add_argument("--r1", type=float, help="a GAN's R1 penalty weight (default: the recipe's)")
  train.add_argument("--weight-decay", type=float, default=0.0,
                     help="AdamW weight decay of a VAE or classifier (default 0: plain Adam)")
  train.add_argument("--seed", type=int, help="default 0, or 1 with --oracle")
  train.add_argument("--latent-dim", type=int, help="VAE or GAN latent size (default: the "
                     "recipe's)")
  train.add_argument("--beta", type=float, help="VAE KL weight (default: the dataset's recipe)")
  train.add_argument("--widths", help="comma-separated channel widths, e.g. 32,64 (default: "
                     "the recipe's)")
  train.add_argument("--depth", type=int, help="classifier convolutions per stage (default: "
                     "1, or 2 with --oracle)")
  train.add_argument("--ema-decay", type=float,
                     help="a diffusion model's weight average decay (default 0.999)")
  train.add_argument("--ddim-steps", type=int, help="a diffusion model's DDIM steps over the "
                     "whole chain, stored as its default edit (default: the recipe's)")
  train.add_argument("--edit-depth", type=float, help="a diffusion model's edit depth, the "
                     "fraction of the chain edited, stored as its default (default: the "
                     "recipe's)")
  train.add_argument("--dense-width", type=int, help="classifier hidden dense width (default: "
                     "128, or 256 with --oracle)")
  train.add_argument("--attributes", help="CelebA classifier: comma-separated attribute names "
                     f"(sigmoid heads); default {','.join(CELEBA_DEFAULT_ATTRIBUTES)}; CelebA "
                     "DUQ or translator: the one attribute whose two values are its classes")
  train.add_argument("--oracle", action="store_true",
                     help="train the independent oracle classifier: another architecture and "
                     "seed, on the second half of the training split")
  train.add_argument("--train-part", choices=TRAIN_PARTS,
                     help="which part of the training split to learn from; default all for a "
                     "VAE, first-half for a classifier, second-half for an oracle")
  train.add_argument("--image-size", type=int, default=64, help="CelebA side (default 64)")
  train.add_argument("--holdout", type=int, default=CELEBA_HOLDOUT,
                     help="CelebA: examples held out from the end of the training split for "
                     "evaluation when the official validation images are absent (default 1000)")
  train.add_argument("--no-progress", action="store_true", help="no progress bars")


def _int_list(text: str | None) -> tuple[int, ...] | None:
  return None if text is None else tuple(int(w) for w in text.split(",") if w.strip())


def _print_epoch(record: dict) -> None:
  keys = [k for k in record if k not in ("epoch", "seconds")]
  values = "  ".join(f"{k}={record[k]:.4f}" for k in keys)
  print(f"epoch {record['epoch']:3d}  {values}  ({record['seconds']:.1f}s)", flush=True)


def _run_train(args) -> int:
  """Runs `cfajax train`; returns the exit status."""
  import time

  from cfajax import _checkpoint
  from cfajax import _recipes

  if args.oracle and args.model != "classifier":
    raise ValueError("--oracle applies to `cfajax train classifier`")
  for flag in ("ema_decay", "ddim_steps", "edit_depth"):
    if getattr(args, flag) is not None and args.model != "diffusion":
      raise ValueError(f"--{flag.replace('_', '-')} applies to `cfajax train diffusion`")
  attributes = None if args.attributes is None else tuple(
      a.strip() for a in args.attributes.split(",") if a.strip())
  if attributes and args.dataset != "celeba":
    raise ValueError(f"--attributes apply to CelebA; {args.dataset} has class labels")
  train, test = _recipes.load_train_test(args.dataset, args.data_dir, image_size=args.image_size,
                                         holdout=args.holdout, progress=not args.no_progress)
  part = args.train_part or _recipes.default_train_part(args.model, args.oracle)
  seed = args.seed if args.seed is not None else (1 if args.oracle else 0)
  print(f"training {'an oracle' if args.oracle else 'a'} {args.model} on {part} of the "
        f"training split, evaluating on {len(test)} examples; seed {seed}")
  start = time.perf_counter()
  model, history, info = _recipes.train_model(
      args.model, args.dataset, train, test, oracle=args.oracle, part=part, seed=seed,
      epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
      weight_decay=args.weight_decay, latent_dim=args.latent_dim, beta=args.beta,
      widths=_int_list(args.widths), depth=args.depth, dense_width=args.dense_width,
      attributes=attributes, r1_gamma=args.r1, ema_decay=args.ema_decay, steps=args.ddim_steps,
      edit_depth=args.edit_depth, progress=not args.no_progress, on_epoch=_print_epoch)
  seconds = time.perf_counter() - start

  record = {"history": history, "dataset": args.dataset, **info, "test": test.name,
            "test_examples": len(test), "oracle": args.oracle, "seconds": seconds,
            "argv": sys.argv[1:]}
  path = _checkpoint.save_model(args.out, model, metrics=record)
  final = {k: round(v, 4) for k, v in history[-1].items() if k.startswith("test_")}
  print(f"final test metrics: {json.dumps(final)}")
  print(f"trained in {seconds:.0f}s; checkpoint saved to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
