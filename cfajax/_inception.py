"""FID (Heusel et al. 2017) as the field reports it: pytorch-fid's Inception-v3, run in JAX
from the standard weight file the user supplies.

The network is the TensorFlow FID Inception as pytorch-fid ports it
(`pt_inception-2015-12-05-6726825d.pth`): torchvision's Inception-v3 layout with
the FID patches (average pools that do not count padding; a max pool in the
last block), images resized to 299 x 299 bilinearly without antialiasing and
scaled to [-1, 1], features the 2048 channels of the final average pool. FID
is the Fréchet distance between the two sets' Gaussians of those features.
The weights cannot be downloaded here: `fid(..., weights=path)` takes the file.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._batching import map_batches
from cfajax._feature_nets import Weights
from cfajax._feature_nets import avg_pool_excluding_padding
from cfajax._feature_nets import batch_norm
from cfajax._feature_nets import checked_images
from cfajax._feature_nets import conv
from cfajax._feature_nets import expected_weights
from cfajax._feature_nets import frechet
from cfajax._feature_nets import load_weights
from cfajax._feature_nets import max_pool
from cfajax._feature_nets import resize_bilinear
from cfajax._feature_nets import rgb

INPUT_SIZE = 299
FEATURES = 2048
_WHAT = "pytorch-fid's FID Inception weights (pt_inception-2015-12-05-6726825d.pth)"


def _basic(w: Weights, name: str, x, out: int, kernel, stride=1, padding=(0, 0)):
  y = conv(w, f"{name}.conv", x, out, kernel, stride=stride, padding=padding, bias=False)
  return jax.nn.relu(batch_norm(w, f"{name}.bn", y, eps=1e-3))


def _block_a(w: Weights, name: str, x, pool_features: int):
  b1 = _basic(w, f"{name}.branch1x1", x, 64, 1)
  b5 = _basic(w, f"{name}.branch5x5_1", x, 48, 1)
  b5 = _basic(w, f"{name}.branch5x5_2", b5, 64, 5, padding=(2, 2))
  b3 = _basic(w, f"{name}.branch3x3dbl_1", x, 64, 1)
  b3 = _basic(w, f"{name}.branch3x3dbl_2", b3, 96, 3, padding=(1, 1))
  b3 = _basic(w, f"{name}.branch3x3dbl_3", b3, 96, 3, padding=(1, 1))
  bp = _basic(w, f"{name}.branch_pool", avg_pool_excluding_padding(x, 3, 1, 1), pool_features, 1)
  return jnp.concatenate([b1, b5, b3, bp], axis=-1)


def _block_b(w: Weights, name: str, x):
  b3 = _basic(w, f"{name}.branch3x3", x, 384, 3, stride=2)
  bd = _basic(w, f"{name}.branch3x3dbl_1", x, 64, 1)
  bd = _basic(w, f"{name}.branch3x3dbl_2", bd, 96, 3, padding=(1, 1))
  bd = _basic(w, f"{name}.branch3x3dbl_3", bd, 96, 3, stride=2)
  return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


def _block_c(w: Weights, name: str, x, c7: int):
  row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
  b1 = _basic(w, f"{name}.branch1x1", x, 192, 1)
  b7 = _basic(w, f"{name}.branch7x7_1", x, c7, 1)
  b7 = _basic(w, f"{name}.branch7x7_2", b7, c7, row[0], padding=row[1])
  b7 = _basic(w, f"{name}.branch7x7_3", b7, 192, col[0], padding=col[1])
  bd = _basic(w, f"{name}.branch7x7dbl_1", x, c7, 1)
  for i, (out, (kernel, pad)) in enumerate(zip((c7, c7, c7, 192), (col, row, col, row),
                                               strict=True)):
    bd = _basic(w, f"{name}.branch7x7dbl_{i + 2}", bd, out, kernel, padding=pad)
  bp = _basic(w, f"{name}.branch_pool", avg_pool_excluding_padding(x, 3, 1, 1), 192, 1)
  return jnp.concatenate([b1, b7, bd, bp], axis=-1)


def _block_d(w: Weights, name: str, x):
  b3 = _basic(w, f"{name}.branch3x3_1", x, 192, 1)
  b3 = _basic(w, f"{name}.branch3x3_2", b3, 320, 3, stride=2)
  b7 = _basic(w, f"{name}.branch7x7x3_1", x, 192, 1)
  b7 = _basic(w, f"{name}.branch7x7x3_2", b7, 192, (1, 7), padding=(0, 3))
  b7 = _basic(w, f"{name}.branch7x7x3_3", b7, 192, (7, 1), padding=(3, 0))
  b7 = _basic(w, f"{name}.branch7x7x3_4", b7, 192, 3, stride=2)
  return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


def _split_pair(w: Weights, name: str, x):
  """A (1, 3) and a (3, 1) convolution of one input, side by side."""
  return jnp.concatenate([_basic(w, f"{name}a", x, 384, (1, 3), padding=(0, 1)),
                          _basic(w, f"{name}b", x, 384, (3, 1), padding=(1, 0))], axis=-1)


def _block_e(w: Weights, name: str, x, last: bool):
  b1 = _basic(w, f"{name}.branch1x1", x, 320, 1)
  b3 = _split_pair(w, f"{name}.branch3x3_2", _basic(w, f"{name}.branch3x3_1", x, 384, 1))
  bd = _basic(w, f"{name}.branch3x3dbl_1", x, 448, 1)
  bd = _split_pair(w, f"{name}.branch3x3dbl_3",
                   _basic(w, f"{name}.branch3x3dbl_2", bd, 384, 3, padding=(1, 1)))
  # The FID network's last block pools by max (a quirk of the TensorFlow graph it ports).
  pooled = max_pool(x, 3, 1, 1) if last else avg_pool_excluding_padding(x, 3, 1, 1)
  bp = _basic(w, f"{name}.branch_pool", pooled, 192, 1)
  return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def pool3_features(w: Weights, images: jax.Array) -> jax.Array:
  """The FID Inception's 2048 pool features of (B, H, W, 1 or 3) images in [0, 1] -> (B, 2048)."""
  x = resize_bilinear(rgb(images), (INPUT_SIZE, INPUT_SIZE)) * 2 - 1
  x = _basic(w, "Conv2d_1a_3x3", x, 32, 3, stride=2)
  x = _basic(w, "Conv2d_2a_3x3", x, 32, 3)
  x = _basic(w, "Conv2d_2b_3x3", x, 64, 3, padding=(1, 1))
  x = max_pool(x, 3, 2)
  x = _basic(w, "Conv2d_3b_1x1", x, 80, 1)
  x = _basic(w, "Conv2d_4a_3x3", x, 192, 3)
  x = max_pool(x, 3, 2)
  for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
    x = _block_a(w, name, x, pool_features)
  x = _block_b(w, "Mixed_6a", x)
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    x = _block_c(w, name, x, c7)
  x = _block_d(w, "Mixed_7a", x)
  x = _block_e(w, "Mixed_7b", x, last=False)
  x = _block_e(w, "Mixed_7c", x, last=True)
  return x.mean(axis=(1, 2))


def inception_weights(path) -> dict[str, np.ndarray]:
  """pytorch-fid's FID Inception weights from `path`, checked against the network.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: a file that does not hold those weights, naming the missing,
      unexpected or wrongly shaped ones.
  """
  expected = expected_weights(pool3_features, (INPUT_SIZE, INPUT_SIZE, 3))
  return load_weights(path, expected, ignored=("fc.", "AuxLogits."), what=_WHAT)


@jax.jit
def _features(weights: dict[str, jax.Array], images: jax.Array) -> jax.Array:
  return pool3_features(Weights(weights), images)


def inception_features(weights) -> Callable[[jax.Array], jax.Array]:
  """The FID feature map as a callable: (B, H, W, 1 or 3) images in [0, 1] -> (B, 2048).

  Args:
    weights: the path of pytorch-fid's weight file
      (`pt_inception-2015-12-05-6726825d.pth`, or the same state dict as
      .safetensors / .npz), or the dict `inception_weights` returns.

  The callable plugs into `frechet_distance` and `feature_statistics`.
  """
  arrays = weights if isinstance(weights, dict) else inception_weights(weights)
  arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
  return partial(_features, arrays)


def fid(images, reference, *, weights, batch_size: int = 50) -> dict[str, Any]:
  """FID between two image sets, as pytorch-fid computes it, in JAX.

  Args:
    images: (n, H, W, C) floats in [0, 1], C = 1 (repeated to RGB) or 3; n >= 2.
    reference: (m, H', W', C') likewise, e.g. held-out real images.
    weights: pytorch-fid's weight file (see `inception_features`).
    batch_size: images per compiled call (each is resized to 299 x 299).

  Returns:
    `{"fid": d, "n": n, "n_reference": m}`. FID is biased upward for small sets
    and comparable only between sets of equal size; the field reports it on
    10,000 or 50,000 images.
  """
  sets = [checked_images(name, x) for name, x in (("images", images), ("reference", reference))]
  for name, x in zip(("images", "reference"), sets, strict=True):
    if len(x) < 2:
      raise ValueError(f"FID needs at least 2 {name}; got {len(x)}")
  features = inception_features(weights)
  stats = []
  for x in sets:
    f = np.asarray(map_batches(lambda part: features(part), [x], batch_size), np.float64)
    stats.append((f.mean(axis=0), np.cov(f, rowvar=False)))
  return {"fid": frechet(*stats[0], *stats[1]), "n": len(sets[0]), "n_reference": len(sets[1])}
