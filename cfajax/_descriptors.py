"""Morphometric descriptors of handwritten digits, in the spirit of Morpho-MNIST.

From grayscale images in [0, 1], with ink = pixels above `threshold`:

  thickness  mean stroke width: 2 * (mean depth of the skeleton's pixels) - 1
             (pixels), depth measured by alternating 4- and 8-neighbour erosions
  slant      arctan of the ink's shear -mu11 / mu02 (radians; > 0 when the
             top leans right), with mu the second central moments
  width      horizontal extent after removing the slant (pixels)
  height     vertical extent (pixels)
  length     stroke length: the number of skeleton pixels (pixels)
  area       ink area: the number of ink pixels (pixels^2)

The skeleton is Zhang-Suen thinning (Zhang & Suen, 1984, CACM 27(3)), run on
a whole batch at once in a jitted `lax.while_loop` until no pixel changes.
Images smaller than 16 pixels on a side (the 8 x 8 scikit-learn digits, whose
strokes are one or two pixels wide and cannot be thinned) are first upsampled
bilinearly by an integer factor; every measurement is reported in pixels of
the input image, so the factor changes resolution, not units.
Width and height are moment-based: the side of the uniform run of pixels with
the same variance, sqrt(12 var + 1), exact for an upright filled rectangle.
They vary continuously where bounding boxes do not (MNIST digits are scaled to
fit a 20-pixel box, so most bounding boxes are exactly 20 pixels tall). The
width uses the variance of columns left after removing their linear dependence
on rows (`mu20 - mu11^2 / mu02`), i.e. after undoing the slant, as Morpho-MNIST
does. Thickness, like Morpho-MNIST's, is twice the distance from the skeleton to
the background; with an integer octagonal distance it is exact for upright
strokes of odd width and one pixel short for even widths (whose skeleton sits
on one of the two middle pixels). Area over skeleton length would be simpler
but overstates short thick strokes, whose skeletons lose about half the width
at each end.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

DESCRIPTOR_NAMES = ("thickness", "slant", "width", "height", "length", "area")
DESCRIPTOR_ATTRIBUTE_NAMES = ("thick", "slanted_right", "wide", "tall", "long_stroke", "much_ink")
MIN_SIDE = 16  # smaller images are upsampled to at least 28 pixels a side
DEFAULT_BATCH_SIZE = 2048


def _neighbours(ink: jax.Array) -> list[jax.Array]:
  """The 8 neighbours P2..P9 of every pixel of (B, H, W) bool, clockwise from north."""
  p = jnp.pad(ink, ((0, 0), (1, 1), (1, 1)))
  h, w = ink.shape[1:]
  at = lambda dy, dx: p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
  return [at(-1, 0), at(-1, 1), at(0, 1), at(1, 1), at(1, 0), at(1, -1), at(0, -1), at(-1, -1)]


def _thinning_pass(ink: jax.Array, first: bool) -> jax.Array:
  """One Zhang-Suen sub-iteration: removes deletable boundary pixels at once."""
  p2, p3, p4, p5, p6, p7, p8, p9 = n = _neighbours(ink)
  count = sum(q.astype(jnp.uint8) for q in n)  # B(P1)
  ring = n + n[:1]
  transitions = sum((~a & b).astype(jnp.uint8)  # A(P1)
                    for a, b in zip(ring[:-1], ring[1:], strict=True))
  if first:  # not (P2 P4 P6) and not (P4 P6 P8)
    keep_edge = ~(p4 & p6 & (p2 | p8))
  else:  # not (P2 P4 P8) and not (P2 P6 P8)
    keep_edge = ~(p2 & p8 & (p4 | p6))
  delete = ink & (count >= 2) & (count <= 6) & (transitions == 1) & keep_edge
  return ink & ~delete


def skeletonize(ink: jax.Array) -> jax.Array:
  """Zhang-Suen thinning of a batch of binary images until nothing changes.

  Args:
    ink: (B, H, W) bool.

  Returns:
    (B, H, W) bool skeletons, one pixel wide, within `ink`. (Two-pixel-thick
    blobs such as an isolated 2 x 2 square vanish, a known property of the
    method; `digit_descriptors` counts such an image as length 1.)
  """
  def body(carry):
    ink, _ = carry
    thinned = _thinning_pass(_thinning_pass(ink, True), False)
    return thinned, jnp.any(thinned != ink)

  return jax.lax.while_loop(lambda carry: carry[1], body, (ink, jnp.array(True)))[0]


def ink_depth(ink: jax.Array) -> jax.Array:
  """How deep inside the ink each pixel lies: 1 + the erosions it survives.

  Erosions alternate between the 4- and the 8-neighbourhood (the octagonal
  distance, a close integer approximation of the Euclidean distance to the
  background). Pixels outside the ink have depth 0; boundary pixels 1.

  Args:
    ink: (B, H, W) bool.

  Returns:
    (B, H, W) int32 depths.
  """
  def body(carry):
    ink, depth, step = carry
    n = _neighbours(ink)
    cross = n[0] & n[2] & n[4] & n[6]
    diagonal = n[1] & n[3] & n[5] & n[7]
    eroded = ink & cross & jnp.where(step % 2 == 1, diagonal, True)
    return eroded, depth + eroded.astype(jnp.int32), step + 1

  init = (ink, ink.astype(jnp.int32), jnp.array(0, jnp.int32))
  return jax.lax.while_loop(lambda carry: jnp.any(carry[0]), body, init)[1]


def _descriptors_batch(images: jax.Array, threshold: jax.Array, factor: int) -> jax.Array:
  """(B, H, W) images -> (B, 6) descriptors in input pixels."""
  b, h, w = images.shape
  gray = images.astype(jnp.float32)
  if factor > 1:
    gray = jax.image.resize(gray, (b, h * factor, w * factor), "bilinear")
  ink = gray > threshold
  mask = ink.astype(jnp.float32)
  area = jnp.sum(mask, axis=(1, 2))
  skeleton = skeletonize(ink)
  skeleton_pixels = jnp.sum(skeleton, axis=(1, 2)).astype(jnp.float32)
  # The mean depth along the skeleton is half the stroke width: a centre pixel of
  # a stroke 2k + 1 pixels wide has depth k + 1. (A skeleton-less blob: its deepest pixel.)
  depth = ink_depth(ink).astype(jnp.float32)
  skeleton_depth = jnp.sum(jnp.where(skeleton, depth, 0.0), axis=(1, 2))
  mean_depth = jnp.where(
      skeleton_pixels > 0, skeleton_depth / jnp.maximum(skeleton_pixels, 1.0),
      jnp.max(depth, axis=(1, 2)))
  thickness = jnp.where(area > 0, 2.0 * mean_depth - 1.0, 0.0)
  skeleton_pixels = jnp.where(area > 0, jnp.maximum(skeleton_pixels, 1.0), 0.0)

  # Second central moments of the ink, rows growing downwards.
  rows = jnp.arange(mask.shape[1], dtype=jnp.float32)[None, :, None]
  cols = jnp.arange(mask.shape[2], dtype=jnp.float32)[None, None, :]
  safe_area = jnp.maximum(area, 1.0)[:, None, None]
  dr = rows - jnp.sum(mask * rows, axis=(1, 2), keepdims=True) / safe_area
  dc = cols - jnp.sum(mask * cols, axis=(1, 2), keepdims=True) / safe_area
  var_rows = jnp.sum(mask * dr * dr, axis=(1, 2)) / safe_area[:, 0, 0]
  var_cols = jnp.sum(mask * dc * dc, axis=(1, 2)) / safe_area[:, 0, 0]
  cov = jnp.sum(mask * dr * dc, axis=(1, 2)) / safe_area[:, 0, 0]
  upright = var_rows > 0
  shear = jnp.where(upright, -cov / jnp.where(upright, var_rows, 1.0), 0.0)
  slant = jnp.arctan(shear)
  # Columns less their linear dependence on rows: the de-slanted spread.
  var_cols_deslanted = jnp.maximum(var_cols - shear * shear * var_rows, 0.0)
  # A uniform run of L unit pixels has variance (L^2 - 1) / 12, so L = sqrt(12 var + 1).
  extent = lambda var: jnp.where(area > 0, jnp.sqrt(12.0 * var + 1.0), 0.0)
  width = extent(var_cols_deslanted)
  height = extent(var_rows)
  f = float(factor)
  return jnp.stack(
      [thickness / f, slant, width / f, height / f, skeleton_pixels / f, area / f**2], axis=1)


@functools.partial(jax.jit, static_argnames="factor")
def _descriptors_jit(images, threshold, *, factor):
  return _descriptors_batch(images, threshold, factor)


def default_upsample(height: int, width: int) -> int:
  """1 for images at least `MIN_SIDE` a side; else the factor reaching >= 28 pixels."""
  side = min(height, width)
  return 1 if side >= MIN_SIDE else math.ceil(28 / side)


def digit_descriptors(
    images,
    *,
    threshold: float = 0.5,
    upsample: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
  """Morphometric descriptors of grayscale digit images (see `DESCRIPTOR_NAMES`).

  Args:
    images: (n, H, W, 1) or (n, H, W) grayscale images in [0, 1], ink bright
      (MNIST; scikit-learn digits divided by 16).
    threshold: intensity above which a pixel is ink (after any upsampling).
    upsample: integer factor to upsample by before thresholding; default 1 for
      images at least 16 pixels a side and `ceil(28 / side)` below (4 for 8 x 8).
    batch_size: images per compiled call (the last call is padded).

  Returns:
    (n, 6) float32 descriptors, columns as `DESCRIPTOR_NAMES`: thickness,
    slant (radians), width, height, length, area, all lengths in pixels of
    the input. Images without ink get zeros.

  Raises:
    ValueError: on the wrong shape, more than one channel, NaN or inf, values
      outside [0, 1], or invalid options.
  """
  host = np.asarray(images)
  if host.ndim == 4:
    if host.shape[-1] != 1:
      raise ValueError(f"images must be grayscale (n, H, W, 1); got {host.shape[-1]} channels")
    host = host[..., 0]
  if host.ndim != 3:
    raise ValueError(f"images must have shape (n, H, W, 1) or (n, H, W); got {host.shape}")
  if host.dtype.kind not in "biuf":
    raise ValueError(f"images must be numeric; got dtype {host.dtype}")
  if host.dtype.kind == "f" and not np.all(np.isfinite(host)):
    raise ValueError("images hold NaN or inf")
  if host.size and (host.min() < 0 or host.max() > 1):
    raise ValueError(
        f"images must be in [0, 1]; got values in [{host.min()}, {host.max()}] "
        "(divide 8-bit images by 255, scikit-learn digits by 16)")
  if not 0.0 <= threshold < 1.0:
    raise ValueError(f"threshold must be in [0, 1); got {threshold}")
  n, h, w = host.shape
  if min(h, w) < 3:
    raise ValueError(f"images must be at least 3 x 3 pixels; got {h} x {w}")
  factor = default_upsample(h, w) if upsample is None else upsample
  if int(factor) != factor or factor < 1:
    raise ValueError(f"upsample must be a positive integer; got {upsample}")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
  if n == 0:
    return np.zeros((0, len(DESCRIPTOR_NAMES)), np.float32)
  host = host.astype(np.float32)
  chunk = min(int(batch_size), n)
  parts = []
  for start in range(0, n, chunk):
    part = host[start:start + chunk]
    if part.shape[0] < chunk:
      part = np.concatenate([part, np.zeros((chunk - part.shape[0], h, w), np.float32)])
    out = _descriptors_jit(jnp.asarray(part), jnp.float32(threshold), factor=int(factor))
    parts.append(np.asarray(out)[:min(chunk, n - start)])
  return np.concatenate(parts)


def binarize_descriptors(values, thresholds=None) -> tuple[np.ndarray, np.ndarray]:
  """Binary attributes "above the threshold" from descriptors.

  Args:
    values: (n, 6) descriptors from `digit_descriptors`.
    thresholds: (6,) thresholds; default the medians of `values`. Pass the
      thresholds returned for one dataset to binarize another the same way.

  Returns:
    `(attributes, thresholds)`: (n, 6) int32 in {0, 1}, `values > thresholds`,
    columns named as `DESCRIPTOR_ATTRIBUTE_NAMES` (thick, slanted_right, wide,
    tall, long_stroke, much_ink); and the (6,) thresholds used.

  Raises:
    ValueError: on the wrong shape or non-finite values.
  """
  values = np.asarray(values, np.float64)
  k = len(DESCRIPTOR_NAMES)
  if values.ndim != 2 or values.shape[1] != k:
    raise ValueError(f"values must have shape (n, {k}); got {values.shape}")
  if not np.all(np.isfinite(values)):
    raise ValueError("values hold NaN or inf")
  if thresholds is None:
    if values.shape[0] == 0:
      raise ValueError("cannot take medians of no values; pass thresholds")
    thresholds = np.median(values, axis=0)
  thresholds = np.asarray(thresholds, np.float64)
  if thresholds.shape != (k,) or not np.all(np.isfinite(thresholds)):
    raise ValueError(f"thresholds must be {k} finite numbers; got shape {thresholds.shape}")
  return (values > thresholds).astype(np.int32), thresholds
