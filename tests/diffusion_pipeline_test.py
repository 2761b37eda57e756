"""A diffusion model through the pipeline: trained by `cfajax train diffusion`, saved and
restored, and explained through by `cfajax explain` (edit options, resuming, bfloat16)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfajax
from cfajax._checkpoint import weights_digest
from cfajax._cli import main

TINY = ["--widths", "8,16", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A diffusion model and a classifier trained on the digits for one and a few epochs."""
  folder = tmp_path_factory.mktemp("diffusion")
  assert main(["train", "diffusion", "--dataset", "digits", "--epochs", "1", "--ddim-steps",
               "6", "--edit-depth", "0.5", "--out", str(folder / "diffusion"), *TINY]) == 0
  assert main(["train", "classifier", "--dataset", "digits", "--epochs", "10",
               "--out", str(folder / "classifier"), "--no-progress"]) == 0
  return folder


def explain_args(folder, out, *extra):
  return ["explain", "--dataset", "digits", "--generator", str(folder / "diffusion"),
          "--classifier", str(folder / "classifier"), "--out", str(out), "--limit", "24",
          "--chunk-size", "8", "--probe-examples", "200", "--num-bootstrap", "20",
          "--num-permutations", "0", "--max-steps", "60", "--threshold", "0.5", "--no-progress",
          *extra]


def test_training_records_the_held_out_checks_and_saves_the_averaged_weights(trained):
  info = cfajax.read_checkpoint_info(trained / "diffusion")
  assert info["kind"] == "diffusion"
  assert (info["config"]["steps"], info["config"]["depth"]) == (6, 0.5)
  record = info["metrics"]["history"][0]
  assert np.isfinite(record["test_loss"]) and np.isfinite(record["test_recon_mse"])
  model = cfajax.load_model(trained / "diffusion")
  assert isinstance(model, cfajax.DiffusionGenerator)
  assert (model.steps, model.depth, model.edit_steps) == (6, 0.5, 3)
  assert weights_digest(model) == info["weights_sha256"]


def test_training_lowers_the_held_out_noise_error():
  digits = cfajax.load_digits()
  train, test = digits.images[:1200], digits.images[1200:]
  config = cfajax.DiffusionConfig(cfajax.UNetConfig(image_shape=(8, 8, 1), widths=(8, 16),
                                                    groups=4), steps=4, depth=0.5)
  model = cfajax.build_model("diffusion", config, seed=0)
  before = cfajax.evaluate_diffusion(model, test, reconstruction_images=0)["loss"]
  model, history = cfajax.train_diffusion(model, train, test, epochs=2, batch_size=64,
                                          progress=False)
  # An untrained UNet's noise error is about its output's variance plus the noise's (1).
  assert history[-1]["test_loss"] < 0.8 * before
  # The history's held-out loss is the returned (averaged) weights': the same program on
  # the same weights gives the same number.
  assert history[-1]["test_loss"] == cfajax.evaluate_diffusion(
      model, test, reconstruction_images=0)["loss"]


@pytest.mark.parametrize("options, match", [
    (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
    (dict(train=np.zeros((4, 9, 9, 1), np.float32)), r"shape \(9, 9, 1\); the model expects"),
])
def test_bad_training_options_are_refused(options, match):
  config = cfajax.DiffusionConfig(cfajax.UNetConfig(image_shape=(8, 8, 1), widths=(8, 16),
                                                    groups=4))
  model = cfajax.build_model("diffusion", config)
  data = options.pop("train", np.zeros((4, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match=match):
    cfajax.train_diffusion(model, data, progress=False, **options)


def test_other_prediction_types_are_refused_for_training():
  config = cfajax.DiffusionConfig(
      cfajax.UNetConfig(image_shape=(8, 8, 1), widths=(8, 16), groups=4),
      cfajax.NoiseSchedule(prediction_type="v_prediction"))
  with pytest.raises(ValueError, match="predicts 'v_prediction'"):
    cfajax.train_diffusion(cfajax.build_model("diffusion", config),
                           np.zeros((4, 8, 8, 1), np.float32), progress=False)


def test_explain_through_it_records_the_edit_and_resumes(trained, tmp_path, capsys):
  out = tmp_path / "run"
  assert main(explain_args(trained, out, "--edit-depth", "0.34")) == 0
  summary = json.loads((out / "summary.json").read_text())
  run = json.loads((out / "run.json").read_text())
  assert run["config"]["edit_depth"] == 0.34 and run["config"]["probe_examples"] == 200
  assert summary["models"]["generator"]["edit"] == {"ddim_steps": 6, "depth": 0.34,
                                                   "edit_steps": 2, "remat": True}
  assert summary["num_examples"] == 24 and summary["flip_rate"] > 0
  fit = summary["attribute_source"]["fit"]
  assert fit.endswith("[200 of 1438]"), fit
  # Run again: every chunk is reused, and the explanation is the same.
  assert main(explain_args(trained, out, "--edit-depth", "0.34")) == 0
  again = json.loads((out / "summary.json").read_text())
  assert again["num_resumed"] == 24
  assert again["global_attributions"] == summary["global_attributions"]
  # Another edit is another generator: refused in this folder, before any work.
  capsys.readouterr()
  assert main(explain_args(trained, out, "--edit-depth", "1")) == 2
  assert "edit_depth" in capsys.readouterr().err


def test_edit_options_for_a_generator_that_is_not_a_diffusion_model_are_refused(trained, tmp_path,
                                                                                 capsys):
  # A preset's VAE (trained into the folder when absent): refused before anything is written.
  out = tmp_path / "vae-run"
  assert main(["explain", "--dataset", "digits", "--out", str(out), "--ddim-steps", "4",
               "--no-progress"]) == 2
  assert "diffusion generator's edit; the generator is a VAE trained by the preset" in \
      capsys.readouterr().err
  assert not os.path.exists(out)
  # More DDIM steps than the chain's timesteps.
  assert main(explain_args(trained, tmp_path / "x", "--ddim-steps", "1001")) == 2
  assert "at most the diffusion model's 1000 training timesteps" in capsys.readouterr().err


def test_the_attack_runs_through_it_in_bfloat16(trained):
  model = cfajax.load_model(trained / "diffusion")
  classifier = cfajax.load_model(trained / "classifier")
  images = cfajax.load_digits().images[:4]
  z = np.asarray(model.encode(images))
  result = cfajax.counterfactual_attack(model.decode, classifier, z, 3, threshold=0.9,
                                        max_steps=3, precision="bfloat16")
  assert result.z.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(result.z)))
  # The bfloat16 images stay bfloat16 through every DDIM step of the scan.
  graphdef, state = nnx.split(model)
  low = nnx.merge(graphdef, jax.tree_util.tree_map(
      lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a, state))
  assert low.decode(z[:1].astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_edit_options_with_a_generator_object_for_a_preset_are_checked_on_the_object(tmp_path):
  # No VAE is trained when the user passes a generator: the options are checked on it.
  from cfajax._explain_checks import check_config
  config = cfajax.ExplainConfig(dataset="digits", out=str(tmp_path / "run"), edit_depth=0.5)
  check_config(config, generator_given=True)
  with pytest.raises(ValueError, match="the generator is a VAE trained by the preset"):
    check_config(config)
