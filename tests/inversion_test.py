"""Batched latent inversion against planted answers, a trained decoder and its contract."""

import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import _scheduler

D, PIXELS = 4, 9


def linear_decoder(seed=0):
  a = np.random.default_rng(seed).normal(size=(D, PIXELS)) / 2
  return (lambda z: (z @ jnp.asarray(a, z.dtype)).reshape(-1, 3, 3, 1)), a


def test_a_linear_decoder_is_inverted_to_the_planted_latents():
  decode, a = linear_decoder()
  truth = np.random.default_rng(10).normal(size=(12, D)).astype(np.float32)
  images = np.asarray(decode(truth))
  tolerance = 1e-10
  result = cfajax.invert(decode, images, latent_dim=D, starts=3, seed=1, optimizer=None,
                         step_size=0.5, max_steps=3000, tolerance=tolerance)
  np.testing.assert_array_equal(result.status, cfajax.Status.REACHED)
  assert np.all(result.steps > 0)
  # loss = |A^T e|^2 / 9 <= tolerance, so |e| <= sqrt(9 tolerance) / sigma_min(A).
  bound = np.sqrt(PIXELS * tolerance) / np.linalg.svd(a, compute_uv=False).min()
  assert np.all(np.linalg.norm(result.z - truth, axis=1) <= bound * 1.01), bound
  np.testing.assert_allclose(result.loss, result.start_losses.min(axis=1))
  np.testing.assert_array_equal(result.start, np.argmin(result.start_losses, axis=1))


def test_the_pixel_error_is_the_decoded_latents_error():
  decode, _ = linear_decoder(seed=2)
  images = np.random.default_rng(3).random((5, 3, 3, 1)).astype(np.float32)  # not all reachable
  result = cfajax.invert(decode, images, latent_dim=D, starts=2, max_steps=50)
  want = np.mean((np.asarray(decode(jnp.asarray(result.z))) - images) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(result.pixel_mse, want, rtol=1e-5)
  np.testing.assert_allclose(result.loss, result.pixel_mse, rtol=1e-4)  # no feature or prior term
  assert np.all(result.status == cfajax.Status.MAX_STEPS)


def test_feature_and_prior_terms_add_to_the_loss():
  decode, _ = linear_decoder(seed=4)
  images = np.random.default_rng(5).random((6, 3, 3, 1)).astype(np.float32)
  features = lambda x: jnp.tanh(x.reshape(x.shape[0], -1)[:, :3] * 2)
  result = cfajax.invert(decode, images, latent_dim=D, features=features, feature_weight=2.0,
                         prior_weight=0.1, starts=2, max_steps=40)
  z = jnp.asarray(result.z)
  want = (result.pixel_mse
          + 2.0 * np.mean((np.asarray(features(decode(z))) - np.asarray(features(images))) ** 2, 1)
          + 0.1 * np.mean(np.asarray(z) ** 2, axis=1))
  np.testing.assert_allclose(result.loss, want, rtol=1e-4)


def test_a_sweep_over_step_sizes_compiles_once():
  decode, _ = linear_decoder(seed=6)
  images = np.random.default_rng(7).random((8, 3, 3, 1)).astype(np.float32)
  sizes = []
  for lr in (0.1, 0.05, 0.02):
    cfajax.invert(decode, images, latent_dim=D, step_size=lr, max_steps=20 + int(lr * 100),
                  tolerance=lr / 10)
    sizes.append(_scheduler._advance_sharded._cache_size())
  assert sizes[1:] == sizes[:1] * 2


def test_bad_inputs_are_named():
  decode, _ = linear_decoder()
  images = np.zeros((2, 3, 3, 1), np.float32)
  with pytest.raises(ValueError, match="latent_dim is needed"):
    cfajax.invert(decode, images)
  with pytest.raises(ValueError, match=r"decode maps latents \(B, 4\) to \(2, 3, 3, 1\) for "
                     r"B=2; the images are \(n, 4, 4, 1\)"):
    cfajax.invert(decode, np.zeros((2, 4, 4, 1), np.float32), latent_dim=D)
  with pytest.raises(ValueError, match="images must be float images"):
    cfajax.invert(decode, np.zeros((2, 3, 3, 1), np.uint8), latent_dim=D)
  with pytest.raises(ValueError, match="starts must be an integer"):
    cfajax.invert(decode, images, latent_dim=D, starts=0)


def test_inverting_a_trained_decoder_reconstructs_as_well_as_its_encoder():
  # The acceptance check: a decoder alone, from random starts, gives latents
  # whose reconstructions are at least as good as the encoder's.
  train, test = cfajax.split_dataset(cfajax.load_digits(), 0.2)
  vae = cfajax.build_model("vae", cfajax.VAEConfig((8, 8, 1), latent_dim=4, widths=(8, 16)))
  vae, _ = cfajax.train_vae(vae, train, epochs=20, batch_size=32, progress=False)
  images = test.images[:48]
  encoder_mse = np.mean((cfajax.reconstruct(vae, images) - images) ** 2, axis=(1, 2, 3))
  result = cfajax.invert(vae.decode, images, latent_dim=4, starts=4, max_steps=300)
  assert np.median(result.pixel_mse) <= np.median(encoder_mse), (
      np.median(result.pixel_mse), np.median(encoder_mse))
  # Started from the encoder's latents too, no image ends worse than the encoder's.
  seeded = cfajax.invert(vae.decode, images, encode=vae.encode, starts=2, max_steps=300)
  assert np.all(seeded.pixel_mse <= encoder_mse * (1 + 1e-5) + 1e-7)
