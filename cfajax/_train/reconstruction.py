"""Applying a generator to many images: decode(encode(x)) in fixed-size batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._batching import map_batches
from cfajax._callables import as_pure_callable


@jax.jit
def _reconstruct_batch(encode, decode, x):
  return decode(encode(x))


def reconstruct(generator, images, *, batch_size: int = 256) -> np.ndarray:
  """decode(encode(images)) in fixed-size batches, as a host array.

  Args:
    generator: anything with `encode` and `decode` methods, e.g. a `ConvVAE`
      or a `Generator`.
    images: (n, H, W, C).
    batch_size: images per compiled call.

  Returns:
    (n, H, W, C) float32 reconstructions.
  """
  encode, decode = as_pure_callable(generator.encode), as_pure_callable(generator.decode)
  images = np.asarray(images, np.float32)
  return map_batches(lambda x: _reconstruct_batch(encode, decode, jnp.asarray(x)),
                      [images], batch_size)
