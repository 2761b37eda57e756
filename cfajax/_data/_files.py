"""Where a dataset's files are, and reading them (plain or gzipped): the data folder, its
environment variable and the cache folder."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

DATA_DIR_ENV = "CFAJAX_DATA_DIR"
CACHE_DIR_ENV = "CFAJAX_CACHE_DIR"


def _dataset_dir(data_dir, subdir: str, looks_right) -> Path | None:
  """Resolves the folder of one dataset, or None to fall back to tfds.

  Raises:
    FileNotFoundError: if a folder was named (argument or environment) that
      does not exist.
  """
  if data_dir is None:
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
      return None
    source = f"${DATA_DIR_ENV}={root}"
    candidates = [Path(root) / subdir]
  else:
    root = data_dir
    source = f"data_dir={str(data_dir)!r}"
    candidates = [Path(root), Path(root) / subdir]
  if not Path(root).is_dir():
    raise FileNotFoundError(f"{source}: no such folder")
  for folder in candidates:
    if folder.is_dir() and looks_right(folder):
      return folder
  return candidates[-1] if candidates[-1].is_dir() else candidates[0]


def _find_file(folder: Path, names: Sequence[str], what: str) -> Path:
  """The first of `names` (each also tried with .gz) present in `folder`."""
  for name in names:
    for candidate in (folder / name, folder / (name + ".gz")):
      if candidate.is_file():
        return candidate
  tried = ", ".join(f"{n}[.gz]" for n in names)
  present = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
  raise FileNotFoundError(
      f"{what}: expected one of {tried} in {folder}; found {present or 'nothing'}")


def _read_bytes(path: Path) -> bytes:
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise ValueError(f"{path}: cannot read ({e})") from e


def _read_text(path: Path) -> list[str]:
  try:
    return _read_bytes(path).decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a text file ({e})") from e


def default_cache_dir() -> Path:
  """`$CFAJAX_CACHE_DIR`, else `~/.cache/cfajax`."""
  return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cfajax")
