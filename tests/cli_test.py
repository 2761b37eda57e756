"""Tests of `cfajax train` on scikit-learn's digits (no download)."""

import numpy as np
import pytest

import cfajax
from cfajax._cli import main


def test_train_classifier_and_its_oracle(tmp_path, capsys):
  common = ["--dataset", "digits", "--epochs", "1", "--no-progress", "--widths", "8,16",
            "--dense-width", "16"]
  assert main(["train", "classifier", "--out", str(tmp_path / "clf"), *common]) == 0
  assert main(["train", "classifier", "--oracle", "--out", str(tmp_path / "oracle"),
               "--depth", "2", *common]) == 0
  out = capsys.readouterr().out
  assert "epoch   1" in out and f"checkpoint saved to {tmp_path / 'oracle'}" in out

  main_info = cfajax.read_checkpoint_info(tmp_path / "clf")["metrics"]
  oracle_info = cfajax.read_checkpoint_info(tmp_path / "oracle")["metrics"]
  # Disjoint halves of the same 1,438 training digits, different seeds.
  assert (main_info["train_part"], oracle_info["train_part"]) == ("first-half", "second-half")
  assert main_info["train_examples"] + oracle_info["train_examples"] == 1438
  assert (main_info["seed"], oracle_info["seed"]) == (0, 1)
  oracle = cfajax.load_model(tmp_path / "oracle")
  assert oracle.config.depth == 2
  assert cfajax.load_model(tmp_path / "clf").config.depth == 1
  x = cfajax.load_digits().images[:4]
  assert oracle(x).shape == (4, 10)


def test_train_vae(tmp_path, capsys):
  assert main(["train", "vae", "--dataset", "digits", "--epochs", "1", "--no-progress",
               "--latent-dim", "4", "--widths", "8,16", "--out", str(tmp_path / "vae")]) == 0
  vae = cfajax.load_model(tmp_path / "vae")
  assert vae.config.latent_dim == 4
  history = cfajax.read_checkpoint_info(tmp_path / "vae")["metrics"]["history"]
  assert np.isfinite(history[0]["test_recon_bce"])
  assert "test_recon_bce=" in capsys.readouterr().out


def test_oracle_needs_a_classifier(tmp_path, capsys):
  assert main(["train", "vae", "--oracle", "--dataset", "digits", "--out",
               str(tmp_path / "x")]) == 2
  assert capsys.readouterr().err.strip() == (
      "cfajax train: error: --oracle applies to `cfajax train classifier`")


def test_common_mistakes_get_one_line_and_debug_the_traceback(tmp_path, capsys):
  missing = str(tmp_path / "nowhere")
  assert main(["explain", "--dataset", "mnist", "--data-dir", missing,
               "--out", str(tmp_path / "a")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("cfajax explain: error: ") and "\n" not in err and missing in err
  assert main(["explain", "--threshold", "1.5", "--out", str(tmp_path / "b")]) == 2
  assert "threshold" in capsys.readouterr().err
  with pytest.raises(ValueError, match="threshold"):
    main(["--debug", "explain", "--threshold", "1.5", "--out", str(tmp_path / "b")])


def test_help_does_not_load_jax():
  # What makes `cfajax --help` fast (issue: 9 s before): nothing heavy is
  # imported to build the command line. Checked in a fresh interpreter,
  # since this one has JAX loaded already.
  import subprocess
  import sys
  code = ("import contextlib, io, sys\n"
          "from cfajax._cli import main\n"
          "for argv in (['--help'], ['explain', '--help'], ['train', 'gan', '--help']):\n"
          "  with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
          "    main(argv)\n"
          "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'sklearn', 'orbax') "
          "if m in sys.modules)\n"
          "print(','.join(heavy) or 'none')\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "none", out.stdout + out.stderr


def test_every_public_name_resolves():
  for name in cfajax.__all__:
    assert getattr(cfajax, name) is not None, name
  assert set(cfajax.__all__) <= set(dir(cfajax))
  with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
    cfajax.nonexistent  # noqa: B018
