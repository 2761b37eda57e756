"""Counterfactual-quality metrics on a planted case where semantics and adversarial noise differ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


def _flatten(x):
  return x.reshape(x.shape[0], -1)


def _dyadic_images(seed, n=300):
  # Multiples of 1/8 in [0, 1] and their shifts by 1/4 are exact in float32, so
  # the two sets' covariances agree up to float64 round-off.
  return np.random.default_rng(seed).integers(0, 9, (n, 2, 2, 1)).astype(np.float32) / 8


def test_frechet_distance_of_a_shift_is_its_squared_length():
  x = _dyadic_images(0)
  shifted = x + np.float32(0.25)
  # Equal covariances leave only |m1 - m2|^2 = 4 features * 0.25^2. The trace
  # term cancels up to float64 eigendecomposition round-off: ~F * eps * |C|,
  # with F = 4 and |C| < 1 here, so 1e-12 leaves a margin of ~1e3.
  d = metrics.frechet_distance(_flatten, shifted, x)
  assert d["n"] == d["n_reference"] == 300
  np.testing.assert_allclose(d["distance"], 0.25, rtol=0, atol=1e-12)
  assert abs(metrics.frechet_distance(_flatten, x, x)["distance"]) < 1e-12


def test_frechet_distance_matches_an_independent_formula():
  scipy_linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(1)
  a = rng.normal(size=(400, 3, 1, 1)).astype(np.float32)
  mixing = np.array([[2.0, 0.0, 0.0], [0.7, 0.5, 0.0], [-0.4, 0.3, 1.0]])
  b = (rng.normal(size=(500, 3)) @ mixing + 0.3).astype(np.float32).reshape(500, 3, 1, 1)
  fa, fb = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (a, b))
  ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
  expected = (np.sum((fa.mean(0) - fb.mean(0)) ** 2)
              + np.trace(ca + cb - 2 * np.real(scipy_linalg.sqrtm(ca @ cb))))
  # Both are float64 evaluations of one formula on the same statistics; they
  # differ by the round-off of two matrix square roots of well-conditioned 3x3
  # matrices (~1e-15 relative), far inside 1e-9.
  np.testing.assert_allclose(metrics.frechet_distance(_flatten, a, b)["distance"], expected,
                             rtol=1e-9)


def test_frechet_distance_measures_only_the_successful_images():
  x = _dyadic_images(2)
  mixed = np.concatenate([x, x + np.float32(0.25)])
  success = np.r_[np.ones(len(x), bool), np.zeros(len(x), bool)]
  d = metrics.frechet_distance(_flatten, mixed, x, success=success)
  assert d["n"] == len(x) and abs(d["distance"]) < 1e-12


def test_frechet_distance_with_an_oracle_separates_noise_from_real_images():
  data = cfajax.load_digits()
  oracle = cfajax.Classifier(cfajax.ClassifierConfig(image_shape=data.image_shape),
                             rngs=nnx.Rngs(0))
  real_a, real_b = data.images[:400], data.images[400:800]
  noise = np.random.default_rng(0).uniform(size=real_b.shape).astype(np.float32)
  floor = metrics.frechet_distance(oracle.features, real_a, real_b)["distance"]
  assert metrics.frechet_distance(oracle.features, noise, real_b)["distance"] > 2 * floor


def test_frechet_distance_names_bad_input():
  x = _dyadic_images(3)
  with pytest.raises(ValueError, match="at least 2 images"):
    metrics.frechet_distance(_flatten, x[:1], x)
  with pytest.raises(ValueError, match="features"):
    metrics.frechet_distance(_flatten, x, np.zeros((5, 3, 1, 1), np.float32))
  with pytest.raises(ValueError, match="not finite"):
    metrics.frechet_distance(_flatten, np.full_like(x, np.nan), x)
  with pytest.raises(ValueError, match="one length"):
    metrics.frechet_distance(_flatten, x, x, success=np.ones(3, bool))
