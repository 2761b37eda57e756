"""Checkpoints of cfajax models: orbax weights plus the JSON that rebuilds the model.

A checkpoint is a folder:

    <path>/cfajax.json   {"format": "cfajax-model", "format_version": 2,
                          "kind": "vae" | "gan" | "classifier", "config": {...},
                          "metrics": ... (optional), "cfajax_version": ...,
                          "files": {"state/...": {"size", "sha256"}, ...},
                          "weights_sha256": ...}
    <path>/state/        the model's `nnx.Param` values, written by orbax

`load_model(path)` needs nothing but the path: it rebuilds the architecture
from the JSON config and restores the weights as host (numpy) arrays, so a
checkpoint written on a GPU or TPU restores on a CPU-only machine. It loads
nothing it cannot verify: every stored file must match the size and SHA-256
recorded when it was written, and the restored weights the digest of the
weights that were saved (`_hashing.digest_tree`). Saves are atomic: everything
is written to a temporary folder beside `path` that is renamed into place
only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from cfajax import _hashing
from cfajax._models import build_model
from cfajax._models import model_kind

FORMAT = "cfajax-model"
FORMAT_VERSION = 2  # 2 records checksums; 1 (no checksums) still loads, with a warning
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
  """Writes `model` (a `ConvVAE`, `ConvGAN` or `Classifier`) to the folder `path`.

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
          # model_kind took it: each of cfajax's models has a config.
          "config": model.config.to_dict(),  # pyright: ignore[reportAttributeAccessIssue]
          "metrics": metrics,
          "cfajax_version": _version()}
  json.dumps(meta, default=_json_default)  # fail before writing anything
  weights = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    checkpointer = ocp.PyTreeCheckpointer()
    try:
      checkpointer.save(tmp / STATE_DIR, args=ocp.args.PyTreeSave(_string_keys(weights)))
    finally:
      checkpointer.close()
    meta["files"] = {f"{STATE_DIR}/{name}": entry
                     for name, entry in _hashing.digest_folder(tmp / STATE_DIR).items()}
    meta["weights_sha256"] = _hashing.digest_tree(weights)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
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
  if meta.get("format_version") not in (1, FORMAT_VERSION):
    raise ValueError(f"{meta_path} has format_version {meta.get('format_version')}; this "
                     f"cfajax reads versions 1 and {FORMAT_VERSION}")
  required = ("kind", "config") + (("files", "weights_sha256")
                                   if meta["format_version"] >= 2 else ())
  for key in required:
    if key not in meta:
      raise ValueError(f"{meta_path} is corrupt: no {key!r} entry")
  return meta


def verify_files(path, meta: dict[str, Any]) -> None:
  """Checks every file of a checkpoint against the sizes and digests in its JSON.

  Raises:
    FileNotFoundError: a recorded file is missing.
    ValueError: a file differs from what was written, or a file is there
      that the checkpoint did not write.
  """
  path = Path(path)
  recorded = meta["files"]
  if not isinstance(recorded, dict):
    raise ValueError(f"{path / META_FILE} is corrupt: 'files' is not a mapping")
  present = {f"{STATE_DIR}/{name}" for name in _hashing.digest_folder_names(path / STATE_DIR)}
  unexpected = sorted(present - set(recorded))
  if unexpected:
    raise ValueError(f"{path} holds {unexpected[0]}, which this checkpoint did not write "
                     f"({len(unexpected)} such file(s)): it was changed after saving")
  for name, entry in sorted(recorded.items()):
    file = path / name
    if not file.is_file():
      raise FileNotFoundError(f"{path} is incomplete: {name} is missing")
    size, digest = file.stat().st_size, _hashing.digest_file(file)
    if size != entry.get("size") or digest != entry.get("sha256"):
      raise ValueError(
          f"{file} does not match the checksum recorded when the checkpoint was saved "
          f"({entry.get('size')} bytes, sha256 {str(entry.get('sha256'))[:12]}...; found "
          f"{size} bytes, sha256 {digest[:12]}...): the file is damaged or was changed")


def load_model(path) -> nnx.Module:
  """Rebuilds a `ConvVAE`, `ConvGAN` or `Classifier` from a checkpoint folder.

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
    # Shapes only: initialising weights that are then overwritten compiled
    # every initializer eagerly and took seconds, even for the digits models.
    model = nnx.eval_shape(lambda: build_model(meta["kind"], meta["config"]))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path / META_FILE}: cannot build a {meta['kind']!r} from its "
                     f"config: {e}") from e
  state = nnx.state(model, nnx.Param)
  template = nnx.to_pure_dict(state)
  state_dir = path / STATE_DIR
  if not state_dir.is_dir():
    raise FileNotFoundError(f"{path} is an incomplete checkpoint: {STATE_DIR}/ (the weights) "
                            "is missing")
  if meta["format_version"] >= 2:
    verify_files(path, meta)  # before orbax reads a byte
  else:
    warnings.warn(f"{path} was written before checkpoints carried checksums; its weights "
                  "cannot be verified (save it again to add them)", stacklevel=2)
  restore_args = jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _string_keys(template))
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    restored = checkpointer.restore(
        state_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:  # orbax raises many types for damaged files
    raise ValueError(f"cannot restore the weights in {state_dir} as the {meta['kind']!r} its "
                     f"{META_FILE} describes: the checkpoint is corrupt or incomplete, or its "
                     f"JSON is not its weights' ({type(e).__name__}: {e})") from e
  finally:
    checkpointer.close()
  weights = _original_keys(template, restored)
  if meta["format_version"] >= 2 and _hashing.digest_tree(weights) != meta["weights_sha256"]:
    raise ValueError(f"the weights restored from {state_dir} differ from those that were "
                     "saved (weights_sha256 does not match): the checkpoint is damaged")
  # A dict, as the template is.
  nnx.replace_by_pure_dict(state, weights)  # pyright: ignore[reportArgumentType]
  nnx.update(model, state)
  unrestored = [key for key, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
                if isinstance(leaf, jax.ShapeDtypeStruct)]
  if unrestored:  # a model with state other than its parameters
    raise ValueError(f"{path} restores only parameters; a {meta['kind']} also holds "
                     f"{jax.tree_util.keystr(unrestored[0])}")
  return model


def weights_digest(model) -> str:
  """SHA-256 of a model's weights: an nnx module's `nnx.Param`s, or any pytree's leaves.

  For a `ConvVAE` or `Classifier` it equals the `weights_sha256` its
  checkpoint records, whatever device holds the weights.
  """
  if isinstance(model, nnx.Module):
    return _hashing.digest_tree(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return _hashing.digest_tree(model)


def _json_default(value):
  if isinstance(value, (np.generic, jax.Array)) and np.ndim(value) == 0:
    return value.item()
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f"metrics must be JSON-serialisable; got {type(value).__name__}")


def _version() -> str:
  from cfajax import __version__
  return __version__
