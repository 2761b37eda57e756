"""Fixed-size batches over host arrays: one compilation per shape, padding dropped."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cfajax._callables import as_pure_callable


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 to `size` by repeating the last row (a real, finite input)."""
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)])


def _first_rows(tree: Any, m: int) -> Any:
  """The first `m` rows of every array of a pytree, on the host."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[:m], tree)


def map_batches(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int) -> Any:
  """Applies `fn` to fixed-size batches of `arrays`; concatenates outputs on the host.

  Every call of `fn` sees `min(batch_size, n)` rows (the last batch padded with
  copies of its last row), so a jitted `fn` compiles once; the padding is
  dropped from the outputs, which may be any pytree of (batch, ...) arrays.
  No rows give outputs of no rows, shaped by one call on a one-row batch of
  zeros.
  """
  n = len(arrays[0])
  if n == 0:
    out = fn(*[np.zeros((1,) + np.shape(a)[1:], np.asarray(a).dtype) for a in arrays])
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[:0], out)
  size = min(int(batch_size), n)
  parts = []
  for start in range(0, n, size):
    batch = [pad_rows(a[start:start + size], size) for a in arrays]
    out = fn(*batch)
    parts.append(_first_rows(out, min(size, n - start)))
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)


def apply_batched(fn: Callable, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
  """A model applied to (n, ...) host data in fixed-size jitted batches.

  `fn` is any JAX callable of one batch (an NNX module or method, a
  `Partial`, a function); its arrays are passed to the compiled program as
  arguments, so models of one architecture share the compilation.
  """
  pure = as_pure_callable(fn)
  return map_batches(lambda part: _apply(pure, part), [np.asarray(x)], batch_size)


@jax.jit
def _apply(fn, x):
  return fn(x)
