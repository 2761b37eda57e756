"""Tests of the NNX models: shapes, determinism, the closed-form KL, configs, plug-ins."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfajax
from cfajax import _models
from cfajax._models import max_pool_2x2
from cfajax._plugin_example import fit_pca
from cfajax._plugin_example import fit_softmax_regression

from conftest import TINY_VAE

# The three image shapes the issue asks for, and an odd one that exercises the
# decoder's cropping after each transposed convolution.
SHAPES = {
    "mnist": ((28, 28, 1), (8, 16)),
    "digits": ((8, 8, 1), (8, 16)),
    "celeba": ((64, 64, 3), (8, 8, 16, 16)),
    "odd": ((7, 9, 2), (4, 4, 4)),
}


def images(shape, n=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((n, *shape)), jnp.float32)


def abstract_images(shape, n=3):
  return jax.ShapeDtypeStruct((n, *shape), jnp.float32)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_vae_shapes(name):
  # Traced abstractly (no compilation): the shapes follow from the config alone.
  shape, widths = SHAPES[name]
  config = cfajax.VAEConfig(shape, latent_dim=5, widths=widths)
  vae = nnx.eval_shape(lambda: cfajax.ConvVAE(config, rngs=nnx.Rngs(0)))
  x = abstract_images(shape)
  mean, logvar = nnx.eval_shape(lambda m, x: m.encode_stats(x), vae, x)
  decoded = nnx.eval_shape(lambda m, x: m.decode(m.encode(x)), vae, x)
  logits, _, _ = nnx.eval_shape(lambda m, x: m(x, nnx.Rngs(sample=1)), vae, x)
  assert mean.shape == logvar.shape == (3, 5)
  assert decoded.shape == logits.shape == (3, *shape)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("head,k", [("softmax", 10), ("sigmoid", 4), ("sigmoid", 1)])
def test_classifier_shapes(name, head, k):
  shape, widths = SHAPES[name]
  config = cfajax.ClassifierConfig(shape, num_outputs=k, head=head, widths=widths[:2],
                                   dense_width=16)
  classifier = nnx.eval_shape(lambda: cfajax.Classifier(config, rngs=nnx.Rngs(0)))
  x = abstract_images(shape)
  assert nnx.eval_shape(lambda m, x: m(x), classifier, x).shape == (3, k)
  predicted = nnx.eval_shape(lambda m, x: m.predict(x), classifier, x)
  assert predicted.shape == ((3,) if head == "softmax" else (3, k))


def test_decoded_images_are_in_the_unit_interval(tiny_vae):
  # Latents far from the prior still decode to valid images (sigmoid output).
  z = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)) * 50, jnp.float32)
  decoded = nnx.jit(lambda m, z: m.decode(z))(tiny_vae, z)
  assert decoded.shape == (16, 8, 8, 1)
  assert bool(jnp.all((decoded >= 0) & (decoded <= 1)))


def test_softmax_probabilities_sum_to_one(tiny_classifier):
  probs = nnx.jit(lambda m, x: m.probabilities(x))(tiny_classifier, images((8, 8, 1)))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_encode_is_the_deterministic_mean(tiny_vae):
  vae = tiny_vae
  x = images((8, 8, 1))
  np.testing.assert_array_equal(vae.encode(x), vae.encode(x))
  np.testing.assert_array_equal(vae.encode(x), vae.encode_stats(x)[0])
  # The training forward samples: two noise draws differ, the same draw repeats.
  a, _, _ = vae(x, nnx.Rngs(sample=1))
  b, _, _ = vae(x, nnx.Rngs(sample=2))
  c, _, _ = vae(x, nnx.Rngs(sample=1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, c)


def test_kl_closed_form():
  # KL(N(0, 1) || N(0, 1)) = 0 exactly.
  np.testing.assert_array_equal(_models.gaussian_kl(jnp.zeros((2, 6)), jnp.zeros((2, 6))), 0.0)
  # One dimension, mean m and variance s^2: (s^2 + m^2 - 1 - log s^2) / 2.
  m, s2 = 1.5, 0.25
  want = 0.5 * (s2 + m * m - 1 - np.log(s2))
  got = _models.gaussian_kl(jnp.array([[m]]), jnp.log(jnp.array([[s2]])))
  np.testing.assert_allclose(got, [want], rtol=1e-6)


def test_bernoulli_bce_matches_the_definition():
  # Against -[x log p + (1 - x) log(1 - p)] in float64, for soft targets too.
  logits = np.linspace(-6, 6, 13)
  x = np.linspace(0, 1, 13)
  p = 1 / (1 + np.exp(-logits))
  want = -(x * np.log(p) + (1 - x) * np.log(1 - p))
  np.testing.assert_allclose(_models.bernoulli_bce(jnp.asarray(logits), jnp.asarray(x)),
                             want, rtol=1e-5)


def test_vae_loss_is_reconstruction_plus_beta_kl():
  vae = cfajax.ConvVAE(dataclasses.replace(TINY_VAE, beta=4.0), rngs=nnx.Rngs(0))
  x = images((8, 8, 1), n=5)
  loss, metrics = vae.loss(x, nnx.Rngs(sample=3))
  logits, mean, logvar = vae(x, nnx.Rngs(sample=3))
  recon = np.asarray(_models.bernoulli_bce(logits, x)).sum(axis=(1, 2, 3))
  kl = np.asarray(_models.gaussian_kl(mean, logvar))
  np.testing.assert_allclose(loss, np.mean(recon + 4.0 * kl), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl"], kl.mean(), rtol=1e-5)


def test_configs_round_trip_through_json():
  vae = cfajax.VAEConfig((64, 64, 3), 32, (8, 16, 32, 64), beta=0.5)
  clf = cfajax.ClassifierConfig((64, 64, 3), 2, "sigmoid", (8, 16), depth=2, dense_width=32,
                                output_names=("Young", "Male"))
  for config in (vae, clf):
    back = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and hash(back) == hash(config)


@pytest.mark.parametrize("bad", [
    dict(image_shape=(28, 28)), dict(latent_dim=0), dict(widths=()), dict(beta=-1.0)])
def test_vae_config_rejects_bad_values(bad):
  with pytest.raises(ValueError):
    cfajax.VAEConfig(**bad)


@pytest.mark.parametrize("bad", [
    dict(head="tanh"), dict(head="softmax", num_outputs=1), dict(num_outputs=2,
                                                                 output_names=("a",)),
    dict(depth=0)])
def test_classifier_config_rejects_bad_values(bad):
  with pytest.raises(ValueError):
    cfajax.ClassifierConfig(**bad)


def test_from_dict_names_unknown_fields():
  with pytest.raises(ValueError, match="latent"):
    cfajax.VAEConfig.from_dict({"latnet_dim": 3})


def test_plug_in_generator_pca_with_the_attack():
  # A generator and a classifier cfajax did not train: a PCA of the digits and
  # a softmax regression, as plain JAX functions (the docstring's example).
  digits = cfajax.load_digits()
  pca = cfajax.Generator(*fit_pca(digits.images, latent_dim=16))
  classify = fit_softmax_regression(digits.images, digits.labels, steps=100)
  z = pca.encode(jnp.asarray(digits.images[:6]))
  assert z.shape == (6, 16)
  assert pca.decode(z).shape == (6, 8, 8, 1)
  result = cfajax.counterfactual_attack(pca.decode, classify, z, target=3, step_size=0.5)
  assert bool(np.all(result.success)), result.status
  probs = jax.nn.softmax(classify(pca.decode(result.z)))[:, 3]
  assert bool(np.all(probs >= 0.5 - 1e-5))
  # The same pair serves `reconstruct`, like a ConvVAE.
  assert cfajax.reconstruct(pca, digits.images[:6]).shape == (6, 8, 8, 1)


def test_conv_vae_bound_methods_plug_into_the_attack(tiny_vae, tiny_classifier):
  z = tiny_vae.encode(images((8, 8, 1), n=4))
  result = cfajax.counterfactual_attack(tiny_vae.decode, tiny_classifier, z, target=7,
                                        max_steps=5)
  assert result.z.shape == (4, 4)
  assert set(np.asarray(result.status)) <= {cfajax.Status.REACHED, cfajax.Status.MAX_STEPS}
  # The result's latents decode with the same bound method.
  assert tiny_vae.decode(result.z).shape == (4, 8, 8, 1)


def test_depth_to_space_places_channels_in_2x2_blocks():
  # Channel k of a pixel (i, j) lands at (2i + k // 2, 2j + k % 2) for one output channel.
  x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 2, 3, 4)
  y = np.asarray(_models._depth_to_space(x))[0, :, :, 0]
  want = np.zeros((4, 6))
  for i in range(2):
    for j in range(3):
      for k in range(4):
        want[2 * i + k // 2, 2 * j + k % 2] = x[0, i, j, k]
  np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 7, 4), (1, 5, 6, 2)])
def test_max_pool_matches_flax_values_and_gradients(shape):
  # Random values have no ties, so the gradients of both pools are unique.
  x = jax.random.normal(jax.random.key(0), shape)
  reference = lambda v: nnx.max_pool(v, (2, 2), strides=(2, 2), padding="SAME")
  np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
  weights = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda pool: jax.grad(lambda v: (pool(v) * weights).sum())(x)
  np.testing.assert_array_equal(grad(max_pool_2x2), grad(reference))
