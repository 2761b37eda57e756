"""The convolutional building blocks the model families share (NHWC throughout), and the
Bernoulli likelihood the VAE and the sigmoid heads are trained with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfajax._conv import conv_general_dilated


def _halvings(size: int, times: int) -> list[int]:
  """[size, ceil(size/2), ...]: the spatial sizes after each SAME stride-2 layer."""
  sizes = [size]
  for _ in range(times):
    sizes.append(-(-sizes[-1] // 2))
  return sizes


def _conv_layer(*args, **kwargs) -> nnx.Conv:
  """An `nnx.Conv` whose input gradient XLA runs fast inside the attack's loop (`_conv.py`)."""
  return nnx.Conv(*args, conv_general_dilated=conv_general_dilated, **kwargs)


def _depth_to_space(x: jax.Array) -> jax.Array:
  """(B, h, w, 4c) -> (B, 2h, 2w, c): each pixel's channels become a 2x2 block."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c // 4)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pool, stride 2, "SAME" padding, as a reshape and a max.

  The same values and gradients as `nnx.max_pool(x, (2, 2), (2, 2), "SAME")`,
  but its gradient is a cheap elementwise mask: XLA's select-and-scatter,
  which reduce_window's gradient lowers to, ran 56x slower than the forward
  pass on CPU and bounded the attack's step rate (benchmarks/RESULTS.md).
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:  # SAME pads the far edge with -inf, as reduce_window does
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
  return x.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


def _subpixel_decoder(latent_dim: int, widths, channels: int, flat: int, rngs):
  """The layers of a sub-pixel convolutional decoder (shared by the VAE and the GAN)."""
  outs = tuple(widths[-2::-1]) + (channels,)
  return (nnx.Linear(latent_dim, flat, rngs=rngs),
          nnx.data([_conv_layer(i, 4 * o, (3, 3), rngs=rngs)
                    for i, o in zip(widths[::-1], outs, strict=True)]))


def _subpixel_decode(from_latent, decoder, heights, widths_px, last_width, z):
  """Latents (B, d) -> logits (B, H, W, C): a dense layer to the smallest map, then per
  level a 3x3 convolution to four times the channels and depth-to-space, cropped
  where a size was odd."""
  h = nnx.silu(from_latent(z))
  h = h.reshape(z.shape[0], heights[-1], widths_px[-1], last_width)
  for level, conv in zip(range(len(decoder) - 1, -1, -1), decoder, strict=True):
    h = _depth_to_space(conv(h))[:, :heights[level], :widths_px[level]]
    if level > 0:
      h = nnx.silu(h)
  return h


def bernoulli_bce(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Elementwise -[x log sigmoid(l) + (1-x) log sigmoid(-l)]; x may be in [0, 1]."""
  return jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))
