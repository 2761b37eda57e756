"""PyTorch weight files read without PyTorch: a state dict as numpy arrays.

The standard weights of the field's metrics are published as `torch.save`d
state dicts (pytorch-fid's Inception, torchvision's AlexNet and VGG16, the
LPIPS linear layers), in either of torch's two formats: the zip archive of
torch >= 1.6 (`data.pkl` plus one file per storage) and the older stream of
pickles followed by the raw storages. `read_state_dict` reads both, and
safetensors and .npz files, into `{name: np.ndarray}`. The pickle is read by an
unpickler that builds only tensors, their storages and ordered dicts, so a
weight file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any
from typing import NamedTuple

import ml_dtypes
import numpy as np

from cfajax._diffusers import read_safetensors

_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
             "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
             "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
             "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageRef(NamedTuple):
  """A storage named in the pickle; its bytes are read once the pickle is."""
  key: str
  dtype: np.dtype
  numel: int


class _TensorRef(NamedTuple):
  """torch._utils._rebuild_tensor_v2's arguments: a strided view of a storage."""
  storage: _StorageRef
  offset: int
  size: tuple
  stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *_):
  return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
  return data


def _tensor(ref: _TensorRef, storage: np.ndarray, name: str) -> np.ndarray:
  size, stride, offset = ref.size, ref.stride, ref.offset
  if any(n == 0 for n in size):
    return np.zeros(size, storage.dtype)
  needed = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
  if needed > storage.size:
    raise ValueError(f"tensor {name} of shape {size} needs {needed} elements of a storage of "
                     f"{storage.size}: the file is damaged")
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], size, tuple(s * storage.itemsize for s in stride))
  return view.copy()


class _Unpickler(pickle.Unpickler):
  """Builds tensors, storages and ordered dicts, and refuses every other global."""

  def find_class(self, module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGES:
      return np.dtype(_STORAGES[name])
    raise pickle.UnpicklingError(f"a weight file may hold tensors only; it names {module}.{name}")

  def persistent_load(self, pid):
    # ("storage", storage type, key, location, numel[, view metadata])
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    return _StorageRef(str(pid[2]), pid[1], int(pid[4]))


def _checked_storage(path: Path, ref: _StorageRef, data: bytes) -> np.ndarray:
  if len(data) < ref.numel * ref.dtype.itemsize:
    raise ValueError(f"{path}: storage {ref.key} holds {len(data)} bytes; its {ref.numel} "
                     f"{ref.dtype} elements need {ref.numel * ref.dtype.itemsize}: the file "
                     "is truncated or damaged")
  return np.frombuffer(data, ref.dtype, ref.numel)


def _read_zip(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError(f"{path} is a zip file but not a torch.save archive (no data.pkl)")
    root = pickles[0][:-len("data.pkl")]
    order = archive.read(root + "byteorder").decode() if root + "byteorder" in names else "little"
    if order != "little":
      raise ValueError(f"{path} was saved on a {order}-endian machine; only little is read")
    state = _Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
    storages = {ref.key: _checked_storage(path, ref, archive.read(f"{root}data/{ref.key}"))
                for ref in _storage_refs(state)}
  return state, storages


def _read_legacy(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
  with open(path, "rb") as f:
    if _Unpickler(f).load() != _LEGACY_MAGIC:
      raise ValueError(f"{path} is neither a torch.save file nor safetensors nor .npz")
    _Unpickler(f).load()  # the protocol version
    _Unpickler(f).load()  # the saving machine's sys_info
    state = _Unpickler(f).load()
    refs = {ref.key: ref for ref in _storage_refs(state)}
    storages = {}
    for key in _Unpickler(f).load():  # the storages' keys, in the order their bytes follow
      ref = refs[str(key)]
      count = int(np.frombuffer(f.read(8).ljust(8, b"\0"), "<i8")[0])
      storages[ref.key] = _checked_storage(path, ref._replace(numel=max(count, ref.numel)),
                                           f.read(count * ref.dtype.itemsize))
  return state, storages


def _storage_refs(state) -> list[_StorageRef]:
  values = state.values() if isinstance(state, dict) else []
  return [v.storage for v in values if isinstance(v, _TensorRef)]


def read_state_dict(path) -> dict[str, np.ndarray]:
  """The arrays of a weight file, by name.

  Args:
    path: a `torch.save`d state dict (either format), a `.safetensors` file or a
      `.npz` file.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a file of none of those kinds, a damaged one, or one holding
      anything but a flat dict of tensors.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no weight file at {path}")
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  try:
    state, storages = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, IndexError) as e:
    raise ValueError(f"{path} is not a readable torch.save file of tensors: {e}") from e
  if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a flat state dict of tensors")
  return {str(k): _tensor(v, storages[v.storage.key], str(k)) for k, v in state.items()}
