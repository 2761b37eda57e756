"""Saliency maps: from counterfactuals, and the gradient baselines they are compared with.

A counterfactual says where an image had to change for the decision to
change: its map is `|x' - start|` (start = G(z) for a latent attack, x for
an attack on the images), averaged over channels and Gaussian-smoothed. The
baselines are the gradient of the target's log-odds (Simonyan et al. 2014)
and integrated gradients (Sundararajan et al. 2017), both vmapped over
images. A map is scored against a ground-truth mask by the IoU of its
thresholded mask and by the pointing game (whether its largest value falls
inside the mask).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cfajax import _array_checks
from cfajax import _checks
from cfajax._attack import check_targets
from cfajax._batching import map_batches
from cfajax._callables import as_pure_callable
from cfajax._loop import target_scores
from cfajax._sources import output_width


def _images(name: str, x) -> np.ndarray:
  return _array_checks.finite_rows(x, name, 4, "images (n, H, W, C)", "image").astype(np.float32)


def _maps(name: str, x) -> np.ndarray:
  return _array_checks.finite_rows(x, name, 3, "maps (n, H, W)", "map")


def _gaussian_kernel(sigma: float) -> np.ndarray:
  radius = max(1, int(np.ceil(3 * sigma)))
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  return (kernel / kernel.sum()).astype(np.float32)


def smooth(maps, sigma: float) -> np.ndarray:
  """(n, H, W) maps blurred by a Gaussian of `sigma` pixels (0: unchanged).

  Separable, with the image's edge values repeated beyond it, so a map's
  total is kept away from its borders.
  """
  maps = _maps("maps", maps)
  sigma = _checks.number("sigma", sigma, low=0.0)
  if sigma == 0 or maps.size == 0:
    return maps.astype(np.float32)
  kernel = _gaussian_kernel(sigma)
  radius = len(kernel) // 2
  out = np.pad(maps.astype(np.float32), ((0, 0), (radius, radius), (radius, radius)), mode="edge")
  out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, out)
  return np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 2, out)


def counterfactual_saliency(starts, counterfactuals, *, sigma: float = 1.0) -> np.ndarray:
  """(n, H, W) `|x' - start|`, averaged over channels, smoothed by `sigma` pixels.

  Args:
    starts: (n, H, W, C) where each counterfactual started: G(z) for a latent
      attack, the image for a data-free or pixel attack.
    counterfactuals: (n, H, W, C) the counterfactual images.
  """
  starts, counterfactuals = _images("starts", starts), _images("counterfactuals", counterfactuals)
  if starts.shape != counterfactuals.shape:
    raise ValueError(f"starts {starts.shape} and counterfactuals {counterfactuals.shape} must "
                     "have the same shape")
  return smooth(np.abs(counterfactuals - starts).mean(-1), sigma)


def saliency_mask(maps, *, fraction: float = 0.05) -> np.ndarray:
  """(n, H, W) bool: each map's largest `fraction` of pixels (at least one).

  The rule needs no threshold in the maps' own units, so maps of different
  methods (pixel differences, gradients) are compared at the same area.
  Ties at the cut are broken by position (stable order).
  """
  maps = _maps("maps", maps)
  fraction = _checks.number("fraction", fraction, low=0.0, high=1.0, low_open=True)
  n, h, w = maps.shape
  keep = max(1, int(round(fraction * h * w)))
  order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")[:, :keep]
  mask = np.zeros((n, h * w), bool)
  np.put_along_axis(mask, order, True, axis=1)
  return mask.reshape(n, h, w)


def iou(predicted, truth) -> np.ndarray:
  """(n,) intersection over union of two (n, H, W) boolean masks (1 where both are empty)."""
  predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
  if predicted.shape != truth.shape or predicted.ndim != 3:
    raise ValueError(f"masks must both be (n, H, W); got {predicted.shape} and {truth.shape}")
  union = (predicted | truth).sum((1, 2))
  both = (predicted & truth).sum((1, 2))
  return np.where(union > 0, both / np.maximum(union, 1), 1.0)


def pointing_game(maps, truth) -> np.ndarray:
  """(n,) bool: whether each map's largest value lies inside its ground-truth mask."""
  maps = _maps("maps", maps)
  truth = np.asarray(truth, bool)
  if truth.shape != maps.shape:
    raise ValueError(f"maps {maps.shape} and masks {truth.shape} must have the same shape")
  n = len(maps)
  peak = np.argmax(maps.reshape(n, -1), axis=1)
  return truth.reshape(n, -1)[np.arange(n), peak]


def _total_log_odds(classify, images, targets):
  """The batch's summed target log-odds: each row's gradient is its own."""
  logits = classify(images)
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return jnp.sum(jax.vmap(lambda row, t: target_scores(row, t)[0])(logits, targets))


@functools.partial(jax.jit, static_argnames=("steps",))
def _integrated(classify, x, baseline, target, *, steps):
  """(B, H, W, C) integrated gradients of the target's log-odds, midpoint rule."""
  def at(k, total):
    alpha = (k + 0.5) / steps
    return total + jax.grad(_total_log_odds, argnums=1)(
        classify, baseline + alpha * (x - baseline), target)

  return (x - baseline) * jax.lax.fori_loop(0, steps, at, jnp.zeros_like(x)) / steps


def integrated_gradients(classify: Callable, images, target, *, baseline=0.0, steps: int = 32,
                         batch_size: int = 256) -> np.ndarray:
  """(n, H, W, C) integrated gradients of the target's log-odds (signed, per channel).

  `(x - b) * mean_k grad f(b + (k + 1/2)/steps (x - b))`: their sum over
  pixels approaches `f(x) - f(b)` (completeness) as `steps` grows; exact for a
  classifier whose log-odds are linear in the image.

  Args:
    classify: images -> logits, as for the attack.
    images: (n, H, W, C) images; target: () or (n,) classes.
    baseline: a number or an (H, W, C) image (default black).
  """
  x = _images("images", images)
  steps = _checks.integer("steps", steps, low=1)
  baseline = np.broadcast_to(np.asarray(baseline, np.float32), x.shape[1:])
  pure = as_pure_callable(classify)
  target = check_targets(target, len(x), output_width(pure, x.shape[1:], "classify"),
                         "images")
  return map_batches(
      lambda xb, tb: _integrated(pure, jnp.asarray(xb), jnp.asarray(baseline), jnp.asarray(tb),
                                 steps=steps), [x, target], batch_size)


def gradient_saliency(classify: Callable, images, target, *, batch_size: int = 256) -> np.ndarray:
  """(n, H, W) `max_c |d log-odds / d x|`: the plain gradient map of the target."""
  x = _images("images", images)
  pure = as_pure_callable(classify)
  target = check_targets(target, len(x), output_width(pure, x.shape[1:], "classify"),
                         "images")
  grads = map_batches(lambda xb, tb: _gradient(pure, jnp.asarray(xb), jnp.asarray(tb)),
                      [x, target], batch_size)
  return np.abs(grads).max(-1)


@jax.jit
def _gradient(classify, x, target):
  return jax.grad(_total_log_odds, argnums=1)(classify, x, target)


def plant_defects(images, *, fraction: float = 0.5, length=(6, 10), width: int = 1,
                  intensity: float = 1.0, seed: int = 0):
  """A saliency benchmark with known answers: thin bright "cracks" planted at random places.

  A random `fraction` of the images get one straight stroke, `width` pixels
  wide (a square brush), through a random number of pixels in `length` along
  its direction, at a random angle and position (wholly inside the image), drawn at
  `intensity` (each pixel the max of the image and the stroke). A classifier
  trained to tell defective images from clean ones decides by the stroke alone,
  so the stroke's pixels are where a faithful saliency map must point.

  Args:
    images: (n, H, W, C) images in [0, 1].

  Returns:
    `(images, labels, masks)`: the (n, H, W, C) images with their defects,
    (n,) int32 labels (1: defective) and (n, H, W) bool masks of the
    stroke's pixels (empty for clean images).
  """
  x = _images("images", images).copy()
  fraction = _checks.number("fraction", fraction, low=0.0, high=1.0)
  low, high = (int(v) for v in length)
  width = _checks.integer("width", width, low=1)
  n, h, w, _ = x.shape
  if not 2 <= low <= high < min(h, w):
    raise ValueError(f"length must be (low, high) with 2 <= low <= high < {min(h, w)}; got "
                     f"{tuple(length)}")
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < fraction).astype(np.int32)
  masks = np.zeros((n, h, w), bool)
  for i in np.flatnonzero(labels):
    size = rng.integers(low, high + 1)
    angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle) * (size - 1), np.cos(angle) * (size - 1)
    # Start so that the whole stroke lies inside the image.
    y0 = rng.uniform(max(0, -dy), min(h - 1, h - 1 - dy))
    x0 = rng.uniform(max(0, -dx), min(w - 1, w - 1 - dx))
    t = np.linspace(0, 1, 4 * size)
    rows = np.clip(np.rint(y0 + t * dy).astype(int), 0, h - 1)
    cols = np.clip(np.rint(x0 + t * dx).astype(int), 0, w - 1)
    for a in range(width):  # a width x width brush, kept inside the image
      for b in range(width):
        masks[i, np.clip(rows + a, 0, h - 1), np.clip(cols + b, 0, w - 1)] = True
    x[i][masks[i]] = np.maximum(x[i][masks[i]], intensity)
  return x, labels, masks
