"""cfajax.conv_general_dilated against lax.conv_general_dilated: values and gradients in float64.

In float64 both compute the same sums in different orders, so they agree to a
few hundred ulps of the values summed (kh * kw * C products per output); the
tolerance 1e-12 relative to the values' scale (~1) is far above that round-off
(~1e-14) and far below any real error (a wrong tap, padding or transpose
changes values at order 1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import cfajax
from cfajax import _conv

from conftest import enable_x64

TOL = 1e-12
DN = ("NHWC", "HWIO", "NHWC")

CASES = [  # (input channels, output channels, kernel, padding)
    (1, 5, (3, 3), "SAME"),
    (3, 4, (4, 4), "SAME"),  # even kernel: SAME pads (1, 2)
    (9, 6, (3, 3), "SAME"),
    (9, 2, (2, 3), ((0, 1), (2, 0))),
    (2, 3, (3, 3), "VALID"),
    (12, 4, (1, 1), "SAME"),
]


def _inputs(cin, cout, kernel, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, cin)))
  k = jnp.asarray(rng.standard_normal(kernel + (cin, cout)))
  return x, k


def _ours(x, k, padding):
  return cfajax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)


def _lax(x, k, padding):
  return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN)


@pytest.mark.parametrize("cin,cout,kernel,padding", CASES)
def test_values_and_both_gradients_equal_lax(cin, cout, kernel, padding):
  with enable_x64():
    x, k = _inputs(cin, cout, kernel)
    y = _lax(x, k, padding)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape))
    np.testing.assert_allclose(_ours(x, k, padding), y, rtol=0, atol=TOL * 10)
    ours = jax.vjp(lambda x, k: _ours(x, k, padding), x, k)[1](g)
    theirs = jax.vjp(lambda x, k: _lax(x, k, padding), x, k)[1](g)
    for a, b in zip(ours, theirs, strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=TOL * 100)
    # One argument at a time: the other's gradient is then neither kept nor computed.
    dx = jax.vjp(lambda x: _ours(x, k, padding), x)[1](g)[0]
    dk = jax.vjp(lambda k: _ours(x, k, padding), k)[1](g)[0]
    np.testing.assert_allclose(dx, theirs[0], rtol=0, atol=TOL * 100)
    np.testing.assert_allclose(dk, theirs[1], rtol=0, atol=TOL * 100)


@pytest.mark.parametrize("cin", [1, 9])
def test_second_order_gradients_equal_lax(cin):
  # What a gradient penalty (DUQ, R1) differentiates: the input gradient's norm, by the kernel.
  with enable_x64():
    x, k = _inputs(cin, 4, (3, 3), seed=2)

    def penalty(conv, k):
      dx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, k, "SAME"))))(x)
      return jnp.sum(jnp.square(dx))

    np.testing.assert_allclose(jax.grad(lambda k: penalty(_ours, k))(k),
                               jax.grad(lambda k: penalty(_lax, k))(k), rtol=0, atol=TOL * 1e3)


def test_gradient_inside_a_while_loop_equals_lax():
  # The form the attack takes it in: vmapped rows, a while loop, float32.
  x, k = _inputs(1, 8, (3, 3))
  x, k = x.astype(jnp.float32), k.astype(jnp.float32) * 0.3

  def run(conv):
    def body(state):
      i, x = state
      g = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x[None], k, "SAME"))))
      return i + 1, x + 0.01 * jax.vmap(g)(x)
    return jax.jit(lambda x: lax.while_loop(lambda s: s[0] < 5, body, (0, x))[1])(x)

  # 5 steps of float32 round-off on values ~1: each step's gradient sums 9 * 8 terms.
  np.testing.assert_allclose(run(_ours), run(_lax), rtol=0, atol=5 * 72 * 2 ** -23 * 4)


def test_other_convolutions_go_to_lax_unchanged():
  with enable_x64():
    x, k = _inputs(3, 4, (4, 4))
    strided = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=DN)
    np.testing.assert_array_equal(cfajax.conv_general_dilated(x, k, **strided),
                                  lax.conv_general_dilated(x, k, **strided))
    nchw = x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(cfajax.conv_general_dilated(*nchw, (1, 1), "SAME"),
                                  lax.conv_general_dilated(*nchw, (1, 1), "SAME"))
    assert not _conv._fast_path(x, k, (1, 1), None, (2, 2), DN, 1, 1, None, {})


def test_models_use_it_and_an_nnx_conv_accepts_it(tiny_classifier, monkeypatch):
  assert all(conv.conv_general_dilated is cfajax.conv_general_dilated
             for conv in tiny_classifier.convs)
  # ... and what nnx.Conv passes (its dimension numbers, string padding) takes the fast path.
  calls = []
  fast = _conv._conv
  monkeypatch.setattr(_conv, "_conv", lambda *args: calls.append(args[2]) or fast(*args))
  tiny_classifier(jnp.zeros((1,) + tiny_classifier.config.image_shape))
  assert calls == [((1, 1), (1, 1))] * len(tiny_classifier.convs)
  monkeypatch.undo()
  conv = nnx.Conv(2, 3, (3, 3), conv_general_dilated=cfajax.conv_general_dilated,
                  rngs=nnx.Rngs(0))
  plain = nnx.Conv(2, 3, (3, 3), rngs=nnx.Rngs(0))
  x = jnp.ones((1, 5, 5, 2))
  np.testing.assert_allclose(conv(x), plain(x), rtol=1e-6, atol=1e-6)
  # A Linen convolution takes it the same way.
  from flax import linen
  linen_conv = linen.Conv(3, (3, 3), conv_general_dilated=cfajax.conv_general_dilated)
  params = linen_conv.init(jax.random.key(0), x)
  np.testing.assert_allclose(linen_conv.apply(params, x),
                             linen.Conv(3, (3, 3)).apply(params, x), rtol=1e-6, atol=1e-6)


def test_attack_with_cfajax_convolutions_equals_lax_convolutions(tiny_vae, tiny_classifier):
  # The whole compiled attack, decoder and classifier chained inside the loop, against
  # the same models convolving with lax: a miscompiled gradient (as jaxlib 0.10.2's CPU
  # fusion emitters gave for an earlier form of this convolution, 0.3 off) shows here.
  def lax_copy(model):
    model = nnx.clone(model)
    for _, node in nnx.iter_graph(model):
      if isinstance(node, nnx.Conv):
        node.conv_general_dilated = lax.conv_general_dilated
    return model

  z = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
  target = np.arange(8, dtype=np.int32) % 10
  options = dict(threshold=0.999, max_steps=3, step_size=0.1, batch_size=8)
  ours = cfajax.counterfactual_attack(tiny_vae.decode, tiny_classifier, z, target, **options)
  theirs = cfajax.counterfactual_attack(lax_copy(tiny_vae).decode, lax_copy(tiny_classifier),
                                        z, target, **options)
  np.testing.assert_array_equal(ours.steps, theirs.steps)
  # 3 steps of 0.1 times gradients equal to float32 round-off (~1e-7 of values ~1).
  np.testing.assert_allclose(ours.z, theirs.z, rtol=0, atol=1e-5)
