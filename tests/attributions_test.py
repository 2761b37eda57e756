"""Tests of local and global attributions: closed forms and a planted ground truth."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import _attributions


def test_local_attributions_are_probe_differences():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(120, 3)).astype(np.float32)
  probes = cfajax.fit_probes(z, (z[:, :2] > 0).astype(int), standardize=True)
  z_cf = z + np.float32(0.5)
  phi = cfajax.local_attributions(probes, z, z_cf)
  assert phi.shape == (120, 2)
  want = probes.predict_proba(z_cf) - probes.predict_proba(z)
  np.testing.assert_array_equal(phi, want)
  assert np.all(np.asarray(phi) > 0)  # both probes rise with their coordinate
  np.testing.assert_array_equal(cfajax.local_attributions(probes, z, z), 0)
  with pytest.raises(ValueError, match="same shape"):
    cfajax.local_attributions(probes, z, z_cf[:5])
  with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
    cfajax.local_attributions(probes, z[:, :2], z_cf[:, :2])


def test_signs_and_means_by_hand():
  phi = np.array([[0.2, -0.1], [-0.3, 0.4], [0.1, 0.0], [0.5, 0.5]])
  prob = np.array([0.2, 0.7, 0.4, 0.5])  # s = +1, -1, +1, -1 (0.5 is not < 0.5)
  result = cfajax.global_attributions(phi, prob, names=("x", "y"), num_bootstrap=0)
  # signed rows: (0.2, -0.1), (0.3, -0.4), (0.1, 0.0), (-0.5, -0.5)
  np.testing.assert_allclose(result.psi, [0.1 / 4, -1.0 / 4])
  assert result.num_used == 4 and result.num_failed == 0
  assert np.all(np.isnan(result.ci_low)) and np.all(np.isnan(result.ci_high))

  success = np.array([True, False, True, False])
  kept = cfajax.global_attributions(phi, prob, success=success, names=("x", "y"))
  np.testing.assert_allclose(kept.psi, [0.15, -0.05])
  assert kept.num_used == 2 and kept.num_failed == 2
  assert kept.ranking.tolist() == [0, 1]
  assert kept.top(1) == [("x", pytest.approx(0.15))]
  assert [name for name, _ in result.top()] == ["y", "x"]


def test_standard_error_and_bootstrap_interval():
  rng = np.random.default_rng(1)
  m = 400
  phi = rng.normal(loc=[0.3, 0.0, -0.1], scale=[0.2, 0.5, 0.05], size=(m, 3))
  prob = np.zeros(m)  # s = +1 everywhere: psi is the plain mean
  result = cfajax.global_attributions(phi, prob, num_bootstrap=4000, seed=2)
  np.testing.assert_allclose(result.psi, phi.mean(0), rtol=1e-12)
  np.testing.assert_allclose(result.stderr, phi.std(0, ddof=1) / np.sqrt(m), rtol=1e-12)
  assert np.all(result.ci_low < result.psi) and np.all(result.psi < result.ci_high)
  # For a mean of 400 normal draws the 95% percentile interval is close to psi +/- 1.96 se;
  # 4000 resamples estimate the 2.5% and 97.5% quantiles to a few percent of the width.
  half_width = (result.ci_high - result.ci_low) / 2
  np.testing.assert_allclose(half_width, 1.96 * result.stderr, rtol=0.1)
  # The bootstrap standard deviation of the mean estimates std(ddof=0) / sqrt(m).
  means = _attributions.bootstrap_means(phi, 4000, seed=2)
  np.testing.assert_allclose(means.std(0), phi.std(0) / np.sqrt(m), rtol=0.05)
  again = cfajax.global_attributions(phi, prob, num_bootstrap=4000, seed=2)
  np.testing.assert_array_equal(again.ci_low, result.ci_low)


def test_bootstrap_counts_are_resamples():
  # One row per resample: the chunked counts must sum to m in each resample.
  values = np.eye(5)
  means = _attributions.bootstrap_means(values, 7, seed=0, chunk=10)
  assert means.shape == (7, 5)
  np.testing.assert_allclose(means.sum(1), 1.0)
  np.testing.assert_allclose(means * 5, np.round(means * 5))


def test_to_dict_is_strict_json():
  phi = np.array([[0.2, -0.1], [0.1, 0.3]])
  result = cfajax.global_attributions(phi, np.array([0.1, 0.9]), success=np.array([True, False]),
                                      names=("thick", "wide"))
  text = json.dumps(result.to_dict(), allow_nan=False)
  back = json.loads(text)
  assert back["num_used"] == 1 and back["num_failed"] == 1
  assert back["ranking"] == ["thick", "wide"]
  assert back["attributes"]["wide"]["psi"] == pytest.approx(-0.1)
  assert back["attributes"]["thick"]["stderr"] is None  # one example: no spread


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(phi=np.zeros(4)), r"shape \(n, A\)"),
        (dict(original_prob=np.zeros(3)), r"shape \(4,\)"),
        (dict(original_prob=np.full(4, 1.5)), r"\[0, 1\]"),
        (dict(original_prob=np.full(4, np.nan)), r"\[0, 1\]"),
        (dict(success=np.ones(4)), "bool"),
        (dict(success=np.zeros(4, bool)), "none of the 4 counterfactuals succeeded"),
        (dict(names=("a",)), "names has 1 entries for 2"),
        (dict(confidence=95), "confidence"),
        (dict(phi=np.full((4, 2), np.nan)), "NaN"),
    ],
)
def test_bad_inputs_are_named(args, match):
  full = dict(phi=np.zeros((4, 2)), original_prob=np.full(4, 0.3))
  full.update(args)
  with pytest.raises(ValueError, match=match):
    cfajax.global_attributions(**full)


# -- a planted ground truth ----------------------------------------------------

D, NUM_ATTRIBUTES, PIXELS = 8, 6, 16


def planted_world(seed=0):
  """A linear-Gaussian generator and a classifier that looks at two known directions.

  Latents z ~ N(0, I_8); attribute k is 1[z . v_k + noise > 0] for orthonormal
  v_0..v_5; the decoder is a fixed random linear map to 4 x 4 images; the
  classifier recovers z from the image with the decoder's pseudo-inverse and
  scores 3 z.v_0 - 2 z.v_1. Raising attribute 0 raises the score, raising
  attribute 1 lowers it, and attributes 2-5 are orthogonal to the decision.
  """
  rng = np.random.default_rng(seed)
  directions = np.linalg.qr(rng.normal(size=(D, D)))[0][:, :NUM_ATTRIBUTES].T  # (6, 8)
  mixing = rng.normal(size=(D, PIXELS))
  unmixing = np.linalg.pinv(mixing)  # (16, 8): mixing @ unmixing = I
  score = 3 * directions[0] - 2 * directions[1]
  readout = jnp.asarray(unmixing @ score, jnp.float32)

  decode = lambda z: (z @ jnp.asarray(mixing, z.dtype)).reshape(-1, 4, 4, 1)
  classify = lambda x: (x.reshape(x.shape[0], -1) @ readout)[:, None]

  def sample(n, seed):
    r = np.random.default_rng(seed)
    z = r.normal(size=(n, D)).astype(np.float32)
    attributes = (z @ directions.T + 0.3 * r.normal(size=(n, NUM_ATTRIBUTES)) > 0).astype(int)
    return z, attributes

  return decode, classify, sample


def test_planted_ground_truth_is_recovered():
  decode, classify, sample = planted_world()
  z_train, a_train = sample(2000, seed=1)
  z, _ = sample(300, seed=2)
  probes = cfajax.fit_probes(z_train, a_train, names=tuple(f"a{k}" for k in range(6)))

  prob = np.asarray(jax.nn.sigmoid(classify(decode(jnp.asarray(z)))[:, 0]))
  target = 1 - (prob >= 0.5).astype(int)  # flip every prediction
  result = cfajax.counterfactual_attack(
      decode, classify, z, target, threshold=0.8, step_size=0.02, max_steps=1000)
  assert np.all(result.success)

  phi = cfajax.local_attributions(probes, z, result.z)
  psi = cfajax.global_attributions(phi, prob, success=result.success, names=probes.names)
  print("planted psi:", dict(zip(psi.names, np.round(psi.psi, 4), strict=True)))
  assert psi.ranking[:2].tolist() == [0, 1]
  assert psi.psi[0] > 0 and psi.psi[1] < 0
  assert psi.ci_low[0] > 0 and psi.ci_high[1] < 0
  # The attack moves z along 3 v_0 - 2 v_1, orthogonal to v_2..v_5; the fitted probes'
  # directions are only nearly orthogonal to it, so the others move a little: over 8
  # seeds of this world the largest |psi_2..5| / |psi_1| was 0.02-0.05 (0.03 here).
  assert np.all(np.abs(psi.psi[2:]) < 0.1 * np.abs(psi.psi[1]))
