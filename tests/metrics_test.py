"""Counterfactual-quality metrics, on a planted case where semantics and adversarial noise differ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import metrics

SHAPE = (4, 4, 1)  # 16 pixels; pixel 0 carries the semantics, the rest are noise
BASE = np.full(SHAPE, 0.5, np.float32)
BASE[0, 0, 0] = 0.0
SEMANTIC = np.zeros(SHAPE, np.float32)
SEMANTIC[0, 0, 0] = 1.0


def decode(z):
  """The generator's manifold: only pixel 0 varies, x = BASE + z * e_0."""
  return jnp.asarray(BASE) + z[:, 0, None, None, None] * jnp.asarray(SEMANTIC)


def encode(x):
  return x[:, 0, 0, :]


def classifier(x):
  """A weak semantic weight on pixel 0 and a strong one on the 15 noise pixels."""
  w = jnp.full(SHAPE, 3.0).at[0, 0, 0].set(1.0)
  return (jnp.sum((x - 0.5) * w, axis=(1, 2, 3)))[:, None]


def oracle(x):
  """Looks at the semantic pixel only."""
  return (x[:, 0, 0, 0] - 0.5)[:, None] * 10.0


def starts(n=8):
  z = np.linspace(0.05, 0.3, n, dtype=np.float32)[:, None]
  return z, np.asarray(decode(jnp.asarray(z)))


def test_validity_counts_status_and_steps():
  result = cfajax.AttackResult(
      z=np.zeros((4, 1), np.float32), target=np.ones(4, np.int32),
      steps=np.array([0, 3, 5, 100], np.int32),
      status=np.array([0, 0, 2, 1], np.int32),
      initial_prob=np.zeros(4, np.float32), final_prob=np.zeros(4, np.float32))
  v = metrics.validity(result)
  assert v["n"] == 4 and v["flip_rate"] == 0.5
  assert v["status"] == {"reached": 2, "max_steps": 1, "zero_gradient": 1, "non_finite": 0}
  assert v["steps"]["median"] == 1.5 and v["steps"]["max"] == 3
  assert v["steps_all"]["max"] == 100


def test_proximity_by_hand():
  a = np.zeros((2, 2, 2, 1), np.float32)
  b = a.copy()
  b[0, 0, 0, 0] = 0.4
  b[1] = 0.5
  d = metrics.proximity(b, a, images=a + 0.1, z=np.zeros((2, 3)), z_cf=np.ones((2, 3)))
  np.testing.assert_allclose(d["pixel_l1"], [0.1, 0.5])
  np.testing.assert_allclose(d["pixel_l2"], [0.4, 1.0])
  np.testing.assert_allclose(d["pixel_l1_to_original"], [(0.3 + 0.3) / 4, 0.4], rtol=1e-6)
  np.testing.assert_allclose(d["latent_l2"], [np.sqrt(3)] * 2)
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.proximity(b, a[:, :1])
  with pytest.raises(ValueError, match="both z and z_cf"):
    metrics.proximity(b, a, z=np.zeros((2, 3)))


def test_target_probability_follows_the_attack_semantics():
  x = np.zeros((3, *SHAPE), np.float32)
  x[:, 0, 0, 0] = [0.5, 0.6, 0.4]
  p1 = metrics.target_probability(oracle, x, 1)
  np.testing.assert_allclose(p1, jax.nn.sigmoid(jnp.array([0.0, 1.0, -1.0])), rtol=1e-6)
  np.testing.assert_allclose(metrics.target_probability(oracle, x, 0), 1 - p1, rtol=1e-6)
  softmax = lambda images: jnp.stack([oracle(images)[:, 0], jnp.zeros(len(images))], -1)
  agreement = metrics.oracle_agreement(softmax, x, np.array([1, 0, 1]))
  np.testing.assert_array_equal(agreement["per_example"], [False, True, True])


def test_latent_counterfactuals_convince_the_oracle_and_pixel_ones_do_not():
  z, x = starts()
  options = dict(threshold=0.6, step_size=0.01, max_steps=2000)
  latent = cfajax.counterfactual_attack(decode, classifier, z, 1, **options)
  pixel = metrics.pixel_attack(classifier, x, 1, **options)
  assert bool(np.all(latent.success)) and bool(np.all(pixel.success))
  generator = cfajax.Generator(encode, decode)
  latent_report = metrics.counterfactual_report(
      latent, counterfactuals=np.asarray(decode(latent.z)), starts=x, images=x, z=z,
      oracle=oracle, generator=generator)
  pixel_cf = metrics.pixel_counterfactuals(pixel, SHAPE)
  pixel_report = metrics.counterfactual_report(
      pixel, counterfactuals=pixel_cf, starts=x, images=x, oracle=oracle, generator=generator)
  assert latent_report["oracle"]["agreement"] == 1.0
  assert pixel_report["oracle"]["agreement"] == 0.0
  # On the manifold the generator reproduces the counterfactual exactly; off it, it cannot.
  assert latent_report["realism"]["cf_error"] < 1e-10
  assert pixel_report["realism"]["cf_error"] > 1e-4
  assert pixel_report["realism"]["outlier_rate"] == 1.0
  # The pixel attack needs a smaller change: it uses the classifier's strong weights.
  assert (pixel_report["proximity"]["pixel_l2"]["median"]
          < latent_report["proximity"]["pixel_l2"]["median"])
  assert "latent_l2" in latent_report["proximity"] and "latent_l2" not in pixel_report["proximity"]


def test_bad_input_is_named():
  with pytest.raises(ValueError, match=r"images must be float images"):
    metrics.reconstruction_error(cfajax.Generator(encode, decode), np.zeros((3, 4)))
  with pytest.raises(ValueError, match="one length"):
    metrics.oracle_agreement(oracle, starts()[1], 1, success=np.ones(3, bool))
