"""Tests of psi's calibration: probes refitted under a permutation null and a bootstrap."""

import numpy as np
import pytest

import cfajax
from cfajax import _probes
from cfajax import _significance

PROBE_OPTIONS = dict(C=1.0, class_weight="balanced", standardize=True)


def test_holm_against_its_definition():
  # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 is 0.02, 0.03, 0.06, 0.04;
  # the running maximum makes the last 0.06; then back to the input order.
  adjusted = _significance.holm(np.array([0.01, 0.04, 0.03, 0.005]))
  np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
  assert _significance.holm(np.array([0.9, 0.8]))[0] == 1.0  # capped at 1


def test_permutation_p_values_count_as_large_or_larger():
  null = np.array([[0.1, -0.5], [-0.3, 0.2], [0.05, 0.4]])
  # |psi| 0.2: one of three |null| (0.3) is as large; |psi| 0.45: one (0.5).
  p = _significance.permutation_p_values(np.array([-0.2, 0.45]), null)
  np.testing.assert_allclose(p, [2 / 4, 2 / 4])


def planted(n, seed):
  """Latents whose decision is z_2 + z_4; six real attributes and 20 coin flips."""
  rng = np.random.default_rng(seed)
  z_table = rng.normal(size=(n, 8)).astype(np.float32)
  real = z_table[:, :6] + 0.5 * rng.normal(size=(n, 6)) > 0
  labels = np.concatenate([real, rng.integers(0, 2, (n, 20))], axis=1).astype(np.float32)
  z = rng.normal(size=(n, 8)).astype(np.float32)
  w = np.zeros(8, np.float32)
  w[[2, 4]] = 2.0
  classify = lambda x: (x.reshape(x.shape[0], -1) @ w)[:, None]
  decode = lambda q: q.reshape(-1, 2, 4, 1)
  logit = z @ w
  result = cfajax.counterfactual_attack(decode, classify, z, (logit < 0).astype(np.int32),
                                        threshold=0.9)
  return z_table, labels, z, np.asarray(result.z), 1 / (1 + np.exp(-logit))


def test_refits_reproduce_the_probes_they_refit():
  # Refitting on the unpermuted labels with unit weights is fit_probes itself:
  # the same program on the same arrays, so psi agrees to float32 round-off of a
  # mean of m = 100 terms in [-1, 1] (m * 2^-24 < 1e-5).
  z_table, labels, z, z_cf, prob = planted(100, seed=0)
  probes = cfajax.fit_probes(z_table, labels, **PROBE_OPTIONS)
  psi = cfajax.global_attributions(
      cfajax.local_attributions(probes, z, z_cf), prob, num_bootstrap=0).psi
  problem = _probes.fit_problem(z_table, True)
  weight, penalty = _probes.normalized_weights(labels, "balanced", 1.0)
  fits = _significance._fit_rows(problem, labels.T, weight.T, penalty, _probes.DEFAULT_TOL,
                                 _probes.DEFAULT_MAX_ITER, False, "")
  sign = np.where(prob < 0.5, 1.0, -1.0)
  again = _significance._psi_of_fits(fits, problem, z, z_cf, sign, np.full((1, 100), 0.01),
                                     labels.shape[1])
  np.testing.assert_allclose(again[0], psi, atol=1e-5)


def test_noise_attributes_are_not_called_significant():
  # With the probes held fixed, an interval over the examples alone excludes 0 for
  # nearly every coin flip (the finding this guards against: 20 of 20). With the
  # probes refitted, a coin flip's interval excludes 0 at about the nominal 5%, so
  # more than 5 of 20 has probability ~3e-4. The deciding latents 2 and 4 beat every
  # permutation: p = 1/100, which Holm's correction over 26 attributes makes 0.26 (a
  # run needs 26 / 0.05 = 520 permutations to call anything significant at 0.05).
  z_table, labels, z, z_cf, prob = planted(200, seed=3)
  probes = cfajax.fit_probes(z_table, labels, **PROBE_OPTIONS)
  phi = cfajax.local_attributions(probes, z, z_cf)
  fixed = cfajax.global_attributions(phi, prob, num_bootstrap=500)
  refits = _significance.probe_refits(z_table, labels, z, z_cf, prob, num_permutations=99,
                                      num_bootstrap=100, **PROBE_OPTIONS)
  calibrated = cfajax.global_attributions(phi, prob, refits=refits,
                                          probe_auc=np.full(26, 0.5))
  excludes = lambda g: (g.ci_low > 0) | (g.ci_high < 0)
  assert excludes(fixed)[6:].sum() >= 15
  assert excludes(calibrated)[6:].sum() <= 5
  assert calibrated.interval == "examples and probes" and calibrated.num_bootstrap == 100
  np.testing.assert_allclose(calibrated.p_value[[2, 4]], 1 / 100)
  assert not calibrated.significant.any()
  row = calibrated.to_dict()["attributes"]["attribute_2"]
  assert not row["significant"] and row["p_adjusted"] == pytest.approx(26 / 100)
  assert row["probe_val_auc"] == 0.5


def test_bad_refits_are_named():
  z_table, labels, z, z_cf, prob = planted(40, seed=1)
  with pytest.raises(ValueError, match="z and z_cf must both be"):
    _significance.probe_refits(z_table, labels, z[:, :4], z_cf, prob)
  with pytest.raises(ValueError, match="num_permutations must be a non-negative integer"):
    _significance.probe_refits(z_table, labels, z, z_cf, prob, num_permutations=-1)
  with pytest.raises(ValueError, match="no counterfactual enters psi"):
    _significance.probe_refits(z_table, labels, z, z_cf, prob, success=np.zeros(40, bool))
  phi = np.zeros((40, 26))
  with pytest.raises(ValueError, match=r"refits.null must be \(R, 26\)"):
    cfajax.global_attributions(phi, prob, refits=_significance.ProbeRefits(np.zeros((5, 3)), None))
