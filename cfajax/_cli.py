"""The `cfajax` command line."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="cfajax", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)
  demo = commands.add_parser(
      "demo", help="attack all 1,797 scikit-learn digits with a PCA generator (no download)")
  demo.add_argument("--latent-dim", type=int, default=16)
  _add_train_parser(commands)
  args = parser.parse_args(argv)

  if args.command == "demo":
    from cfajax._demo import run_demo
    print(json.dumps(run_demo(args.latent_dim), indent=2))
  elif args.command == "train":
    return _run_train(args)
  return 0


# -- cfajax train -------------------------------------------------------------

# Architectures per dataset. The oracle, which later judges counterfactuals
# independently of the attacked classifier, differs in widths, depth, hidden
# width and seed, and learns from the other half of the training split.
_PRESETS = {
    "digits": dict(latent_dim=8, vae_widths=(32, 64), widths=(32, 64),
                   oracle_widths=(24, 48, 96), vae_epochs=30, epochs=20, batch_size=64),
    "mnist": dict(latent_dim=16, vae_widths=(32, 64), widths=(32, 64),
                  oracle_widths=(24, 48, 96), vae_epochs=10, epochs=5, batch_size=128),
    "celeba": dict(latent_dim=128, vae_widths=(32, 64, 128, 256), widths=(32, 64, 128, 256),
                   oracle_widths=(24, 48, 96, 192), vae_epochs=20, epochs=10, batch_size=64),
}
_CELEBA_DEFAULT_ATTRIBUTES = ("Young", "Attractive", "Male", "Smiling")
_TRAIN_PARTS = ("all", "first-half", "second-half")


def _add_train_parser(commands) -> None:
  """Adds `cfajax train vae|classifier` to the subcommands."""
  train = commands.add_parser(
      "train", help="train a VAE or a classifier (or the oracle) and save a checkpoint",
      description="Train a model on MNIST, CelebA or scikit-learn's digits and save it with "
      "orbax. Classifiers learn from the first half of the training split and oracles "
      "(--oracle) from the second half, so that the oracle never saw the classifier's data.")
  train.add_argument("model", choices=("vae", "classifier"))
  train.add_argument("--dataset", choices=sorted(_PRESETS), required=True)
  train.add_argument("--data-dir", help="folder with the dataset's files (or holding mnist/ or "
                     "celeba/); default $CFAJAX_DATA_DIR, else tensorflow-datasets")
  train.add_argument("--out", required=True, help="checkpoint folder to write (replaced if present)")
  train.add_argument("--epochs", type=int)
  train.add_argument("--batch-size", type=int)
  train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
  train.add_argument("--weight-decay", type=float, default=0.0)
  train.add_argument("--seed", type=int, help="default 0, or 1 with --oracle")
  train.add_argument("--latent-dim", type=int, help="VAE latent size")
  train.add_argument("--beta", type=float, default=1.0, help="VAE KL weight (default 1)")
  train.add_argument("--widths", help="comma-separated channel widths, e.g. 32,64")
  train.add_argument("--depth", type=int, help="classifier convolutions per stage")
  train.add_argument("--dense-width", type=int, help="classifier hidden dense width")
  train.add_argument("--attributes", help="CelebA classifier: comma-separated attribute names "
                     f"(sigmoid heads); default {','.join(_CELEBA_DEFAULT_ATTRIBUTES)}")
  train.add_argument("--oracle", action="store_true",
                     help="train the independent oracle classifier: another architecture and "
                     "seed, on the second half of the training split")
  train.add_argument("--train-part", choices=_TRAIN_PARTS,
                     help="which part of the training split to learn from; default all for a "
                     "VAE, first-half for a classifier, second-half for an oracle")
  train.add_argument("--image-size", type=int, default=64, help="CelebA side (default 64)")
  train.add_argument("--holdout", type=int, default=1000,
                     help="CelebA: examples held out from the end of the training split for "
                     "evaluation when the official validation images are absent (default 1000)")
  train.add_argument("--no-progress", action="store_true", help="no progress bars")


def _int_list(text: str | None) -> tuple[int, ...] | None:
  return None if text is None else tuple(int(w) for w in text.split(",") if w.strip())


def _load_train_test(args):
  """(train, test) for `args.dataset`; says on stdout where the test set came from."""
  from cfajax import _data

  if args.dataset == "digits":
    # Seed fixed at 0 so that every model sees the same held-out digits.
    train, test = _data.split_dataset(_data.load_digits(), 0.2, seed=0)
    print(f"digits: {len(train)} train, {len(test)} test (split_dataset seed 0)")
    return train, test
  if args.dataset == "mnist":
    train = _data.load_mnist(args.data_dir, "train")
    test = _data.load_mnist(args.data_dir, "test")
    print(f"mnist: {len(train)} train, {len(test)} test (official split)")
    return train, test
  progress = not args.no_progress
  train = _data.load_celeba(args.data_dir, "train", args.image_size, progress=progress)
  try:
    test = _data.load_celeba(args.data_dir, "valid", args.image_size, progress=progress)
    print(f"celeba: train from {train.name}; test = official validation split, {test.name}")
  except ValueError:  # no validation images present (e.g. only the first 10,000 faces)
    train, test = _data.split_dataset(train, args.holdout, seed=None)
    print(f"celeba: no validation images present; held out the last {len(test)} of the "
          f"training split (ids {test.ids[0]}..{test.ids[-1]}) for evaluation, "
          f"{len(train)} remain for training")
  return train, test


def _train_part(dataset, part: str):
  if part == "all":
    return dataset
  half = len(dataset) // 2
  rows = slice(0, half) if part == "first-half" else slice(half, None)
  return dataset.subset(rows, f"{dataset.name} [{part}]")


def _print_epoch(record: dict) -> None:
  keys = [k for k in record if k not in ("epoch", "seconds")]
  values = "  ".join(f"{k}={record[k]:.4f}" for k in keys)
  print(f"epoch {record['epoch']:3d}  {values}  ({record['seconds']:.1f}s)", flush=True)


def _run_train(args) -> int:
  """Runs `cfajax train`; returns the exit status."""
  import time

  from cfajax import _checkpoint
  from cfajax import _models
  from cfajax import _train

  preset = _PRESETS[args.dataset]
  if args.oracle and args.model != "classifier":
    raise SystemExit("--oracle applies to `cfajax train classifier`")
  seed = args.seed if args.seed is not None else (1 if args.oracle else 0)
  part = args.train_part or (
      "all" if args.model == "vae" else "second-half" if args.oracle else "first-half")
  epochs = args.epochs or preset["vae_epochs" if args.model == "vae" else "epochs"]
  batch_size = args.batch_size or preset["batch_size"]

  train, test = _load_train_test(args)
  train = _train_part(train, part)
  print(f"training a {'oracle ' if args.oracle else ''}{args.model} on {len(train)} examples "
        f"({part} of the training split), evaluating on {len(test)}; seed {seed}")
  options = dict(epochs=epochs, batch_size=batch_size, learning_rate=args.lr,
                 weight_decay=args.weight_decay, seed=seed, progress=not args.no_progress,
                 on_epoch=_print_epoch)
  start = time.perf_counter()
  if args.model == "vae":
    config = _models.VAEConfig(
        image_shape=train.image_shape, latent_dim=args.latent_dim or preset["latent_dim"],
        widths=_int_list(args.widths) or preset["vae_widths"], beta=args.beta)
    model, history = _train.train_vae(_models.build_model("vae", config, seed), train, test,
                                      **options)
  else:
    if args.dataset == "celeba":
      names = tuple(a.strip() for a in (args.attributes or ",".join(
          _CELEBA_DEFAULT_ATTRIBUTES)).split(",") if a.strip())
      head_options = dict(num_outputs=len(names), head="sigmoid", output_names=names)
    else:
      if args.attributes:
        raise SystemExit(f"--attributes applies to CelebA; {args.dataset} has class labels")
      head_options = dict(num_outputs=10, head="softmax",
                          output_names=tuple(str(i) for i in range(10)))
    config = _models.ClassifierConfig(
        image_shape=train.image_shape,
        widths=_int_list(args.widths) or preset["oracle_widths" if args.oracle else "widths"],
        depth=args.depth or (2 if args.oracle else 1),
        dense_width=args.dense_width or (256 if args.oracle else 128), **head_options)
    model, history = _train.train_classifier(
        _models.build_model("classifier", config, seed), train, test, **options)
  seconds = time.perf_counter() - start

  record = {"history": history, "dataset": args.dataset, "train": train.name,
            "train_examples": len(train), "test": test.name, "test_examples": len(test),
            "train_part": part, "oracle": args.oracle, "seed": seed, "seconds": seconds,
            "argv": sys.argv[1:]}
  path = _checkpoint.save_model(args.out, model, metrics=record)
  final = {k: round(v, 4) for k, v in history[-1].items() if k.startswith("test_")}
  print(f"final test metrics: {json.dumps(final)}")
  print(f"trained in {seconds:.0f}s; checkpoint saved to {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
