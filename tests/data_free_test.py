"""Data-free (DISC) counterfactuals: planted optima, the pixel attack as a special
case, coarse-to-fine stages, per-example independence, status codes and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import _scheduler
from cfajax import metrics
from cfajax._priors import ImplicitPrior

from conftest import Z_ATOL
from conftest import enable_x64

SIDE = 4
PIXELS = SIDE * SIDE
NONE = dict(tv_weight=0.0, l2_weight=0.0, proximity_weight=0.0)


def linear_binary(w, b):
  """A one-logit classifier `w . x + b` on (SIDE, SIDE, 1) images."""
  w = np.asarray(w).reshape(-1)
  return lambda x: (x.reshape(len(x), -1) @ jnp.asarray(w, x.dtype) + b)[:, None]


def mid_range_images(n, seed=0):
  return np.random.default_rng(seed).uniform(0.3, 0.7, (n, SIDE, SIDE, 1)).astype(np.float32)


def test_without_priors_it_is_the_pixel_attack():
  # For a linear classifier the log-odds' gradient is the constant w, so each
  # of k plain-ascent steps adds step_size * w and no pixel leaves [0, 1]:
  # both attacks compute the same sums, apart in at most one float32
  # rounding (2^-24 relative, on values below 1) per step.
  rng = np.random.default_rng(1)
  classify = linear_binary(rng.normal(size=PIXELS) * 0.05, -1.0)
  x = mid_range_images(6)
  options = dict(threshold=0.8, step_size=0.01, max_steps=40)
  pixel = metrics.pixel_attack(classify, x, 1, optimizer="ascent", **options)
  free = cfajax.data_free_attack(classify, x, 1, prior="pixels", progressive=False, **NONE,
                                 optimizer=None, **options)
  np.testing.assert_array_equal(free.steps, pixel.steps)
  np.testing.assert_array_equal(free.status, pixel.status)
  steps = int(np.max(free.steps))
  np.testing.assert_allclose(free.images, metrics.pixel_counterfactuals(pixel, x.shape[1:]),
                             rtol=0, atol=steps * 2.0**-24)


def test_the_l2_prior_leads_to_its_closed_form_optimum():
  # loss(x) = -(w . x + b) + lam * mean(x^2) is minimised at x* = PIXELS * w / (2 lam);
  # plain descent with step 0.5 on this quadratic (Hessian 2 lam / PIXELS = 1)
  # halves the error each step, so 200 steps leave only float32 round-off.
  w = np.random.default_rng(2).uniform(0.2, 0.8, PIXELS)
  lam = PIXELS / 2
  classify = linear_binary(w, -1e3)  # the target is never reached
  x = mid_range_images(3, seed=3)
  result = cfajax.data_free_attack(classify, x, 1, prior="pixels", progressive=False,
                                   **{**NONE, "l2_weight": lam}, optimizer=None, step_size=0.5,
                                   max_steps=200, threshold=0.5)
  np.testing.assert_array_equal(result.status, cfajax.Status.MAX_STEPS)
  np.testing.assert_allclose(result.images, np.broadcast_to(w.reshape(SIDE, SIDE, 1), x.shape),
                             rtol=0, atol=1e-6)


def test_statistics_and_manifold_terms_pull_to_their_planted_targets():
  x = mid_range_images(2, seed=4)
  flat = lambda images: images.reshape(len(images), -1)
  statistics = lambda images: jnp.stack([flat(images).mean(1), flat(images).var(1)], 1)
  unreachable = linear_binary(np.zeros(PIXELS), -1e3)
  result = cfajax.data_free_attack(
      unreachable, x, 1, prior="pixels", progressive=False, **NONE, statistics=statistics,
      statistics_reference=[0.2, 0.01], statistics_weight=1.0, max_steps=1500, step_size=0.005)
  stats = np.asarray(statistics(jnp.asarray(result.images)))
  np.testing.assert_allclose(stats, [[0.2, 0.01]] * 2, atol=2e-3)

  # A "manifold" whose class c is certain at the image centre_c: the term alone moves
  # each query to its target's centre.
  centres = np.stack([np.full((SIDE, SIDE, 1), 0.25), np.full((SIDE, SIDE, 1), 0.75)])
  manifold = lambda images: -jnp.mean(jnp.square(
      images[:, None] - jnp.asarray(centres, images.dtype)), axis=(2, 3, 4))
  undecided = lambda images: jnp.zeros((len(images), 2), images.dtype)  # p = 0.5 for both
  result = cfajax.data_free_attack(
      undecided, x, np.array([0, 1]), prior="pixels", progressive=False, **NONE,
      manifold=manifold, manifold_weight=PIXELS / 2, optimizer=None, step_size=0.5,
      max_steps=200, threshold=0.9)
  # At the exact optimum the gradient is exactly 0 (ZERO_GRADIENT), else steps run out.
  assert np.all(np.isin(result.status, [cfajax.Status.MAX_STEPS, cfajax.Status.ZERO_GRADIENT]))
  np.testing.assert_allclose(result.images, centres, atol=1e-6)


def _basis(coarse, side):
  """Bilinear upsamplings of each unit image at (coarse, coarse): (side*side, coarse*coarse)."""
  units = np.eye(coarse * coarse).reshape(-1, coarse, coarse, 1)
  return np.stack([np.asarray(jax.image.resize(u, (side, side, 1), "linear")).ravel()
                   for u in units], 1)


def test_progressive_pixels_change_coarse_levels_first():
  side, stage = 8, 5
  rng = np.random.default_rng(5)
  classify = linear_binary(rng.normal(size=side * side) * 0.1, -1e3)
  x = rng.uniform(0.3, 0.7, (2, side, side, 1)).astype(np.float32)

  def change(max_steps):
    result = cfajax.data_free_attack(classify, x, 1, prior="pixels", progressive=True,
                                     stages=3, stage_steps=stage, **NONE, max_steps=max_steps)
    return (np.asarray(result.images) - x).reshape(2, -1)

  # Stage 0 moves only the quarter-resolution level, stage 1 also the half-resolution one.
  for steps, basis in ((stage, _basis(2, side)),
                       (2 * stage, np.concatenate([_basis(2, side), _basis(4, side)], 1))):
    delta = change(steps)
    fit = basis @ np.linalg.lstsq(basis, delta.T, rcond=None)[0]
    assert np.abs(delta).max() > 1e-3
    np.testing.assert_allclose(fit.T, delta, atol=1e-5)  # the change lies in those levels' span
  delta = change(3 * stage)
  fit = basis @ np.linalg.lstsq(basis, delta.T, rcond=None)[0]
  assert np.abs(fit.T - delta).max() > 1e-3  # now the full resolution moves too


def test_implicit_bands_fade_in_one_group_per_stage():
  prior = ImplicitPrior((8, 8, 1), progressive=True, stages=3, frequencies=6)
  weights = lambda steps: np.asarray(prior._band_weights(jnp.asarray(steps), jnp.asarray(10)))
  np.testing.assert_allclose(weights(0), [1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(weights(15), [1, 1, 0.5, 0.5, 0, 0])
  np.testing.assert_allclose(weights(25), [1, 1, 1, 1, 0.5, 0.5])
  np.testing.assert_allclose(weights(99), [1] * 6)


def test_status_codes():
  x = mid_range_images(4, seed=6)
  w = np.random.default_rng(7).normal(size=PIXELS)
  classify = linear_binary(w, 0.0)
  held = (np.asarray(classify(jnp.asarray(x)))[:, 0] > 0).astype(int)
  # The target already holds: no step, and the implicit prior renders the query exactly.
  result = cfajax.data_free_attack(classify, x, held)
  np.testing.assert_array_equal(result.status, cfajax.Status.REACHED)
  np.testing.assert_array_equal(result.steps, 0)
  np.testing.assert_array_equal(result.images, x)
  result = cfajax.data_free_attack(classify, x, 1 - held, max_steps=0)
  np.testing.assert_array_equal(result.status, cfajax.Status.MAX_STEPS)
  result = cfajax.data_free_attack(classify, x, 1 - held, grad_tol=1e9)
  np.testing.assert_array_equal(result.status, cfajax.Status.ZERO_GRADIENT)
  nan = lambda images: linear_binary(w, 0.0)(images) * jnp.nan
  result = cfajax.data_free_attack(nan, x, 1)
  np.testing.assert_array_equal(result.status, cfajax.Status.NON_FINITE)


@pytest.mark.parametrize("prior", ["pixels", "implicit"])
def test_each_query_is_independent_of_its_batch(prior, tiny_classifier):
  # In float64 (conftest's Z_ATOL): alone, in a batch, statically or continuously.
  x = np.asarray(cfajax.load_digits().images[:5], np.float64)
  with enable_x64():
    options = dict(prior=prior, stage_steps=4, max_steps=25, threshold=0.6,
                   precision="float64", width=8, l2_weight=0.1)
    together = cfajax.data_free_attack(tiny_classifier, x, 3, **options)
    static = cfajax.data_free_attack(tiny_classifier, x, 3, schedule="static", batch_size=2,
                                     **options)
    alone = [cfajax.data_free_attack(tiny_classifier, x[i:i + 1], 3, **options) for i in (0, 4)]
  for a, b in ((together, static),):
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_allclose(a.images, b.images, rtol=0, atol=Z_ATOL)
  for i, one in zip((0, 4), alone, strict=True):
    np.testing.assert_array_equal(together.steps[i], one.steps[0])
    np.testing.assert_allclose(together.images[i], one.images[0], rtol=0, atol=Z_ATOL)
  assert np.any(np.asarray(together.steps) > 0)


def test_a_sweep_over_weights_compiles_once():
  classify = linear_binary(np.random.default_rng(8).normal(size=PIXELS), -2.0)
  x = mid_range_images(4, seed=9)
  sizes = []
  for weight in (0.1, 0.2, 0.3):
    cfajax.data_free_attack(classify, x, 1, tv_weight=weight, proximity_weight=weight,
                            step_size=weight / 10, max_steps=10 + int(weight * 10))
    sizes.append(_scheduler._advance_sharded._cache_size())
  assert sizes[1:] == sizes[:1] * 2


def test_bad_inputs_are_named():
  classify = linear_binary(np.zeros(PIXELS), 0.0)
  x = mid_range_images(2)
  stats = lambda images: images.reshape(len(images), -1)[:, :3]
  cases = [
      (dict(images=x[0]), r"images must be query images \(n, H, W, C\); got shape \(4, 4, 1\)"),
      (dict(images=(x * 255).astype(np.uint8)), "images must be a floating-point array"),
      (dict(images=np.where(x > 0.5, np.nan, x)), "images must be finite"),
      (dict(images=x * 3), r"images must lie in \[0, 1\]"),
      (dict(prior="dip"), "prior must be one of 'pixels', 'implicit'"),
      (dict(target=2), r"target must be 0 or 1 for a binary classifier"),
      (dict(statistics=stats), "statistics needs statistics_reference"),
      (dict(statistics=stats, statistics_reference=[0.0]), "statistics_reference must be 3"),
      (dict(statistics_reference=[0.0]), "statistics_reference was given without statistics"),
      (dict(manifold=lambda images: images[:, 0, 0, :]), "manifold gives 1 log-certainties"),
      (dict(manifold=lambda images: images), r"manifold must map images \(B, H, W, C\) to"),
      (dict(prior="pixels", stages=4), "4 progressive stages halve"),
      (dict(tv_weight=-1.0), "tv_weight must be"),
  ]
  for options, message in cases:
    arguments = {"images": x, "target": 1, **options}
    with pytest.raises(ValueError, match=message):
      cfajax.data_free_attack(classify, arguments.pop("images"), arguments.pop("target"),
                              **arguments)


def test_empty_queries_give_an_empty_result():
  result = cfajax.data_free_attack(linear_binary(np.zeros(PIXELS), 0.0),
                                   np.zeros((0, SIDE, SIDE, 1), np.float32), 1)
  assert len(result) == 0 and result.images.shape == (0, SIDE, SIDE, 1)
