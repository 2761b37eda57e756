"""The data-free attack's image priors: what it optimises for each example, and the image
that makes.

A prior is a frozen, hashable value (static under `jit`) with one interface:
`init(query)` gives the parameters for one (H, W, C) query, `render(params,
query, steps, stage_steps)` the image in [0, 1], `init_opt(tx, params)` the
optimizer's state, `gradients(grads, steps, stage_steps)` the gradients as the
prior moves them (what the attack's checks read), and `apply(tx, params,
opt_state, grads, move, steps, stage_steps)` one masked update. The attack
(`_data_free.DataFreeProblem`) never asks which prior it holds.

`PixelPrior`: the pixels themselves, started at the query; progressive, a
pyramid of changes at 1/2^k of the resolution unlocked coarsest first, each
level with an optimizer of its own. `ImplicitPrior`: one small coordinate MLP
per example on Fourier features of the pixel coordinates, the change `x' =
clip(x + mlp(gamma(p)))` (last layer zero, so `x'` starts at the query);
progressive, its bands faded in one group per stage.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._status import keep_where


def clip_through(image: jax.Array) -> jax.Array:
  """`image` clipped to [0, 1], with the gradient of the identity (straight-through).

  A hard clip gives a pixel pushed past 0 or 1 a zero gradient for good: no
  later step could bring it back, and a coarse level or a smooth change that
  overshoots in one region would freeze every pixel there.
  """
  return image + jax.lax.stop_gradient(jnp.clip(image, 0.0, 1.0) - image)


def _pyramid_shapes(image_shape, stages: int) -> list[tuple[int, int, int]]:
  """The coarse levels' shapes, coarsest first: 1/2^k of the resolution, k = stages-1..1."""
  h, w, c = image_shape
  return [(max(1, -(-h // 2 ** k)), max(1, -(-w // 2 ** k)), c) for k in range(stages - 1, 0, -1)]


def _coordinates(height: int, width: int) -> np.ndarray:
  """(H*W, 2) pixel centres in [-1, 1]."""
  ys = (np.arange(height) + 0.5) / height * 2 - 1
  xs = (np.arange(width) + 0.5) / width * 2 - 1
  grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1)
  return grid.reshape(-1, 2).astype(np.float32)


def default_frequencies(image_shape) -> int:
  """Fourier bands whose finest period is about two pixels of the larger side."""
  return max(1, math.ceil(math.log2(max(image_shape[:2]))))


@dataclasses.dataclass(frozen=True)
class PixelPrior:
  """The pixels, optimised directly (plain deep inversion's space)."""

  image_shape: tuple[int, int, int]
  progressive: bool = False
  stages: int = 3

  def __post_init__(self):
    if self.progressive and min(self.image_shape[:2]) < 2 ** (self.stages - 1):
      raise ValueError(f"{self.stages} progressive stages halve {self.image_shape[:2]} images "
                       f"{self.stages - 1} times; use fewer stages")

  def _levels(self) -> int:
    return self.stages if self.progressive else 1

  def init(self, query: jax.Array):
    coarse = [jnp.zeros(shape, query.dtype)
              for shape in (_pyramid_shapes(self.image_shape, self.stages)
                            if self.progressive else [])]
    return {"fine": query, "coarse": coarse}

  def render(self, params, query, steps, stage_steps) -> jax.Array:
    del query, steps, stage_steps  # the levels start at the query
    image = params["fine"]
    for level in params["coarse"]:
      image = image + jax.image.resize(level, self.image_shape, "linear")
    return clip_through(image)

  def _active(self, steps, stage_steps):
    """Per level (coarse..., fine) whether it may move now."""
    levels = self._levels()
    stage = jnp.minimum(steps // jnp.maximum(stage_steps, 1), levels - 1)
    return [stage >= k for k in range(levels)]

  def init_opt(self, tx, params):
    # One optimizer per level: each starts when its level does.
    return [tx.init(level) for level in [*params["coarse"], params["fine"]]]

  def gradients(self, grads, steps, stage_steps) -> list[jax.Array]:
    active = self._active(steps, stage_steps)
    return [g * a for g, a in zip([*grads["coarse"], grads["fine"]], active, strict=True)]

  def apply(self, tx, params, opt_state, grads, move, steps, stage_steps):
    active = self._active(steps, stage_steps)
    levels = [*params["coarse"], params["fine"]]
    new_levels, new_opt = [], []
    for level, grad, opt, on in zip(levels, grads, opt_state, active, strict=True):
      updates, opt_next = tx.update(grad, opt, level)
      go = move & on
      new_levels.append(jnp.where(go, level + updates, level))
      new_opt.append(keep_where(go, opt_next, opt))
    return {"coarse": new_levels[:-1], "fine": new_levels[-1]}, new_opt


@dataclasses.dataclass(frozen=True)
class ImplicitPrior:
  """The change as a coordinate MLP on Fourier features (an implicit neural representation)."""

  image_shape: tuple[int, int, int]
  progressive: bool = False
  stages: int = 3
  width: int = 64
  depth: int = 2
  frequencies: int = 5
  seed: int = 0

  def init(self, query: jax.Array):
    sizes = [2 + 4 * self.frequencies] + [self.width] * self.depth + [self.image_shape[2]]
    keys = jax.random.split(jax.random.key(self.seed), len(sizes) - 1)
    layers = []
    for i, (key, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
      last = i == len(sizes) - 2
      kernel = (jnp.zeros((fan_in, fan_out), query.dtype) if last  # the change starts at zero
                else jax.random.normal(key, (fan_in, fan_out), query.dtype)
                * np.sqrt(2.0 / fan_in).astype(query.dtype))
      layers.append({"kernel": kernel, "bias": jnp.zeros((fan_out,), query.dtype)})
    return layers

  def _band_weights(self, steps, stage_steps):
    """(frequencies,) each band's weight now: 1, or fading in over its group's stage."""
    if not self.progressive:
      return jnp.ones((self.frequencies,))
    group = np.minimum(np.arange(self.frequencies) * self.stages // self.frequencies,
                       self.stages - 1)
    progress = steps.astype(jnp.float32) / jnp.maximum(stage_steps, 1).astype(jnp.float32)
    return jnp.where(group == 0, 1.0, jnp.clip(progress - group, 0.0, 1.0))

  def render(self, params, query, steps, stage_steps) -> jax.Array:
    h, w, c = self.image_shape
    p = jnp.asarray(_coordinates(h, w), query.dtype)
    scales = (2.0 ** jnp.arange(self.frequencies, dtype=query.dtype)) * jnp.pi
    angles = p[:, None, :] * scales[None, :, None]  # (HW, F, 2)
    weights = self._band_weights(steps, stage_steps).astype(query.dtype)[None, :, None]
    hidden = jnp.concatenate([p, (weights * jnp.sin(angles)).reshape(h * w, -1),
                              (weights * jnp.cos(angles)).reshape(h * w, -1)], -1)
    for i, layer in enumerate(params):
      hidden = hidden @ layer["kernel"] + layer["bias"]
      if i < len(params) - 1:
        hidden = jax.nn.relu(hidden)
    return clip_through(query + hidden.reshape(h, w, c))

  def init_opt(self, tx, params):
    return tx.init(params)

  def gradients(self, grads, steps, stage_steps):
    del steps, stage_steps  # every weight moves from the start
    return grads

  def apply(self, tx, params, opt_state, grads, move, steps, stage_steps):
    del steps, stage_steps
    updates, opt_next = tx.update(grads, opt_state, params)
    return (keep_where(move, jax.tree_util.tree_map(jnp.add, params, updates), params),
            keep_where(move, opt_next, opt_state))


Prior = PixelPrior | ImplicitPrior
