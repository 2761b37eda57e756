"""A drop-in `lax.conv_general_dilated` whose gradients XLA's CPU backend runs fast in loops.

The attack differentiates the decoder and the classifier with respect to their
inputs inside a `lax.while_loop`. For a convolution's input gradient JAX emits
a convolution with the reversed kernel and its input and output feature
dimensions swapped by dimension numbers (`01oi`), not by moving data. At the
top level of a program XLA's CPU backend then copies the kernel into the
layout its convolution library takes; inside a while loop's body it does not,
and the convolution falls back to XLA's own generated loops. On this project's
2-core CPU that made one attack iteration of the MNIST models 1.4 times slower
than the same step run outside a loop (benchmarks/RESULTS.md, "Convolutions in
the loop").

`conv_general_dilated` computes the same convolution with its own gradient:
the input gradient is a convolution with the explicitly flipped and transposed
kernel, which XLA hands to its library inside a loop as well. The kernel's
gradient is JAX's own. (Matrix-product forms for inputs with few channels were
faster still on CPU, but jaxlib 0.10.2's CPU fusion emitters compiled a
classifier's input gradient wrongly with them: benchmarks/RESULTS.md.)

Only stride-1, undilated, ungrouped, channels-last 2D convolutions (every
stride-1 `nnx.Conv` over images) take this path; any other call is passed to
`lax.conv_general_dilated` unchanged. Values and both gradients equal lax's up
to float round-off (tests/conv_test.py, in float64). Forward-mode
differentiation (`jax.jvp`) is not defined for it, as for any `custom_vjp`.

Example:
  >>> conv = nnx.Conv(32, 64, (3, 3), conv_general_dilated=cfajax.conv_general_dilated,
  ...                 rngs=nnx.Rngs(0))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         **kwargs):
  """`lax.conv_general_dilated`, with loop-friendly gradients for stride-1 image convolutions.

  Args and return value: those of `jax.lax.conv_general_dilated`. The fast
  path takes `lhs` (N, H, W, C) and `rhs` (kh, kw, C, O) with channels-last
  dimension numbers (as `nnx.Conv` passes them), unit strides and dilations,
  one feature group and padding given as a string or (low, high) pairs.
  """
  if not _fast_path(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                    feature_group_count, batch_group_count, preferred_element_type, kwargs):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type, **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  padding = tuple((int(low), int(high)) for low, high in padding)
  return _conv(lhs, rhs, padding, precision)


def _fast_path(lhs, rhs, strides, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, batch_group_count, preferred_element_type, kwargs) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if preferred_element_type is not None or any(v is not None for v in kwargs.values()):
    return False
  ones = lambda v: v is None or all(int(s) == 1 for s in v)
  if not (ones(strides) and ones(lhs_dilation) and ones(rhs_dilation)):
    return False
  wanted = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CHANNELS_LAST)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == wanted


def _lax_conv(x, k, padding, precision):
  return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=_CHANNELS_LAST,
                                  precision=precision)


def _input_gradient_conv(g, k, padding, precision):
  """d(conv)/d(input) as a convolution with the flipped, transposed kernel, moved in memory."""
  kh, kw = k.shape[:2]
  back = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
          (kw - 1 - padding[1][0], kw - 1 - padding[1][1]))
  return _lax_conv(g, jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2), back, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, k, padding, precision):
  return _lax_conv(x, k, padding, precision)


def _conv_forward(x, k, padding, precision):
  # Symbolic zeros say which of x and k is differentiated, so only what is needed is kept and
  # computed: the attack needs only the input's gradient (the kernel's, vmapped inside
  # shard_map, is not defined in jax 0.7), training only the kernel's for a first layer.
  residuals = (k.value if x.perturbed else None,  # for the input's gradient
               x.value if k.perturbed else None, k.value if k.perturbed else None)  # kernel's
  return _conv(x.value, k.value, padding, precision), residuals


def _conv_backward(padding, precision, residuals, g):
  k_for_input, x, k = residuals  # None where that gradient is not needed
  dx = None if k_for_input is None else _input_gradient_conv(g, k_for_input, padding, precision)
  dk = None if k is None else jax.vjp(lambda k: _lax_conv(x, k, padding, precision), k)[1](g)[0]
  return dx, dk


_conv.defvjp(_conv_forward, _conv_backward, symbolic_zeros=True)
