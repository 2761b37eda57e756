"""The GAN: its losses, training, checkpoints, command and use as a generator to explain with."""

import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import _train
from cfajax._cli import main

TINY = cfajax.GANConfig((8, 8, 1), latent_dim=4, widths=(8, 16))


def test_discriminator_loss_and_r1_penalty_against_a_linear_discriminator():
  # D(x) = w.x + b has grad_x D = w for every image, so R1 = |w|^2 exactly.
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=64).astype(np.float32), np.float32(0.3)
  discriminator = lambda x: x.reshape(x.shape[0], -1) @ w + b
  generator = lambda z: jnp.tanh(z @ jnp.ones((4, 64))).reshape(-1, 8, 8, 1)
  x = rng.random((5, 8, 8, 1)).astype(np.float32)
  z = rng.normal(size=(5, 4)).astype(np.float32)
  total, metrics = _train.gan._d_loss(discriminator, generator, x, z, 2.0)
  real = x.reshape(5, -1) @ w + b
  fake = np.tanh(z @ np.ones((4, 64))) @ w + b
  softplus = lambda v: np.log1p(np.exp(v))
  want_loss = softplus(-real).mean() + softplus(fake).mean()
  np.testing.assert_allclose(metrics["d_loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["r1"], w @ w, rtol=1e-5)
  np.testing.assert_allclose(total, want_loss + 0.5 * 2.0 * (w @ w), rtol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny GAN trained on the digits by `cfajax train gan`."""
  path = tmp_path_factory.mktemp("gan") / "gan"
  assert main(["train", "gan", "--dataset", "digits", "--epochs", "3", "--latent-dim", "4",
               "--widths", "8,16", "--no-progress", "--out", str(path)]) == 0
  return path


def test_training_updates_both_networks_and_reports_held_out_checks(trained):
  info = cfajax.read_checkpoint_info(trained)
  assert info["kind"] == "gan" and info["metrics"]["train_part"] == "all"
  history = info["metrics"]["history"]
  assert [r["epoch"] for r in history] == [1, 2, 3]
  for key in ("train_d_loss", "train_g_loss", "train_r1", "test_d_real", "test_d_fake",
              "test_inversion_mse"):
    assert np.isfinite(history[-1][key]), key
  assert 0 < history[-1]["test_d_real"] < 1 and 0 <= history[-1]["test_inversion_mse"] < 1
  gan, initial = cfajax.load_model(trained), cfajax.build_model("gan", TINY)  # seed 0, as trained
  assert not np.array_equal(initial.generator.from_latent.kernel[...],
                            gan.generator.from_latent.kernel[...])
  assert not np.array_equal(initial.discriminator.out.kernel[...],
                            gan.discriminator.out.kernel[...])
  images = gan.decode(jnp.zeros((3, 4)))
  assert images.shape == (3, 8, 8, 1) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_checkpoint_round_trip(tmp_path):
  gan = cfajax.build_model("gan", TINY, seed=3)
  path = cfajax.save_model(tmp_path / "gan", gan)
  loaded = cfajax.load_model(path)
  assert isinstance(loaded, cfajax.ConvGAN) and loaded.config == TINY
  z = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
  np.testing.assert_array_equal(loaded.decode(z), gan.decode(z))
  x = np.asarray(gan.decode(z))
  np.testing.assert_array_equal(loaded.discriminate(x), gan.discriminate(x))


def test_explain_with_a_gan_inverts_the_images(trained, tmp_path):
  # The digits preset with the GAN as its generator: latents by inversion.
  summary = cfajax.explain(generator=str(trained), explain_split="test",
                           out=str(tmp_path / "run"), classifier_epochs=5,
                           attack=cfajax.attacks.LatentAttack(max_steps=50),
                           inversion_starts=2, inversion_steps=30, num_bootstrap=50,
                           num_permutations=40, progress=False, log=None)
  inversion = summary["inversion"]
  assert inversion["images"] == summary["num_examples"] + inversion["left_out"]
  assert np.isfinite(inversion["median_error"])
  assert summary["models"]["generator"]["checkpoint"] == str(trained)


def test_bad_gan_configs_are_named():
  with pytest.raises(ValueError, match="latent_dim must be a positive int"):
    cfajax.GANConfig((8, 8, 1), latent_dim=0)
  with pytest.raises(ValueError, match="widths must be a non-empty"):
    cfajax.GANConfig((8, 8, 1), widths=())
