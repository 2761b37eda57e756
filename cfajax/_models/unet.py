"""The DDPM-family UNet (residual blocks, group norm, attention at chosen levels, sinusoidal
time embedding) as an NNX module, laid out as diffusers' `UNet2DModel` so that its
checkpoints load name for name (`_diffusers.py`).

NHWC throughout. Each submodule's path is the diffusers parameter's name with
`downsamplers.0.conv` as `downsample`, `upsamplers.0.conv` as `upsample` and
`to_out.0` as `to_out` (`torch_name` maps one to the other).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cfajax._models._base import _check_image_shape
from cfajax._models._base import _check_widths
from cfajax._models._base import _Config
from cfajax._models._layers import _conv_layer


@dataclasses.dataclass(frozen=True)
class UNetConfig(_Config):
  """A UNet of the DDPM family; the fields are diffusers' `UNet2DModel` options of the same
  meaning (`block_out_channels` is `widths`; a level with attention is an
  `AttnDownBlock2D` / `AttnUpBlock2D`).

  Attributes:
    image_shape: (H, W, C) of the images (diffusers' sample_size and channels);
      H and W must halve `len(widths) - 1` times.
    widths: channels per level.
    down_attention: per level, whether its down block has attention.
    up_attention: per up block (deepest first), whether it has attention.
    layers_per_block: residual blocks per down level (one more per up level).
    groups: group norm groups; every width must be a multiple.
    eps: the group norms' epsilon.
    head_dim: channels per attention head (None: one head).
    mid_attention: attention in the middle block.
    mid_scale: the middle block's output scale factor.
    flip_sin_to_cos, freq_shift: the sinusoidal time embedding's layout.
    downsample_padding: 1 (pad each side) or 0 (pad bottom and right).
    center_input: map inputs x to 2x - 1 first.
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  widths: tuple[int, ...] = (32, 64)
  down_attention: tuple[bool, ...] = (False, True)
  up_attention: tuple[bool, ...] = (True, False)
  layers_per_block: int = 1
  groups: int = 8
  eps: float = 1e-6
  head_dim: int | None = None
  mid_attention: bool = True
  mid_scale: float = 1.0
  flip_sin_to_cos: bool = False
  freq_shift: int = 1
  downsample_padding: int = 0
  center_input: bool = False

  def __post_init__(self):
    object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
    object.__setattr__(self, "widths", _check_widths(self.widths, "widths"))
    levels = len(self.widths)
    for name in ("down_attention", "up_attention"):
      value = tuple(bool(a) for a in getattr(self, name))
      if len(value) != levels:
        raise ValueError(f"{name} must say for each of the {levels} levels whether it has "
                         f"attention; got {getattr(self, name)}")
      object.__setattr__(self, name, value)
    if any(w % self.groups for w in self.widths):
      raise ValueError(f"every width must be a multiple of groups={self.groups}; got widths "
                       f"{self.widths}")
    if self.head_dim is not None and any(w % self.head_dim for w in self.widths):
      raise ValueError(f"every width must be a multiple of head_dim={self.head_dim}; got "
                       f"widths {self.widths}")
    scale = 2 ** (levels - 1)
    if self.image_shape[0] % scale or self.image_shape[1] % scale:
      raise ValueError(f"a UNet of {levels} levels halves the image {levels - 1} times: its "
                       f"height and width must be multiples of {scale}; got "
                       f"{self.image_shape[:2]}")
    if self.downsample_padding not in (0, 1):
      raise ValueError(f"downsample_padding must be 0 or 1; got {self.downsample_padding}")
    if self.layers_per_block < 1:
      raise ValueError(f"layers_per_block must be >= 1; got {self.layers_per_block}")


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       dtype=jnp.float32) -> jax.Array:
  """Sinusoidal embeddings (B, dim) of timesteps (B,), as DDPM's, computed in `dtype`
  (float32, as diffusers does, unless the model runs in float64)."""
  half = dim // 2
  exponent = -math.log(10000.0) * jnp.arange(half, dtype=dtype) / (half - freq_shift)
  angles = jnp.asarray(t, dtype)[:, None] * jnp.exp(exponent)[None]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _group_norm(channels: int, config: UNetConfig, rngs: nnx.Rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(channels, num_groups=config.groups, epsilon=config.eps,
                       use_fast_variance=False, rngs=rngs)


def _conv3(i: int, o: int, rngs: nnx.Rngs, *, strides: int = 1, padding=((1, 1), (1, 1))):
  return _conv_layer(i, o, (3, 3), strides=strides, padding=padding, rngs=rngs)


class ResnetBlock(nnx.Module):
  """GroupNorm, SiLU, 3x3 conv, + the time embedding, GroupNorm, SiLU, 3x3 conv; a 1x1
  convolution on the shortcut where the width changes."""

  def __init__(self, i: int, o: int, temb: int, config: UNetConfig, *, scale: float = 1.0,
               rngs: nnx.Rngs):
    self.norm1 = _group_norm(i, config, rngs)
    self.conv1 = _conv3(i, o, rngs)
    self.time_emb_proj = nnx.Linear(temb, o, rngs=rngs)
    self.norm2 = _group_norm(o, config, rngs)
    self.conv2 = _conv3(o, o, rngs)
    self.conv_shortcut = (_conv_layer(i, o, (1, 1), padding="VALID", rngs=rngs) if i != o
                          else None)
    self.scale = scale

  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = h + self.time_emb_proj(nnx.silu(temb))[:, None, None, :]
    h = self.conv2(nnx.silu(self.norm2(h)))
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    return (shortcut + h) / self.scale


class Attention(nnx.Module):
  """Self-attention over the pixels of a (B, H, W, C) map, after a group norm, with a
  residual connection; the softmax in float32."""

  def __init__(self, channels: int, config: UNetConfig, *, scale: float = 1.0,
               rngs: nnx.Rngs):
    self.group_norm = _group_norm(channels, config, rngs)
    self.to_q = nnx.Linear(channels, channels, rngs=rngs)
    self.to_k = nnx.Linear(channels, channels, rngs=rngs)
    self.to_v = nnx.Linear(channels, channels, rngs=rngs)
    self.to_out = nnx.Linear(channels, channels, rngs=rngs)
    self.heads = 1 if config.head_dim is None else channels // config.head_dim
    self.scale = scale

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = self.group_norm(x).reshape(b, h * w, c)
    split = lambda t: t.reshape(b, h * w, self.heads, c // self.heads)
    q, k, v = split(self.to_q(y)), split(self.to_k(y)), split(self.to_v(y))
    upcast = jnp.promote_types(x.dtype, jnp.float32)  # the softmax in float32 at least
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(upcast) / math.sqrt(c // self.heads)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h * w, c)
    return (self.to_out(out).reshape(b, h, w, c) + x) / self.scale


class DownBlock(nnx.Module):
  """A level of the encoder: residual blocks (each with attention, if the level has it),
  then a stride-2 convolution unless it is the deepest level."""

  def __init__(self, i: int, o: int, temb: int, attention: bool, last: bool,
               config: UNetConfig, rngs: nnx.Rngs):
    widths = [i] + [o] * config.layers_per_block
    self.resnets = nnx.data([ResnetBlock(a, o, temb, config, rngs=rngs) for a in widths[:-1]])
    self.attentions = nnx.data([Attention(o, config, rngs=rngs) for _ in self.resnets]
                               if attention else [])
    pad = ((1, 1), (1, 1)) if config.downsample_padding == 1 else ((0, 1), (0, 1))
    self.downsample = None if last else _conv3(o, o, rngs, strides=2, padding=pad)

  def __call__(self, x, temb, skips: list) -> jax.Array:
    for j, resnet in enumerate(self.resnets):
      x = resnet(x, temb)
      if self.attentions:
        x = self.attentions[j](x)
      skips.append(x)
    if self.downsample is not None:
      x = self.downsample(x)
      skips.append(x)
    return x


class UpBlock(nnx.Module):
  """A level of the decoder: residual blocks on the map joined with the encoder's skips
  (each with attention, if the level has it), then nearest upsampling and a 3x3
  convolution unless it is the last level."""

  def __init__(self, skip_in: int, prev: int, o: int, temb: int, attention: bool, last: bool,
               config: UNetConfig, rngs: nnx.Rngs):
    n = config.layers_per_block + 1
    ins = [(prev if j == 0 else o) + (skip_in if j == n - 1 else o) for j in range(n)]
    self.resnets = nnx.data([ResnetBlock(a, o, temb, config, rngs=rngs) for a in ins])
    self.attentions = nnx.data([Attention(o, config, rngs=rngs) for _ in self.resnets]
                               if attention else [])
    self.upsample = None if last else _conv3(o, o, rngs)

  def __call__(self, x, temb, skips: list) -> jax.Array:
    for j, resnet in enumerate(self.resnets):
      x = resnet(jnp.concatenate([x, skips.pop()], axis=-1), temb)
      if self.attentions:
        x = self.attentions[j](x)
    if self.upsample is not None:
      x = self.upsample(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    return x


class MidBlock(nnx.Module):
  """Residual block, attention (optional), residual block, at the deepest level."""

  def __init__(self, width: int, temb: int, config: UNetConfig, rngs: nnx.Rngs):
    scale = config.mid_scale
    self.resnets = nnx.data([ResnetBlock(width, width, temb, config, scale=scale, rngs=rngs)
                             for _ in range(2)])
    self.attentions = nnx.data([Attention(width, config, scale=scale, rngs=rngs)]
                               if config.mid_attention else [])

  def __call__(self, x, temb) -> jax.Array:
    x = self.resnets[0](x, temb)
    if self.attentions:
      x = self.attentions[0](x)
    return self.resnets[1](x, temb)


class TimeEmbedding(nnx.Module):
  def __init__(self, i: int, o: int, rngs: nnx.Rngs):
    self.linear_1 = nnx.Linear(i, o, rngs=rngs)
    self.linear_2 = nnx.Linear(o, o, rngs=rngs)

  def __call__(self, t: jax.Array) -> jax.Array:
    return self.linear_2(nnx.silu(self.linear_1(t)))


class UNet(nnx.Module):
  """The noise predictor eps(x_t, t): (B, H, W, C) noisy images and (B,) timesteps to
  (B, H, W, C)."""

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    self.config = config
    widths, channels = config.widths, config.image_shape[2]
    temb = 4 * widths[0]
    self.conv_in = _conv3(channels, widths[0], rngs)
    self.time_embedding = TimeEmbedding(widths[0], temb, rngs)
    levels = len(widths)
    self.down_blocks = nnx.data([
        DownBlock(widths[max(k - 1, 0)], widths[k], temb, config.down_attention[k],
                  k == levels - 1, config, rngs) for k in range(levels)])
    self.mid_block = MidBlock(widths[-1], temb, config, rngs)
    rev = widths[::-1]
    self.up_blocks = nnx.data([
        UpBlock(rev[min(k + 1, levels - 1)], rev[max(k - 1, 0)], rev[k], temb,
                config.up_attention[k], k == levels - 1, config, rngs)
        for k in range(levels)])
    self.conv_norm_out = _group_norm(widths[0], config, rngs)
    self.conv_out = _conv3(widths[0], channels, rngs)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    if self.config.center_input:
      x = 2 * x - 1
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    emb = timestep_embedding(t, self.config.widths[0], self.config.flip_sin_to_cos,
                             self.config.freq_shift, jnp.promote_types(x.dtype, jnp.float32))
    temb = self.time_embedding(emb.astype(x.dtype))
    h = self.conv_in(x)
    skips = [h]
    for block in self.down_blocks:
      h = block(h, temb, skips)
    h = self.mid_block(h, temb)
    for block in self.up_blocks:
      h = block(h, temb, skips)
    return self.conv_out(nnx.silu(self.conv_norm_out(h)))


def torch_name(path: tuple) -> str:
  """The diffusers parameter name of an NNX parameter path, e.g.
  ('down_blocks', 0, 'downsample', 'kernel') -> 'down_blocks.0.downsamplers.0.conv.weight'."""
  names = {"downsample": "downsamplers.0.conv", "upsample": "upsamplers.0.conv",
           "to_out": "to_out.0", "kernel": "weight", "scale": "weight"}
  return ".".join(names.get(str(p), str(p)) for p in path)
