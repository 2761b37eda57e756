"""What the feature networks of FID and LPIPS share: PyTorch-layout weights read by name,
their layers in NHWC, torch's bilinear resize, the check of a weight file, and the
Fréchet distance between feature Gaussians.

A network is a pure function `forward(weights, x)` that asks `weights(name,
shape)` for each array it uses, in PyTorch's layout (convolutions (out, in, kh,
kw)). Traced once with `Weights.recorder()` it lists every name and shape it
needs, so a weight file is checked against the code that will run it, not
against a second copy of the architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._torch_files import read_state_dict


class Weights:
  """Arrays by PyTorch name; a recorder (no arrays) notes the names and shapes asked for."""

  def __init__(self, arrays: dict[str, jax.Array] | None):
    self.arrays = arrays
    self.expected: dict[str, tuple[int, ...]] = {}

  def __call__(self, name: str, shape: tuple[int, ...]) -> jax.Array:
    self.expected[name] = tuple(shape)
    if self.arrays is None:
      return jnp.zeros(shape, jnp.float32)
    return self.arrays[name]


def expected_weights(forward: Callable, image_shape: tuple[int, ...]) -> dict[str, tuple]:
  """Every weight `forward` reads on images of `image_shape` (H, W, C), with its shape."""
  recorder = Weights(None)
  jax.eval_shape(lambda x: forward(recorder, x), jax.ShapeDtypeStruct((1, *image_shape),
                                                                      jnp.float32))
  return recorder.expected


def load_weights(path, expected: dict[str, tuple], *, ignored: Iterable[str] = (),
                 what: str) -> dict[str, np.ndarray]:
  """The arrays `expected` from a weight file, as float32, checked before any is used.

  Args:
    path: the file (`read_state_dict` formats).
    expected: name -> shape, as `expected_weights` gives.
    ignored: name prefixes the file may hold that the network does not use
      (a classifier head, BatchNorm's `num_batches_tracked`).
    what: the weights' name for messages ("pytorch-fid's Inception weights").

  Raises:
    ValueError: missing, unexpected or wrongly shaped weights, each named.
  """
  state = read_state_dict(path)
  ignored = tuple(ignored)
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(k for k in set(state) - set(expected)
                      if not k.startswith(ignored) and not k.endswith("num_batches_tracked"))
  wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
                 for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
  problems = [f"{label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
              for label, names in (("missing", missing), ("unexpected", unexpected),
                                   ("wrong shape", wrong)) if names]
  if problems:
    raise ValueError(f"{Path(path)} does not hold {what}; " + "; ".join(problems))
  arrays = {k: np.asarray(state[k], np.float32) for k in expected}
  bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
  if bad:
    raise ValueError(f"{Path(path)}: weights {', '.join(bad[:8])} are not finite")
  return arrays


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet(mean_a, cov_a, mean_b, cov_b) -> float:
  """The Fréchet distance between Gaussians (mean (F,), covariance (F, F)), in float64."""
  # tr sqrt(A B) = tr sqrt(A^1/2 B A^1/2), whose argument is symmetric PSD:
  # its eigenvalues are real and >= 0 up to round-off, so no complex sqrtm.
  root_a = _psd_sqrt(cov_a)
  cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
  trace = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sum(np.sqrt(np.clip(cross, 0, None)))
  return float(np.sum((mean_a - mean_b) ** 2) + trace)


def conv(weights: Weights, name: str, x: jax.Array, out: int, kernel, *, stride=1,
         padding=(0, 0), bias: bool) -> jax.Array:
  """torch.nn.Conv2d on NHWC: weight (out, in, kh, kw) and optional bias (out,)."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  w = weights(f"{name}.weight", (out, x.shape[-1], kh, kw)).astype(x.dtype)
  ph, pw = (padding, padding) if isinstance(padding, int) else padding
  y = jax.lax.conv_general_dilated(
      x, jnp.transpose(w, (2, 3, 1, 0)), (stride, stride), ((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  if bias:
    y = y + weights(f"{name}.bias", (out,)).astype(x.dtype)
  return y


def batch_norm(weights: Weights, name: str, x: jax.Array, eps: float) -> jax.Array:
  """torch.nn.BatchNorm2d in eval mode (running statistics)."""
  c = (x.shape[-1],)
  mean, var = weights(f"{name}.running_mean", c), weights(f"{name}.running_var", c)
  scale, shift = weights(f"{name}.weight", c), weights(f"{name}.bias", c)
  return ((x - mean.astype(x.dtype)) * jax.lax.rsqrt(var.astype(x.dtype) + eps)
          * scale.astype(x.dtype) + shift.astype(x.dtype))


def max_pool(x: jax.Array, size: int, stride: int, padding: int = 0) -> jax.Array:
  """F.max_pool2d (floor mode)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, stride, stride, 1), pad)


def avg_pool_excluding_padding(x: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
  """F.avg_pool2d with count_include_pad=False: padded cells count in no mean."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  window, strides = (1, size, size, 1), (1, stride, stride, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add,
                                window, strides, pad)
  return total / count


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """NHWC images resized to `size` (H, W) as torch's `F.interpolate(mode="bilinear",
  align_corners=False)` does: half-pixel centres, no antialiasing when shrinking (the
  reference implementations resize this way; `jax.image.resize` antialiases by default)."""
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "linear", antialias=False)


def checked_images(name: str, x, *, channels=(1, 3)) -> np.ndarray:
  """(n, H, W, C) finite images in [0, 1] with 1 or 3 channels, on the host, as float32
  (float64 stays float64, for a reference computed in double precision)."""
  x = np.asarray(x)
  if x.ndim != 4 or x.shape[-1] not in channels:
    raise ValueError(f"{name} must be (n, H, W, C) images with C in {channels}; got shape "
                     f"{x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be floats in [0, 1]; got {x.dtype} (divide uint8 images "
                     "by 255)")
  x = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} hold NaN or infinity")
  if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
    raise ValueError(f"{name} must lie in [0, 1]; they span [{x.min():.3g}, {x.max():.3g}]")
  return x


def rgb(x: jax.Array) -> jax.Array:
  """Grey images repeated to three channels, as the networks (trained on RGB) take them."""
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
