"""The output folder of a resumable explanation: atomic files, one writer, verified chunks.

It is also the resumable chunk store: `attack_in_chunks` attacks a run's
latents chunk by chunk and reuses every saved chunk that verifies.

    <out>/.lock            held (flock) by the process writing the folder
    <out>/run.json         the options this folder's results belong to, and
                           digests of the models and examples they came from
    <out>/chunks/attack-00000.npz ...
                           finished attack chunks, each carrying the digests
                           of everything it was computed from

Every file is written to `<name>.tmp-<pid>` and renamed into place, so a
killed run leaves whole files or none. A chunk is reused only when its row
range, the digest of its input latents and targets, of the attack options and
of both models' weights all match the run at hand, and its outputs match the
digest it was saved with; anything else is recomputed. Nothing in the folder
is trusted because of its name alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path
from typing import Any
from typing import NamedTuple

import jax
import numpy as np

from cfajax import _hashing

RUN_FILE = "run.json"
RUN_FORMAT = 2
LOCK_FILE = ".lock"
CHUNK_DIR = "chunks"
CHUNK_FIELDS = ("z_cf", "steps", "status", "initial_prob", "final_prob")
RESULT_FILES = ("examples.npz", "summary.json", "counterfactuals.png",
                "global_attributions.png")


# -- atomic files --------------------------------------------------------------


def atomic_write(path, write) -> None:
  """Calls `write(tmp_path)`, then renames into place: no half-written files."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_npz(path, **arrays) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  atomic_write(path, write)


def save_json(path, value) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(value, f, indent=2, sort_keys=False)
      f.write("\n")
  atomic_write(path, write)


def load_npz(path) -> dict[str, np.ndarray] | None:
  """Reads an .npz whole; a missing or unreadable file gives None."""
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
    return None


# -- one writer at a time ------------------------------------------------------


class FolderLock:
  """An exclusive lock on an output folder, released when its holder exits or dies.

  Uses `flock` on `<out>/.lock`: the kernel drops it when the process ends,
  even by SIGKILL, so a killed run never leaves the folder locked.
  """

  def __init__(self, folder):
    self.path = os.path.join(folder, LOCK_FILE)
    self.file = None

  def __enter__(self):
    import fcntl
    self.file = open(self.path, "a+")
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self.file.seek(0)
      holder = self.file.read().strip() or "another process"
      self.file.close()
      raise RuntimeError(
          f"{os.path.dirname(self.path)} is being written by another cfajax explain "
          f"({holder}); wait for it to finish, or use another output folder") from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    self.file.flush()
    return self

  def __exit__(self, *exc):
    # Releases the lock; the file stays, so no one races to recreate it.
    self.file.close()  # pyright: ignore[reportOptionalMemberAccess]  (__enter__ opened it)


# -- run.json ------------------------------------------------------------------


def read_run(folder) -> dict[str, Any] | None:
  """The folder's run record, or None if there is none.

  Raises:
    ValueError: run.json exists but is unreadable; the message names it and
      the ways on.
  """
  path = os.path.join(folder, RUN_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
      raise ValueError("no 'config' entry")
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ValueError(
        f"{path} is unreadable ({type(e).__name__}: {e}); it records which options this "
        "folder's results belong to. Restart the run (restart=True, or --restart) to "
        "discard them, or use another output folder") from e
  return record


def option_changes(old: dict[str, Any], new: dict[str, Any], names) -> list[str]:
  """`name: old -> new` for each option in `names` whose value differs."""
  normal = lambda v: list(v) if isinstance(v, tuple) else v
  return [f"{name}: {old.get(name)!r} -> {normal(new.get(name))!r}" for name in names
          if normal(old.get(name)) != normal(new.get(name))]


def write_run(folder, record: dict[str, Any]) -> None:
  save_json(os.path.join(folder, RUN_FILE), {"format": RUN_FORMAT, **record})


def clear(folder, *, models: bool) -> None:
  """Removes a run's results and chunks (and its own models when `models`)."""
  for name in (RUN_FILE, *RESULT_FILES):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      os.remove(path)
  shutil.rmtree(os.path.join(folder, CHUNK_DIR), ignore_errors=True)
  if models:
    shutil.rmtree(os.path.join(folder, "models"), ignore_errors=True)


def remove_leftovers(folder, num_chunks: int) -> list[str]:
  """Deletes what killed writes left behind, and chunks outside the current layout.

  Only to be called by the folder's sole writer once every process is done.

  Returns:
    The paths removed, relative to `folder`.
  """
  folder = Path(folder)
  removed = []
  for path in [*folder.glob("*.tmp-*"), *folder.glob(f"{CHUNK_DIR}/*.tmp-*"),
               *folder.glob("models/.*.tmp-*"), *folder.glob("models/.*.old-*")]:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    removed.append(path.relative_to(folder).as_posix())
  for path in folder.glob(f"{CHUNK_DIR}/attack-*.npz"):
    number = path.stem.removeprefix("attack-")
    if not number.isdigit() or int(number) >= num_chunks:
      path.unlink()
      removed.append(path.relative_to(folder).as_posix())
  return sorted(removed)


# -- chunks --------------------------------------------------------------------


class ChunkKey(NamedTuple):
  """What one chunk's results depend on.

  Attributes:
    start, stop: its rows of the run's examples.
    rows: digest of its starting latents and targets.
    attack: digest of the attack options that change results.
    models: digest of the generator's and the classifier's weights.
  """

  start: int
  stop: int
  rows: str
  attack: str
  models: str


def chunk_path(folder, k: int) -> str:
  return os.path.join(folder, CHUNK_DIR, f"attack-{k:05d}.npz")


def save_chunk(path, key: ChunkKey, outputs: dict[str, np.ndarray]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_npz(path, start=np.int64(key.start), stop=np.int64(key.stop), rows=np.array(key.rows),
           attack=np.array(key.attack), models=np.array(key.models),
           outputs=np.array(_outputs_digest(outputs)), **outputs)


def load_chunk(path, key: ChunkKey) -> tuple[dict[str, np.ndarray] | None, str | None]:
  """A saved chunk's outputs if it is exactly the chunk `key` describes.

  Returns:
    `(outputs, None)` for a chunk to reuse; `(None, reason)` otherwise, the
    reason None when there is no file.
  """
  if not os.path.exists(path):
    return None, None
  saved = load_npz(path)
  if saved is None or not set(CHUNK_FIELDS) <= set(saved) or "outputs" not in saved:
    return None, "damaged or unreadable"
  outputs = {name: saved[name] for name in CHUNK_FIELDS}
  if str(saved["outputs"]) != _outputs_digest(outputs):
    return None, "damaged (outputs do not match their digest)"
  if (int(saved.get("start", -1)), int(saved.get("stop", -1))) != (key.start, key.stop):
    return None, "for other rows"
  for field, reason in (("rows", "from other latents or targets"),
                        ("models", "with other model weights"),
                        ("attack", "with other attack options")):
    if str(saved.get(field)) != getattr(key, field):
      return None, reason
  return outputs, None


def _outputs_digest(outputs: dict[str, np.ndarray]) -> str:
  return _hashing.digest_arrays(*(outputs[name] for name in CHUNK_FIELDS))


def chunk_size_for(n: int, chunk_size: int) -> int:
  """`chunk_size`, or for 0 a tenth of the n examples, clipped to [256, 8192]."""
  if chunk_size:
    return int(chunk_size)
  return int(min(max(-(-n // 10), 256), 8192))


def attack_in_chunks(folder, attack, z, target, *, chunk_size: int, attack_digest: str,
                     models_digest: str, progress=None, log=print):
  """Runs `attack(z, target)` chunk by chunk, reusing the verified chunks in `folder`.

  Across processes (`jax.distributed`), process p computes chunks
  p, p + P, p + 2P, ...; the rows are then gathered on every process.

  Args:
    attack: `(z_rows, target_rows, progress) -> AttackResult`.
    z, target: (n, d) starting latents and (n,) targets.
    attack_digest, models_digest: digests of what else the results depend on.

  Returns:
    `(rows, resumed)`: {field: (n, ...) array} for `CHUNK_FIELDS`, and how
    many rows came from saved chunks.
  """
  n = len(z)
  process, processes = jax.process_index(), jax.process_count()
  rows = {"z_cf": np.zeros_like(z), "steps": np.zeros(n, np.int32),
          "status": np.zeros(n, np.int32), "initial_prob": np.zeros(n, np.float32),
          "final_prob": np.zeros(n, np.float32)}
  mine = np.zeros(n, bool)
  resumed, recomputed = 0, {}
  for k, start in enumerate(range(0, n, chunk_size)):
    if k % processes != process:
      continue
    stop = min(start + chunk_size, n)
    mine[start:stop] = True
    key = ChunkKey(start, stop, _hashing.digest_arrays(z[start:stop], target[start:stop]),
                   attack_digest, models_digest)
    path = chunk_path(folder, k)
    saved, reason = load_chunk(path, key)
    if saved is not None:
      for name in CHUNK_FIELDS:
        rows[name][start:stop] = saved[name]
      resumed += stop - start
      if progress is not None:
        progress.update(stop - start)
      continue
    if reason is not None:
      recomputed[reason] = recomputed.get(reason, 0) + 1
    result = attack(z[start:stop], target[start:stop], progress)
    chunk = {"z_cf": np.asarray(result.z), "steps": np.asarray(result.steps),
             "status": np.asarray(result.status),
             "initial_prob": np.asarray(result.initial_prob),
             "final_prob": np.asarray(result.final_prob)}
    save_chunk(path, key, chunk)
    for name in CHUNK_FIELDS:
      rows[name][start:stop] = chunk[name]
  if recomputed:
    log("recomputed saved chunks that no longer fit this run: " + ", ".join(
        f"{count} {reason}" for reason, count in sorted(recomputed.items())))
  if processes > 1:
    rows = _gather_rows(rows, mine)
  return rows, resumed


def _gather_rows(rows: dict[str, np.ndarray], mine: np.ndarray) -> dict[str, np.ndarray]:
  """Combines each process's rows (zero elsewhere) into full arrays on every process."""
  from jax.experimental import multihost_utils
  out = {}
  for name, value in rows.items():
    masked = np.where(mine.reshape((-1,) + (1,) * (value.ndim - 1)), value, 0)
    gathered = np.asarray(multihost_utils.process_allgather(masked))
    out[name] = gathered.sum(axis=0).astype(value.dtype)
  return out
