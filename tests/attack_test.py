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

from conftest import assert_same_results
from conftest import enable_x64

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
      step_size=eta, max_steps=1000, optimizer="ascent")

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
      decode, classify, jnp.asarray(z0, jnp.float32), 0, threshold=threshold, step_size=eta,
      optimizer="ascent")

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
      decode, classify, jnp.asarray(z0, jnp.float32), t, threshold=threshold, step_size=eta,
      optimizer="ascent")

  np.testing.assert_array_equal(result.steps, np.maximum(np.ceil(exact), 0))


@pytest.mark.parametrize("overshoot", [0.5, 0.9])
@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_trust_region_on_a_linear_logit_is_scale_free(scale, overshoot):
  # On a linear log-odds v(z) = v0 + c u.z the trust region goes along u; while
  # the radius r0 * 2^k is shorter than the step to the aim it takes it whole
  # (every ratio is exactly 1, so the radius doubles), and then one Polyak step
  # lands on the aim, log-odds logit(q) with q = t + overshoot (1 - t). So the steps are
  # K + 1, with K the first k where r0 * (2^(k+1) - 1) >= the distance to the aim,
  # unless a capped step already crossed the threshold: a closed form whatever
  # the scale c, where plain ascent's steps scale with c.
  decode, classify, a, w, b = linear_models(seed=11)
  scaled = lambda x: scale * classify(x)
  z0 = np.random.default_rng(12).normal(size=(6, D))
  u = (a @ w)[:, 0] * scale
  threshold, r0 = 0.9, 0.1
  v0 = z0 @ u + b[0] * scale
  q = threshold + overshoot * (1 - threshold)
  aim = math.log(q / (1 - q))
  to_aim = (aim - v0) / np.linalg.norm(u)
  to_threshold = (math.log(threshold / (1 - threshold)) - v0) / np.linalg.norm(u)
  want_steps, want_z = [], []
  for i in range(len(z0)):
    k, travelled = 0, 0.0
    while travelled < to_threshold[i] and r0 * 2**k < to_aim[i] - travelled:
      travelled += r0 * 2**k
      k += 1
    if travelled >= to_threshold[i]:
      want_steps.append(k)
    else:
      want_steps.append(k + 1)
      travelled = to_aim[i]
    want_z.append(z0[i] + travelled * u / np.linalg.norm(u))

  result = cfajax.counterfactual_attack(decode, scaled, jnp.asarray(z0, jnp.float32), 1,
                                        threshold=threshold, step_size=r0, max_steps=100,
                                        optimizer=cfajax.TrustRegion(overshoot=overshoot))

  assert np.all(result.status == Status.REACHED)
  np.testing.assert_array_equal(result.steps, want_steps)
  # float32 over at most ~10 steps of lengths up to ~10: 1e-4 relative.
  np.testing.assert_allclose(result.z, np.array(want_z), rtol=1e-4, atol=1e-4)
  assert max(want_steps) <= 10


def test_trust_region_refuses_an_aim_outside_the_threshold_to_one():
  for overshoot in (0.0, 1.0, -0.5):
    with pytest.raises(ValueError, match="0 < overshoot < 1"):
      cfajax.TrustRegion(overshoot=overshoot)


def test_trust_region_takes_back_a_step_that_lowers_the_objective():
  # v(z) = 3 sin(z), threshold 0.99 (aim: p = 0.995, v = 5.29, beyond the peak 3).
  # From z = 0 (v 0, g 3) the Polyak step 1.76 is capped by r0 = 1.5: z1 = 1.5,
  # v = 2.992, ratio 0.66 keeps the radius. From there g = 0.212 asks for 10.8,
  # capped: z2 = 3.0, v = 0.42, lower: taken back, radius 1.5 / 4, so the third
  # trial starts again from 1.5: z3 = 1.875.
  decode = lambda z: z.reshape(-1, 1, 1, 1)
  classify = lambda x: 3 * jnp.sin(x.reshape(x.shape[0], 1))
  z0 = jnp.zeros((1, 1), jnp.float32)
  rule = cfajax.TrustRegion(overshoot=0.5)
  trials = [float(cfajax.counterfactual_attack(decode, classify, z0, 1, threshold=0.99,
                                               step_size=1.5, max_steps=k,
                                               optimizer=rule).z[0, 0])
            for k in (1, 2, 3)]
  np.testing.assert_allclose(trials, [1.5, 3.0, 1.875], rtol=1e-6)
  result = cfajax.counterfactual_attack(decode, classify, z0, 1, threshold=0.99, step_size=1.5,
                                        max_steps=200, optimizer=rule)
  assert result.status[0] == Status.MAX_STEPS  # the peak, p = 0.953, is below 0.99
  # It settles at the peak rather than wandering off it.
  np.testing.assert_allclose(float(result.z[0, 0]), math.pi / 2, atol=0.05)


def test_results_do_not_depend_on_batch():
  # Checked in float64, where a batch shape's other summation order is pure
  # round-off (conftest.Z_ATOL says why that tolerance).
  decode, classify = mlp_models()
  target = np.arange(9) % 3
  options = dict(threshold=0.8, step_size=0.5, max_steps=200, precision="float64")
  with enable_x64():
    z = np.asarray(latents(9), np.float64)
    together = cfajax.counterfactual_attack(decode, classify, z, target, **options)
    chunked = cfajax.counterfactual_attack(decode, classify, z, target, batch_size=4, **options)
    perm = np.random.default_rng(0).permutation(9)
    shuffled = cfajax.counterfactual_attack(decode, classify, z[perm], target[perm], **options)
    alone = [cfajax.counterfactual_attack(decode, classify, z[i:i + 1], target[i], **options)
             for i in range(3)]
  assert together.z.dtype == np.float64
  assert len(set(np.asarray(together.steps))) > 2, "want latents that stop at different steps"
  for other in (chunked, jax.tree_util.tree_map(lambda a: a[np.argsort(perm)], shuffled)):
    assert_same_results(other, together)
  for i, single in enumerate(alone):
    assert_same_results(single, jax.tree_util.tree_map(lambda a, i=i: a[i:i + 1], together))


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
  options = dict(threshold=0.9, step_size=1.0, max_steps=300, optimizer="ascent")
  prob = cfajax.counterfactual_attack(decode, classify, z, 1, objective="prob", **options)
  logit = cfajax.counterfactual_attack(decode, classify, z, 1, objective="logit", **options)
  log_prob = cfajax.counterfactual_attack(decode, classify, z, 1, objective="log_prob", **options)
  assert not np.any(prob.success)
  assert np.all(prob.final_prob < 1e-12)
  assert np.all(logit.success) and np.all(log_prob.success)
  # log-odds rises by |u|^2 = 1 per step: from -30 to logit(0.9) = 2.197 takes 33 steps.
  np.testing.assert_array_equal(logit.steps, 33)


def test_optax_optimizer_by_instance_name_and_factory():
  decode, classify = mlp_models()
  options = dict(threshold=0.8, max_steps=500, precision="float64")
  with enable_x64():
    z = np.asarray(latents(5), np.float64)
    ready = cfajax.counterfactual_attack(decode, classify, z, 2, optimizer=optax.adam(0.05),
                                         **options)
    named = cfajax.counterfactual_attack(decode, classify, z, 2, optimizer="adam",
                                         step_size=0.05, **options)
    factory = cfajax.counterfactual_attack(decode, classify, z, 2, optimizer=optax.adam,
                                           step_size=0.05, **options)
  assert np.all(ready.success) and np.all(ready.final_prob >= 0.8)
  # The same Adam, its learning rate compiled in or traced.
  assert_same_results(named, ready)
  assert_same_results(factory, ready)


def test_optimizer_errors_are_named():
  decode, classify = mlp_models()
  z = latents(2)
  with pytest.raises(ValueError, match="a ready optax transformation has its own learning rate"):
    cfajax.counterfactual_attack(decode, classify, z, 2, step_size=0.1, optimizer=optax.adam(0.1))
  with pytest.raises(ValueError, match="'adamm' is neither 'trust-region', 'ascent' nor an optax"):
    cfajax.counterfactual_attack(decode, classify, z, 2, optimizer="adamm")
  with pytest.raises(ValueError, match="does not take a learning rate"):
    cfajax.counterfactual_attack(decode, classify, z, 2, optimizer="chain")
  with pytest.raises(ValueError, match="optimizer must be None"):
    cfajax.counterfactual_attack(decode, classify, z, 2, optimizer=0.1)


def test_a_sweep_over_numeric_options_compiles_once():
  # Threshold, step size (plain ascent's or a named optimizer's learning rate)
  # and max_steps are traced: a sweep reuses one program per optimizer.
  decode, classify = mlp_models(seed=5)
  z = latents(8, seed=3)
  for optimizer in (None, "ascent", "adam"):
    sizes = []
    for i, lr in enumerate((0.3, 0.1, 0.05, 0.01)):
      cfajax.counterfactual_attack(decode, classify, z, 1, optimizer=optimizer, step_size=lr,
                                   threshold=0.6 + 0.05 * i, max_steps=20 + i)
      sizes.append(_scheduler._advance_sharded._cache_size())
    assert sizes[1:] == sizes[:1] * 3, (optimizer, sizes)


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
  compiled = _scheduler._run_batch._cache_size()
  result = cfajax.counterfactual_attack(decode, classify, latents(10, seed=9), 1, **options)
  assert len(result) == 10 and result.z.shape == (10, D)
  assert _scheduler._run_batch._cache_size() == compiled


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


@pytest.mark.parametrize("option, value, match", [
    ("threshold", "0.5", "threshold must be a number; got str '0.5'"),
    ("threshold", 1.5, r"threshold must be in \(0, 1\); got 1.5"),
    ("step_size", True, "step_size must be a number; got bool"),
    ("step_size", float("nan"), "step_size must be a finite number > 0"),
    ("max_steps", 2**40, r"max_steps must be an integer in \[0, 2147483647\]"),
    ("max_steps", 2.5, "max_steps must be an integer; got 2.5"),
    ("batch_size", None, "batch_size must be an integer; got NoneType None"),
    ("batch_size", 0, r"batch_size must be an integer in \[1, "),
    ("grad_tol", -1.0, "grad_tol must be a finite number >= 0"),
    ("schedule", "dynamic", "schedule must be one of 'continuous', 'static'"),
    ("precision", "float16", "precision must be one of"),
])
def test_wrong_option_types_and_ranges_name_the_option(option, value, match):
  decode, classify = mlp_models()
  with pytest.raises(ValueError, match=match):
    cfajax.counterfactual_attack(decode, classify, latents(2), 0, **{option: value})


@pytest.mark.parametrize("method", ["attack", "inversion", "data-free"])
def test_float64_without_64_bit_jax_is_refused_by_every_method(method):
  # Without jax_enable_x64 the arrays would silently be float32.
  assert not jax.config.read("jax_enable_x64")
  decode, classify = mlp_models()
  images = np.asarray(decode(latents(2)))
  run = {"attack": lambda: cfajax.counterfactual_attack(decode, classify, latents(2), 0,
                                                        precision="float64"),
         "inversion": lambda: cfajax.invert(decode, images, latent_dim=latents(2).shape[1],
                                            precision="float64"),
         "data-free": lambda: cfajax.data_free_attack(classify, images, 0,
                                                      precision="float64")}[method]
  with pytest.raises(ValueError, match="precision='float64' needs 64-bit JAX"):
    run()


@pytest.mark.parametrize("schedule", ["continuous", "static"])
def test_no_latents_give_an_empty_result(schedule):
  decode, classify = mlp_models()
  result, stats = cfajax.counterfactual_attack(
      decode, classify, np.zeros((0, D), np.float32), 1, schedule=schedule, return_stats=True)
  assert len(result) == 0 and result.z.shape == (0, D) and result.z.dtype == np.float32
  assert result.steps.shape == result.status.shape == result.final_prob.shape == (0,)
  assert stats["loop_iterations"] == []
  # The models are still checked against the latent size.
  with pytest.raises(ValueError, match="decode failed"):
    cfajax.counterfactual_attack(decode, classify, np.zeros((0, D + 1), np.float32), 1,
                                 schedule=schedule)


class _MLP(nnx.Module):
  """mlp_models' classifier with its weights as nnx parameters."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    self.c1 = nnx.Param(jnp.asarray(rng.normal(size=(H * W, 8)), jnp.float32))
    self.c2 = nnx.Param(jnp.asarray(rng.normal(size=(8, 3)), jnp.float32))

  def __call__(self, x):
    return jnp.tanh((x.reshape(x.shape[0], -1) - 0.5) @ self.c1[...] * 4) @ self.c2[...]


def test_bfloat16_runs_the_models_arithmetic_in_bfloat16():
  decode, _ = mlp_models()
  decode_params = _TinyDecoder(nnx.Rngs(0))
  classify = _MLP()
  z = latents(64, seed=6)
  options = dict(threshold=0.8, step_size=0.5, max_steps=200)
  full = cfajax.counterfactual_attack(decode_params.decode, classify, z, 1, **options)
  half = cfajax.counterfactual_attack(decode_params.decode, classify, z, 1, precision="bfloat16",
                                      **options)
  assert half.z.dtype == np.float32
  # bf16 keeps 8 significant bits: the first probabilities move by up to a few
  # 1e-3 (never 0: float32 would agree to ~1e-7), and the stop decisions agree.
  difference = np.abs(np.asarray(half.initial_prob) - np.asarray(full.initial_prob))
  assert 1e-5 < difference.max() < 2e-2
  assert np.mean(np.asarray(half.success) == np.asarray(full.success)) >= 0.95
  # The compiled step multiplies bf16 operands.
  config = cfajax._loop.AttackConfig(precision="bfloat16")
  hyper = cfajax._attack.make_hyper(0.8, 0.5, 200, 0.0, np.float32)
  pure = [cfajax._loop.cast_model(cfajax._callables.as_pure_callable(m), "bfloat16")
          for m in (decode_params.decode, classify)]
  states = jax.vmap(cfajax._loop.init_state, in_axes=(None, None, 0, 0))(
      config, hyper, z, jnp.ones(64, jnp.int32))
  jaxpr = jax.make_jaxpr(cfajax._loop.attack_step, static_argnums=2)(*pure, config, hyper, states)
  text = str(jaxpr)
  assert "bf16[" in text and "dot_general" in text
  # A plain function's arrays are constants that no cast reaches: say so.
  with pytest.warns(UserWarning, match="decode closes over 208 floating-point values"):
    cfajax.counterfactual_attack(decode, classify, z, 1, precision="bfloat16", **options)
