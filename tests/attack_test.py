"""Tests of `counterfactual_attack` against closed forms and its contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import cfajax
from cfajax import Status
from cfajax import _scheduler

D, H, W = 4, 3, 3


def linear_models(seed=0, num_logits=1):
  """A linear decoder (d -> 3x3x1) and a linear classifier, float64 on the host."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(D, H * W))
  w = rng.normal(size=(H * W, num_logits))
  b = rng.normal(size=(num_logits,))
  decode = lambda z: (z @ jnp.asarray(a, z.dtype)).reshape(-1, H, W, 1)
  classify = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w, x.dtype) + jnp.asarray(b, x.dtype)
  return decode, classify, a, w, b


def mlp_models(seed=0, num_logits=3):
  """A small nonlinear generator and classifier (tanh MLPs)."""
  rng = np.random.default_rng(seed)
  a1, a2 = rng.normal(size=(D, 16)) / 2, rng.normal(size=(16, H * W)) / 4
  c1, c2 = rng.normal(size=(H * W, 8)), rng.normal(size=(8, num_logits))
  decode = lambda z: jax.nn.sigmoid(jnp.tanh(z @ a1) @ a2).reshape(-1, H, W, 1)
  classify = lambda x: jnp.tanh((x.reshape(x.shape[0], -1) - 0.5) @ c1 * 4) @ c2
  return decode, classify


def latents(n, seed=1, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, D)) * scale, jnp.float32)


def test_closed_form_linear_binary():
  # With G(z) = A z and f(x) = w.x + b the log-odds is u.z + b with u = A w,
  # so plain ascent moves z by eta*u per step and the log-odds by eta*|u|^2.
  decode, classify, a, w, b = linear_models()
  z0 = np.random.default_rng(3).normal(size=(6, D)) * 2.0
  eta, threshold = 0.05, 0.8
  u = (a @ w)[:, 0]
  margin0 = z0 @ u + b[0]
  target_margin = math.log(threshold / (1 - threshold))
  exact = (target_margin - margin0) / (eta * u @ u)
  # Keep the float32 loop away from ties at integer step counts.
  assert np.all(np.abs(exact - np.round(exact)) > 1e-3), exact
  want_steps = np.maximum(np.ceil(exact), 0).astype(int)
  want_z = z0 + want_steps[:, None] * eta * u[None]

  result = cfajax.counterfactual_attack(
      decode, classify, jnp.asarray(z0, jnp.float32), 1, threshold=threshold,
      step_size=eta, max_steps=1000)

  np.testing.assert_array_equal(result.steps, want_steps)
  assert np.all(result.status == Status.REACHED)
  # float32 accumulation over <= ~100 steps of size ~0.1: 1e-4 relative is ample.
  np.testing.assert_allclose(result.z, want_z, rtol=1e-4, atol=1e-4)
  want_p0 = 1 / (1 + np.exp(-margin0))
  np.testing.assert_allclose(result.initial_prob, want_p0, rtol=1e-5)
  assert np.all(result.final_prob >= threshold)


def test_closed_form_linear_binary_target_zero():
  # Target 0 on a one-logit classifier descends the logit to p <= 1 - threshold.
  decode, classify, a, w, b = linear_models(seed=4)
  z0 = np.random.default_rng(5).normal(size=(4, D))
  eta, threshold = 0.03, 0.7
  u = (a @ w)[:, 0]
  exact = ((z0 @ u + b[0]) + math.log(threshold / (1 - threshold))) / (eta * u @ u)
  assert np.all(np.abs(exact - np.round(exact)) > 1e-3)
  want_steps = np.maximum(np.ceil(exact), 0).astype(int)

  result = cfajax.counterfactual_attack(
      decode, classify, jnp.asarray(z0, jnp.float32), 0, threshold=threshold, step_size=eta)

  np.testing.assert_array_equal(result.steps, want_steps)
  np.testing.assert_allclose(result.z, z0 - want_steps[:, None] * eta * u[None], atol=1e-4)
  p_class1 = 1 / (1 + np.exp(-(np.asarray(result.z) @ u + b[0])))
  assert np.all(p_class1 <= 1 - threshold + 1e-6)


def test_closed_form_linear_softmax_two_classes():
  # For two softmax classes the target's log-odds is (w_t - w_o).A z + (b_t - b_o).
  decode, classify, a, w, b = linear_models(seed=6, num_logits=2)
  z0 = np.random.default_rng(7).normal(size=(5, D))
  eta, threshold, t = 0.02, 0.9, 1
  u = a @ (w[:, t] - w[:, 1 - t])
  margin0 = z0 @ u + b[t] - b[1 - t]
  exact = (math.log(threshold / (1 - threshold)) - margin0) / (eta * u @ u)
  assert np.all(np.abs(exact - np.round(exact)) > 1e-3)

  result = cfajax.counterfactual_attack(
      decode, classify, jnp.asarray(z0, jnp.float32), t, threshold=threshold, step_size=eta)

  np.testing.assert_array_equal(result.steps, np.maximum(np.ceil(exact), 0))


def test_results_do_not_depend_on_batch():
  decode, classify = mlp_models()
  z = latents(9)
  target = np.arange(9) % 3
  options = dict(threshold=0.8, step_size=0.5, max_steps=200)
  together = cfajax.counterfactual_attack(decode, classify, z, target, **options)
  chunked = cfajax.counterfactual_attack(decode, classify, z, target, batch_size=4, **options)
  perm = np.random.default_rng(0).permutation(9)
  shuffled = cfajax.counterfactual_attack(decode, classify, z[perm], target[perm], **options)
  alone = [cfajax.counterfactual_attack(decode, classify, z[i:i + 1], target[i], **options)
           for i in range(3)]

  assert len(set(np.asarray(together.steps))) > 2, "want latents that stop at different steps"
  # Same arithmetic per example; different batch shapes may reorder float sums, so allow 1e-5.
  for other in (chunked, jax.tree_util.tree_map(lambda a: a[np.argsort(perm)], shuffled)):
    np.testing.assert_array_equal(other.steps, together.steps)
    np.testing.assert_array_equal(other.status, together.status)
    np.testing.assert_allclose(other.z, together.z, atol=1e-5)
  for i, single in enumerate(alone):
    assert single.steps[0] == together.steps[i]
    np.testing.assert_allclose(single.z[0], together.z[i], atol=1e-5)


def test_target_already_met_takes_no_step():
  decode, classify = mlp_models()
  z = latents(6)
  probe = cfajax.counterfactual_attack(decode, classify, z, 0, max_steps=0)
  # Ask for a threshold below each latent's own starting probability.
  threshold = float(np.min(probe.initial_prob)) * 0.99
  result = cfajax.counterfactual_attack(decode, classify, z, 0, threshold=threshold)
  np.testing.assert_array_equal(result.steps, 0)
  np.testing.assert_array_equal(result.status, Status.REACHED)
  np.testing.assert_array_equal(result.z, z)
  np.testing.assert_array_equal(result.final_prob, result.initial_prob)


def test_max_steps():
  decode, classify, *_ = linear_models()
  result = cfajax.counterfactual_attack(
      decode, classify, latents(3), 1, threshold=0.999999, step_size=1e-4, max_steps=3)
  np.testing.assert_array_equal(result.status, Status.MAX_STEPS)
  np.testing.assert_array_equal(result.steps, 3)
  assert not np.any(result.success)


def test_zero_gradient_from_a_classifier_that_ignores_its_input():
  decode, *_ = linear_models()
  classify = lambda x: jnp.zeros((x.shape[0], 2)) + jnp.array([1.0, 0.0])
  result = cfajax.counterfactual_attack(decode, classify, latents(4), 1)
  np.testing.assert_array_equal(result.status, Status.ZERO_GRADIENT)
  np.testing.assert_array_equal(result.steps, 0)
  np.testing.assert_allclose(result.final_prob, jax.nn.softmax(jnp.array([1.0, 0.0]))[1])


def test_non_finite_model_output_is_a_status_not_an_exception():
  decode, classify, *_ = linear_models()
  # The log of a negative number is NaN: rows with z[0] < 0 go non-finite.
  bad_decode = lambda z: decode(z) + jnp.log(z[:, :1])[:, :, None, None]
  z = jnp.array([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]], jnp.float32)
  result = cfajax.counterfactual_attack(bad_decode, classify, z, 1, threshold=0.99, max_steps=5)
  assert result.status[1] == Status.NON_FINITE
  assert result.steps[1] == 0
  assert result.status[0] != Status.NON_FINITE


def test_prob_objective_saturates_where_logit_reaches_the_target():
  # Start deep in the wrong class: logit -30, so p = 9e-14 and dp/dz ~ 1e-13.
  u = jnp.ones((D,)) / 2
  decode = lambda z: z.reshape(-1, 2, 2, 1)
  classify = lambda x: (x.reshape(x.shape[0], -1) @ u)[:, None]
  z = jnp.full((2, D), -15.0)
  options = dict(threshold=0.9, step_size=1.0, max_steps=300)
  prob = cfajax.counterfactual_attack(decode, classify, z, 1, objective="prob", **options)
  logit = cfajax.counterfactual_attack(decode, classify, z, 1, objective="logit", **options)
  log_prob = cfajax.counterfactual_attack(decode, classify, z, 1, objective="log_prob", **options)
  assert not np.any(prob.success)
  assert np.all(prob.final_prob < 1e-12)
  assert np.all(logit.success) and np.all(log_prob.success)
  # log-odds rises by |u|^2 = 1 per step: from -30 to logit(0.9) = 2.197 takes 33 steps.
  np.testing.assert_array_equal(logit.steps, 33)


def test_optax_optimizer():
  decode, classify = mlp_models()
  z = latents(5)
  result = cfajax.counterfactual_attack(
      decode, classify, z, 2, threshold=0.8, optimizer=optax.adam(0.05), max_steps=500)
  assert np.all(result.success)
  assert np.all(result.final_prob >= 0.8)
  with pytest.raises(ValueError, match="step_size applies to plain gradient ascent"):
    cfajax.counterfactual_attack(decode, classify, z, 2, step_size=0.1, optimizer=optax.adam(0.1))


def test_second_call_with_new_values_does_not_compile_again():
  decode, classify = mlp_models()
  options = dict(step_size=0.3, max_steps=50)
  cfajax.counterfactual_attack(decode, classify, latents(8, seed=1), 0, threshold=0.6, **options)
  compiled = _scheduler._advance_sharded._cache_size()
  cfajax.counterfactual_attack(
      decode, classify, latents(8, seed=2), np.arange(8) % 3, threshold=0.7, step_size=0.2,
      max_steps=60)
  assert _scheduler._advance_sharded._cache_size() == compiled


class _TinyDecoder(nnx.Module):

  def __init__(self, rngs):
    self.linear = nnx.Linear(D, H * W, rngs=rngs)

  def decode(self, z):
    return jax.nn.sigmoid(self.linear(z)).reshape(-1, H, W, 1)


def test_nnx_modules_pass_weights_as_arguments_not_constants():
  _, classify = mlp_models()
  first, second = _TinyDecoder(nnx.Rngs(0)), _TinyDecoder(nnx.Rngs(1))
  z = latents(4)
  options = dict(threshold=0.9, step_size=0.5, max_steps=40)
  a = cfajax.counterfactual_attack(first.decode, classify, z, 1, **options)
  compiled = _scheduler._advance_sharded._cache_size()
  b = cfajax.counterfactual_attack(second.decode, classify, z, 1, **options)
  assert _scheduler._advance_sharded._cache_size() == compiled
  # New weights, same structure: same program, different (not stale) answers.
  assert not np.allclose(a.initial_prob, b.initial_prob)
  want = jax.nn.softmax(classify(second.decode(z)))[:, 1]
  np.testing.assert_allclose(b.initial_prob, want, rtol=1e-5)


def test_static_chunks_compile_once():
  decode, classify = mlp_models(seed=3)
  options = dict(threshold=0.7, step_size=0.4, max_steps=30, batch_size=3, schedule="static")
  cfajax.counterfactual_attack(decode, classify, latents(3, seed=8), 1, **options)
  compiled = _scheduler._attack_batch._cache_size()
  result = cfajax.counterfactual_attack(decode, classify, latents(10, seed=9), 1, **options)
  assert len(result) == 10 and result.z.shape == (10, D)
  assert _scheduler._attack_batch._cache_size() == compiled


@pytest.mark.parametrize(
    "z, target, match",
    [
        (np.zeros((3,), np.float32), 0, r"shape \(n, d\)"),
        (np.zeros((3, D), np.int32), 0, "floating-point"),
        (np.array([[0, np.nan, 0, 0]], np.float32), 0, "finite; 1 latent"),
        (np.zeros((3, D), np.float32), np.zeros(4, int), r"shape \(3,\)"),
        (np.zeros((3, D), np.float32), 3, r"class index in \[0, 3\)"),
        (np.zeros((3, D), np.float32), 0.5, "integer class"),
        (np.zeros((3, D + 1), np.float32), 0, "decode failed"),
    ],
)
def test_bad_inputs_are_named(z, target, match):
  decode, classify = mlp_models()
  with pytest.raises(ValueError, match=match):
    cfajax.counterfactual_attack(decode, classify, z, target)


def test_bad_models_and_options_are_named():
  decode, classify = mlp_models()
  z = latents(2)
  with pytest.raises(ValueError, match=r"logits \(B, K\)"):
    cfajax.counterfactual_attack(decode, lambda x: x, z, 0)
  with pytest.raises(ValueError, match=r"images \(B, H, W, C\)"):
    cfajax.counterfactual_attack(lambda z: z[0], classify, z, 0)
  with pytest.raises(ValueError, match="0 or 1"):
    cfajax.counterfactual_attack(decode, lambda x: classify(x)[:, :1], z, 2)
  with pytest.raises(ValueError, match="threshold"):
    cfajax.counterfactual_attack(decode, classify, z, 0, threshold=1.0)
  with pytest.raises(ValueError, match="objective"):
    cfajax.counterfactual_attack(decode, classify, z, 0, objective="margin")
  with pytest.raises(ValueError, match="max_steps"):
    cfajax.counterfactual_attack(decode, classify, z, 0, max_steps=-1)
