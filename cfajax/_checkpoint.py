"""Checkpoints of cfajax models: orbax weights plus the JSON that rebuilds the model.

A checkpoint is a folder:

    <path>/cfajax.json   {"format": "cfajax-model", "format_version": 1,
                          "kind": "vae" | "classifier", "config": {...},
                          "metrics": ... (optional), "cfajax_version": ...}
    <path>/state/        the model's `nnx.Param` values, written by orbax

`load_model(path)` needs nothing but the path: it rebuilds the architecture
from the JSON config and restores the weights as host (numpy) arrays, so a
checkpoint written on a GPU or TPU restores on a CPU-only machine. Saves are
atomic: everything is written to a temporary folder beside `path` that is
renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from cfajax._models import build_model
from cfajax._models import model_kind

FORMAT = "cfajax-model"
FORMAT_VERSION = 1
META_FILE = "cfajax.json"
STATE_DIR = "state"


def _string_keys(tree):
  """Orbax stores dict keys as strings; nnx lists index children by int."""
  if isinstance(tree, dict):
    return {str(k): _string_keys(v) for k, v in tree.items()}
  return tree


def _original_keys(template, restored, where: str = ""):
  """`restored` with the keys (and nesting) of `template`; checks shapes and dtypes."""
  if isinstance(template, dict):
    if not isinstance(restored, dict):
      raise ValueError(f"checkpoint has a leaf at {where or '/'} where the model has a subtree")
    extra = set(restored) - {str(k) for k in template}
    missing = [str(k) for k in template if str(k) not in restored]
    if missing or extra:
      raise ValueError(f"checkpoint weights do not match the model at {where or '/'}: "
                       f"missing {sorted(missing)}, unexpected {sorted(extra)}")
    return {k: _original_keys(v, restored[str(k)], f"{where}/{k}") for k, v in template.items()}
  array = np.asarray(restored)
  if array.shape != template.shape or array.dtype != template.dtype:
    raise ValueError(f"checkpoint weight {where} is {array.dtype}{list(array.shape)}; "
                     f"the model expects {template.dtype}{list(template.shape)}")
  return jax.numpy.asarray(array)


def save_model(path, model: nnx.Module, *, metrics: Any = None) -> Path:
  """Writes `model` (a `ConvVAE` or `Classifier`) to the folder `path`.

  An existing checkpoint at `path` is replaced. The new one is complete before
  it takes the name: an interrupted save leaves the old checkpoint (or none)
  under `path`, never a partial one.

  Args:
    path: the checkpoint folder.
    model: the model; its config goes to the JSON, its `nnx.Param`s to orbax.
    metrics: optional JSON-serialisable training record (e.g. the history
      returned by `train_vae`).

  Returns:
    The checkpoint folder as a `Path`.
  """
  import orbax.checkpoint as ocp

  path = Path(path).absolute()
  kind = model_kind(model)
  meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
          "config": model.config.to_dict(), "metrics": metrics,
          "cfajax_version": _version()}
  text = json.dumps(meta, indent=2, default=_json_default)  # fail before writing anything
  weights = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    checkpointer = ocp.PyTreeCheckpointer()
    try:
      checkpointer.save(tmp / STATE_DIR, args=ocp.args.PyTreeSave(_string_keys(weights)))
    finally:
      checkpointer.close()
    (tmp / META_FILE).write_text(text)
    _replace_dir(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def _replace_dir(new: Path, path: Path):
  """Renames `new` to `path`, moving an existing `path` aside first."""
  if not path.exists():
    os.rename(new, path)
    return
  if not path.is_dir():
    raise FileExistsError(f"{path} exists and is not a checkpoint folder")
  old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
  os.rename(path, old / "previous")
  try:
    os.rename(new, path)
  except BaseException:
    os.rename(old / "previous", path)  # put the old checkpoint back
    raise
  finally:
    shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_info(path) -> dict[str, Any]:
  """The JSON of a checkpoint: kind, config, metrics and versions.

  Raises:
    FileNotFoundError: `path` or its `cfajax.json` does not exist.
    ValueError: the JSON is unreadable or not a cfajax model checkpoint.
  """
  path = Path(path)
  if not path.is_dir():
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a folder holding {META_FILE} and {STATE_DIR}/ "
        "written by cfajax.save_model")
  meta_path = path / META_FILE
  if not meta_path.is_file():
    raise FileNotFoundError(
        f"{path} is not a cfajax checkpoint: {META_FILE} is missing (found "
        f"{sorted(p.name for p in path.iterdir()) or 'an empty folder'})")
  try:
    meta = json.loads(meta_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{meta_path} is corrupt: not valid JSON ({e})") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{meta_path} is not a cfajax model checkpoint (expected "
                     f"\"format\": \"{FORMAT}\")")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{meta_path} has format_version {meta.get('format_version')}; this "
                     f"cfajax reads version {FORMAT_VERSION}")
  for key in ("kind", "config"):
    if key not in meta:
      raise ValueError(f"{meta_path} is corrupt: no {key!r} entry")
  return meta


def load_model(path) -> nnx.Module:
  """Rebuilds a `ConvVAE` or `Classifier` from a checkpoint folder.

  The weights are restored as host arrays whatever device wrote them and
  then placed on JAX's default device.

  Raises:
    FileNotFoundError: the folder, its JSON or its weights are missing.
    ValueError: the JSON or the weights are corrupt or do not match the
      architecture the config describes.
  """
  import orbax.checkpoint as ocp

  path = Path(path).absolute()  # orbax restores from absolute paths only
  meta = read_checkpoint_info(path)
  try:
    model = build_model(meta["kind"], meta["config"])
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path / META_FILE}: cannot build a {meta['kind']!r} from its "
                     f"config: {e}") from e
  state = nnx.state(model, nnx.Param)
  template = nnx.to_pure_dict(state)
  state_dir = path / STATE_DIR
  if not state_dir.is_dir():
    raise FileNotFoundError(f"{path} is an incomplete checkpoint: {STATE_DIR}/ (the weights) "
                            "is missing")
  restore_args = jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _string_keys(template))
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    restored = checkpointer.restore(
        state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # orbax raises many types for damaged files
    raise ValueError(f"cannot restore the weights in {state_dir}: the checkpoint is corrupt "
                     f"or incomplete ({type(e).__name__}: {e})") from e
  finally:
    checkpointer.close()
  weights = _original_keys(template, restored)
  nnx.replace_by_pure_dict(state, weights)
  nnx.update(model, state)
  return model


def _json_default(value):
  if isinstance(value, (np.generic, jax.Array)) and np.ndim(value) == 0:
    return value.item()
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f"metrics must be JSON-serialisable; got {type(value).__name__}")


def _version() -> str:
  from cfajax import __version__
  return __version__
