"""Tests of `fit_probes` against scikit-learn's `LogisticRegression` and its contract."""

import warnings

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

import cfajax
from cfajax import _probes

N, D, A = 200, 5, 3


def labelled_latents(n=N, seed=0):
  """Non-centred latents of unequal scales and 3 noisy linear attributes.

  The attributes have positive rates of about 0.5, 0.7 and 0.2, so that
  "balanced" class weights differ from uniform ones.
  """
  w = np.random.default_rng(100).normal(size=(D, A))  # the same directions for every seed
  mean = np.array([1, -2, 0, 3, 0.5])
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, D)) * np.array([0.5, 1.0, 2.0, 1.0, 3.0]) + mean
  logits = (z - mean) @ w + rng.normal(size=(n, A)) * 1.5 + np.array([0.0, 1.5, -2.0])
  return z.astype(np.float32), (logits > 0).astype(np.int32)


def sklearn_objective(x, y, sample_weight, C, coef, intercept):
  """1/2 |w|^2 + C sum_i s_i logloss_i in float64, scikit-learn's `LogisticRegression` objective."""
  t = x.astype(np.float64) @ np.asarray(coef, np.float64) + float(intercept)
  return 0.5 * np.sum(np.square(np.asarray(coef, np.float64))) + C * np.sum(
      sample_weight * (np.logaddexp(0, t) - y * t))


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("C", [0.05, 1.0, 100.0])
def test_matches_sklearn_logistic_regression(C, class_weight, standardize):
  z, y = labelled_latents()
  probes = cfajax.fit_probes(z, y, C=C, class_weight=class_weight, standardize=standardize)
  x = StandardScaler().fit_transform(z.astype(np.float64)) if standardize else z.astype(np.float64)
  proba = np.asarray(probes.predict_proba(z))

  assert np.all(probes.converged)
  for a in range(A):
    # Reference: scikit-learn 1.x LogisticRegression (lbfgs, float64) run to tol=1e-10.
    ref = LogisticRegression(C=C, class_weight=class_weight, tol=1e-10, max_iter=10000)
    ref.fit(x, y[:, a])
    # We stop at a float32 gradient norm <= 1e-6 of J / (C sum(s)), so we sit about
    # |H^-1 g| from the float64 minimiser. The Hessian's smallest eigenvalue on this
    # data is 0.001-0.2, so that bound is loose (up to 1e-3); measured over these 12
    # cases: coefficients within 1.5e-5, probabilities within 7e-6. The tolerances
    # leave 3-7x headroom for float32 rounding that differs across platforms.
    np.testing.assert_allclose(probes.coef[a], ref.coef_[0], atol=1e-4)
    np.testing.assert_allclose(probes.intercept[a], ref.intercept_[0], atol=1e-4)
    np.testing.assert_allclose(proba[:, a], ref.predict_proba(x)[:, 1], atol=2e-5)
    # Our solution is as good as scikit-learn's on its own objective, to float64 rounding
    # of ~1e-8 relative plus the float32 distance above, which is second order (~1e-7).
    weight = np.ones(N) if class_weight is None else np.where(
        y[:, a] == 1, N / (2 * y[:, a].sum()), N / (2 * (N - y[:, a].sum())))
    ours = sklearn_objective(x, y[:, a], weight, C, probes.coef[a], probes.intercept[a])
    theirs = sklearn_objective(x, y[:, a], weight, C, ref.coef_[0], ref.intercept_[0])
    assert ours <= theirs * (1 + 1e-6), (ours, theirs)


def test_standardisation_is_stored_and_applied():
  z, y = labelled_latents()
  probes = cfajax.fit_probes(z, y, standardize=True)
  np.testing.assert_allclose(probes.mean, z.mean(0), rtol=1e-5)
  np.testing.assert_allclose(probes.scale, z.astype(np.float64).std(0), rtol=1e-5)
  x = (z - probes.mean) / probes.scale
  np.testing.assert_allclose(
      probes.predict_logit(z), x @ probes.coef.T + probes.intercept, rtol=1e-5, atol=1e-5)
  plain = cfajax.fit_probes(z, y)
  np.testing.assert_array_equal(plain.mean, 0)
  np.testing.assert_array_equal(plain.scale, 1)


def test_roc_auc_matches_sklearn_with_ties():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 500)
  scores = np.round(rng.normal(size=500) + labels, 1)  # rounding makes many ties
  # Both are exact rational arithmetic on the same ranks: float64 rounding only.
  assert abs(_probes.roc_auc(labels, scores) - roc_auc_score(labels, scores)) < 1e-12
  assert _probes.roc_auc(labels, labels.astype(float)) == 1.0
  assert _probes.roc_auc(labels, -labels.astype(float)) == 0.0
  assert _probes.roc_auc(labels, np.zeros(500)) == 0.5
  assert np.isnan(_probes.roc_auc(np.ones(5), np.arange(5.0)))


def test_held_out_metrics():
  z, y = labelled_latents()
  z_val, y_val = labelled_latents(n=150, seed=1)
  probes = cfajax.fit_probes(z, y, validation=(z_val, y_val))
  logits = np.asarray(probes.predict_logit(z_val))
  for a in range(A):
    assert probes.val_accuracy[a] == pytest.approx(np.mean((logits[:, a] >= 0) == y_val[:, a]))
    assert probes.val_auc[a] == pytest.approx(roc_auc_score(y_val[:, a], logits[:, a]), abs=1e-6)
  assert np.all(np.asarray(probes.val_auc) > 0.8)

  split = cfajax.fit_probes(z, y, validation_fraction=0.25, seed=3)
  assert np.all(np.isfinite(split.val_accuracy)) and np.all(np.isfinite(split.val_auc))
  assert not np.allclose(split.coef, probes.coef)  # fitted on 150 of the 200 latents
  none = cfajax.fit_probes(z, y)
  assert np.all(np.isnan(none.val_accuracy)) and np.all(np.isnan(none.val_auc))


def test_probes_are_a_pytree_with_static_names():
  z, y = labelled_latents()
  probes = cfajax.fit_probes(z, y, names=("a", "b", "c"))
  assert probes.names == ("a", "b", "c") and probes.num_attributes == 3
  leaves, treedef = jax.tree_util.tree_flatten(probes)
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  assert jax.tree_util.tree_unflatten(treedef, leaves).names == ("a", "b", "c")
  proba = jax.jit(lambda p, z: p.predict_proba(z))(probes, z)
  assert proba.shape == (N, A)
  np.testing.assert_allclose(proba, probes.predict_proba(z), atol=1e-6)
  assert probes.predict_proba(z[0]).shape == (A,)


def test_batching_attributes_does_not_change_the_fit():
  # Accelerators fit attributes side by side under vmap by default; CPU one at a time.
  z, y = labelled_latents()
  one_at_a_time = cfajax.fit_probes(z, y, attribute_batch_size=1)
  side_by_side = cfajax.fit_probes(z, y[:, :2], attribute_batch_size=2)
  # Same iterations; vmap may reorder float32 sums, hence 1e-5.
  np.testing.assert_allclose(side_by_side.coef, one_at_a_time.coef[:2], atol=1e-5)
  np.testing.assert_allclose(side_by_side.intercept, one_at_a_time.intercept[:2], atol=1e-5)
  np.testing.assert_array_equal(side_by_side.iterations, one_at_a_time.iterations[:2])


def test_second_fit_with_new_values_does_not_compile_again():
  z, y = labelled_latents()
  cfajax.fit_probes(z, y, C=1.0)
  compiled = _probes._fit_all._cache_size()
  z2, y2 = labelled_latents(seed=5)
  cfajax.fit_probes(z2, y2, C=3.0, tol=1e-5, max_iter=50, class_weight="balanced")
  assert _probes._fit_all._cache_size() == compiled


def test_max_iter_reached_is_reported():
  z, y = labelled_latents()
  with pytest.warns(RuntimeWarning, match="did not reach tol"):
    probes = cfajax.fit_probes(z, y, max_iter=2)
  np.testing.assert_array_equal(probes.iterations, 2)
  assert not np.any(probes.converged)
  assert np.all(np.asarray(probes.grad_norm) > 1e-6)


def test_bool_and_float_labels_give_the_same_fit():
  z, y = labelled_latents()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ints = cfajax.fit_probes(z, y)
  bools = cfajax.fit_probes(z, y.astype(bool))
  floats = cfajax.fit_probes(z.astype(np.float64), y.astype(np.float32))
  np.testing.assert_array_equal(bools.coef, ints.coef)
  np.testing.assert_allclose(floats.coef, ints.coef, atol=1e-6)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(z=np.zeros(N, np.float32)), r"shape \(n, d\)"),
        (dict(attributes=np.zeros(N)), r"shape \(n, A\).*a\[:, None\]"),
        (dict(attributes=np.zeros((N - 1, A))), "199 rows but the latents have 200"),
        (dict(attributes=np.full((N, A), np.nan)), "NaN"),
        (dict(attributes=np.full((N, A), 2)), "must be 0 or 1; got 2"),
        (dict(names=("a", "b")), "names has 2 entries for 3"),
        (dict(C=0.0), "C must be a positive"),
        (dict(class_weight="auto"), "class_weight"),
        (dict(max_iter=0), "max_iter"),
        (dict(validation_fraction=0.2, validation=(np.zeros((4, D)), np.zeros((4, A)))),
         "not both"),
        (dict(validation=(np.zeros((4, D + 1), np.float32), np.zeros((4, A)))),
         "validation latents have dimension 6"),
        (dict(validation_fraction=1.5), r"validation_fraction must be in \(0, 1\)"),
    ],
)
def test_bad_inputs_are_named(change, match):
  z, y = labelled_latents()
  args = dict(z=z, attributes=y)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    cfajax.fit_probes(**args)


def test_single_class_attribute_is_named():
  z, y = labelled_latents()
  y[:, 1] = 1
  with pytest.raises(ValueError, match=r"attribute 'smiling' \(column 1\) has only class 1"):
    cfajax.fit_probes(z, y, names=("young", "smiling", "bald"))
  z[3, 2] = np.nan
  with pytest.raises(ValueError, match="finite"):
    cfajax.fit_probes(z, y)
