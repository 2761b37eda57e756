"""Content digests: what a stored result was computed from, and whether a file changed.

A resumed chunk or a loaded checkpoint is trusted only when the digests it
carries match the inputs at hand; these functions compute them the same way
on every machine (SHA-256 over each array's dtype, shape and bytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

_READ_BLOCK = 1 << 20


def _update(hasher, array) -> None:
  array = np.ascontiguousarray(np.asarray(array))
  hasher.update(f"{array.dtype.str}{array.shape}".encode())
  hasher.update(array.tobytes())


def digest_arrays(*arrays) -> str:
  """SHA-256 (hex) of the arrays, in order, with their dtypes and shapes."""
  hasher = hashlib.sha256()
  for array in arrays:
    _update(hasher, array)
  return hasher.hexdigest()


def digest_tree(tree) -> str:
  """SHA-256 (hex) of a pytree's array leaves with their paths, in path order.

  Equal for the same values whatever device holds them, so a model's weights
  digest is the same before saving and after loading on another machine.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  named = sorted((jax.tree_util.keystr(path), leaf) for path, leaf in leaves)
  hasher = hashlib.sha256()
  for name, leaf in named:
    hasher.update(name.encode())
    _update(hasher, jax.device_get(leaf))
  return hasher.hexdigest()


def digest_json(value: Any) -> str:
  """SHA-256 (hex) of a JSON-serialisable value, keys sorted."""
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def digest_file(path) -> str:
  """SHA-256 (hex) of a file's bytes."""
  hasher = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_READ_BLOCK), b""):
      hasher.update(block)
  return hasher.hexdigest()


def digest_folder_names(folder) -> list[str]:
  """The relative (posix) paths of every file under `folder`, sorted."""
  folder = Path(folder)
  return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                if path.is_file())


def digest_folder(folder) -> dict[str, dict[str, Any]]:
  """`{relative path: {"size", "sha256"}}` for every file under `folder`."""
  folder = Path(folder)
  return {name: {"size": (folder / name).stat().st_size, "sha256": digest_file(folder / name)}
          for name in digest_folder_names(folder)}
