"""MNIST from its four IDX files (raw or .gz), or through tensorflow-datasets."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from cfajax._data._dataset import ImageDataset
from cfajax._data._files import DATA_DIR_ENV
from cfajax._data._files import _dataset_dir
from cfajax._data._files import _find_file
from cfajax._data._files import _read_bytes
from cfajax._data._tfds import _import_tfds
from cfajax._data._tfds import _remove_partial_downloads
from cfajax._data._tfds import _require_network

IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions (n, rows, cols)
IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension (n,)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path, expected_magic: int | None = None) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (raw or .gz) into a uint8 array.

  The IDX header is big-endian: a magic number `0x0000 0x08 ndim` (2051 for
  MNIST images, 2049 for labels), then `ndim` uint32 sizes, then the data.

  Raises:
    ValueError: on a wrong magic number or a data length that does not match
      the header.
  """
  path = Path(path)
  raw = _read_bytes(path)
  if len(raw) < 4:
    raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header")
  (magic,) = struct.unpack(">I", raw[:4])
  if expected_magic is not None and magic != expected_magic:
    raise ValueError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
  if magic >> 8 != 0x08:
    raise ValueError(f"{path}: IDX magic number {magic} is not unsigned-byte data (0x08nn)")
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  # Python's integers, not NumPy's: sizes near 2**32 overflow int64 in np.prod,
  # and a product that wraps to the data's length would pass the check below.
  size = math.prod(shape)
  if len(raw) - header != size:
    raise ValueError(
        f"{path}: header gives shape {shape} ({size} bytes of data) but the file holds "
        f"{len(raw) - header}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _mnist_files_present(folder: Path) -> bool:
  return any((folder / (n + ext)).is_file() for n in MNIST_FILES["train"] + MNIST_FILES["test"]
             for ext in ("", ".gz"))


def _mnist_from_idx(image_path: Path, label_path: Path, name: str) -> ImageDataset:
  images = read_idx(image_path, IDX_IMAGES_MAGIC)
  labels = read_idx(label_path, IDX_LABELS_MAGIC)
  if len(images) != len(labels):
    raise ValueError(
        f"{image_path.name} holds {len(images)} images but {label_path.name} holds "
        f"{len(labels)} labels; expected the same count")
  return ImageDataset(
      images=(images[..., None].astype(np.float32) / 255.0),
      labels=labels.astype(np.int32),
      ids=np.arange(len(images), dtype=np.int64),
      name=name)


def load_mnist(data_dir=None, split: str = "train") -> ImageDataset:
  """MNIST as (n, 28, 28, 1) float32 in [0, 1] (bytes / 255), labels 0..9.

  Args:
    data_dir: a folder with the four official IDX files
      (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
      `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or .gz),
      or a folder holding them in `mnist/`. Default: `$CFAJAX_DATA_DIR/mnist`,
      else tensorflow-datasets.
    split: "train" (60,000) or "test" (10,000).

  Without a folder the same four files are fetched by tensorflow-datasets'
  download manager, with the URLs of its `mnist` builder, and read by the same
  IDX reader, so both sources give identical arrays in the official order.
  (tfds' prepared `mnist` records are stored in a hashed, shuffled order and
  their preparation needs TensorFlow; the raw files need neither.) Needs the
  `tensorflow-datasets` package and network access the first time.

  Raises:
    FileNotFoundError: a named folder or one of the split's files is missing.
    ValueError: an IDX file has the wrong magic number or size, or the image
      and label counts differ.
  """
  if split not in MNIST_FILES:
    raise ValueError(f"split must be one of {sorted(MNIST_FILES)}; got {split!r}")
  folder = _dataset_dir(data_dir, "mnist", _mnist_files_present)
  image_name, label_name = MNIST_FILES[split]
  if folder is None:
    image_path, label_path = _download_mnist_with_tfds(image_name, label_name)
  else:
    image_path = _find_file(folder, [image_name, image_name.replace("-idx", ".idx")],
                            f"MNIST {split} images")
    label_path = _find_file(folder, [label_name, label_name.replace("-idx", ".idx")],
                            f"MNIST {split} labels")
  return _mnist_from_idx(image_path, label_path, f"mnist/{split}")


def _download_mnist_with_tfds(*names: str) -> list[Path]:
  hint = (f"pass data_dir= (or --data-dir) pointing at a folder with the four MNIST IDX "
          f"files, or set ${DATA_DIR_ENV}")
  tfds = _import_tfds(hint)
  failed = lambda e: RuntimeError(f"could not get MNIST through tensorflow-datasets ({e}); "
                                  f"{hint}")
  try:
    builder = tfds.builder("mnist")
  except Exception as e:  # tfds failures all end the same way
    raise failed(e) from e
  folder = Path(builder.data_dir_root) / "downloads"
  before = {e.name for e in folder.iterdir()} if folder.is_dir() else set()
  if not all(any(n in name for name in before) for n in names):
    _require_network("MNIST", hint)
  try:
    try:
      url_infos = builder.url_infos  # registered checksums, where readable
    except Exception:  # optional: some installs cannot read the checksum file
      url_infos = None
    manager = tfds.download.DownloadManager(download_dir=folder, url_infos=url_infos,
                                            dataset_name="mnist")
    paths = manager.download({n: builder.URL + n + ".gz" for n in names})
  except Exception as e:  # network or tfds failures all end the same way
    _remove_partial_downloads(folder, before)
    raise failed(e) from e
  return [Path(os.fspath(paths[n])) for n in names]
