"""tensorflow-datasets, when no folder is given: imported only then, and failing fast, with the
way out, when a download cannot reach its server."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

# Where tensorflow-datasets downloads from; one connection attempt to it tells,
# in seconds, whether a download can work (tfds itself retries for minutes).
NETWORK_PROBE = ("storage.googleapis.com", 443)
NETWORK_TIMEOUT_S = 3.0


def _import_tfds(hint: str):
  try:
    import tensorflow_datasets as tfds  # pyright: ignore[reportMissingImports]  (optional)
  except ImportError as e:
    raise RuntimeError("tensorflow-datasets is not installed (it is optional: pip install "
                       f"'cfajax[tfds]'); or {hint}") from e
  return tfds


def _require_network(what: str, hint: str) -> None:
  """Fails fast, naming the way out, when a download cannot reach its server."""
  try:
    socket.create_connection(NETWORK_PROBE, timeout=NETWORK_TIMEOUT_S).close()
  except OSError as e:
    raise RuntimeError(f"{what} must be downloaded, and {NETWORK_PROBE[0]} cannot be reached "
                       f"({e}); {hint}") from e


def _remove_partial_downloads(folder: Path, before: set[str]) -> None:
  """Removes the temporary files a failed tfds download left in `folder`."""
  if not folder.is_dir():
    return
  for entry in folder.iterdir():
    if entry.name in before or ".tmp" not in entry.name:
      continue
    if entry.is_dir():
      shutil.rmtree(entry, ignore_errors=True)
    else:
      entry.unlink(missing_ok=True)


def _tfds_source(name: str, split: str, hint: str):
  """`tfds.data_source(name, split)`; fails fast offline when it would download."""
  tfds = _import_tfds(hint)
  failed = lambda e: RuntimeError(f"could not read {name}/{split} through tensorflow-datasets "
                                  f"({e}); {hint}")
  try:
    prepared = tfds.builder(name).is_prepared()
  except Exception as e:  # unknown dataset, unreadable metadata
    raise failed(e) from e
  if not prepared:
    _require_network(f"{name} is not prepared here: it", hint)
  try:
    return tfds.data_source(name, split=split)
  except Exception as e:  # download or preparation failures
    raise failed(e) from e
