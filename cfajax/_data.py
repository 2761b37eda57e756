"""Image datasets as host arrays: MNIST, CelebA and scikit-learn's digits.

Every loader returns an `ImageDataset` of float32 NHWC images in [0, 1]. The
data are read from local files in each dataset's standard layout, or, where no
folder is given, through tensorflow-datasets (imported only then).

Where the files are looked for, in order:
  1. the `data_dir` argument (the dataset's folder itself, or a folder holding
     it as `mnist/` or `celeba/`);
  2. `$CFAJAX_DATA_DIR/mnist` and `$CFAJAX_DATA_DIR/celeba`;
  3. tensorflow-datasets, which downloads (network needed the first time).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfajax._progress import tracked

logger = logging.getLogger("cfajax.data")

DATA_DIR_ENV = "CFAJAX_DATA_DIR"
CACHE_DIR_ENV = "CFAJAX_CACHE_DIR"

IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions (n, rows, cols)
IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension (n,)

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}
CELEBA_ATTR_FILE = "list_attr_celeba.txt"
# The 40 attributes of `list_attr_celeba.txt`, in its column order.
CELEBA_ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
# Side of the central square kept from an aligned CelebA face, as a fraction of
# the image width: 148 of 178 pixels at full size (74 of 89 at half size), the
# crop most CelebA VAEs use. It keeps the face and drops most background.
CELEBA_CROP_FRACTION = 148 / 178
_CELEBA_NAME = re.compile(r"^(\d{6})\.(jpg|jpeg|png)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Images with their labels and named binary attributes, on the host.

  Attributes:
    images: (n, H, W, C) float32 in [0, 1].
    labels: (n,) int32 class labels, or None where the dataset has none
      (CelebA).
    attributes: (n, A) uint8 in {0, 1}, or None.
    attribute_names: the A attribute names, in column order.
    ids: (n,) int64 position of each example in its source: the row of the
      IDX file (MNIST), the number in the file name (CelebA: 1 for
      000001.jpg), the index in scikit-learn's array (digits); or None.
    name: a short description, e.g. "mnist/train".
    files: (n,) str file name of each image, relative to its folder, for
      images read from files (`load_image_folder`); or None.
  """

  images: np.ndarray
  labels: np.ndarray | None = None
  attributes: np.ndarray | None = None
  attribute_names: tuple[str, ...] = ()
  ids: np.ndarray | None = None
  name: str = ""
  files: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.images)
    if self.images.ndim != 4:
      raise ValueError(f"images must be (n, H, W, C); got shape {self.images.shape}")
    for field in ("labels", "attributes", "ids", "files"):
      value = getattr(self, field)
      if value is not None and len(value) != n:
        raise ValueError(f"{field} has {len(value)} rows but there are {n} images")
    if self.attributes is not None and self.attributes.shape[1:] != (len(self.attribute_names),):
      raise ValueError(
          f"attributes have shape {self.attributes.shape} but {len(self.attribute_names)} "
          "attribute_names were given")

  def __len__(self) -> int:
    return len(self.images)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def subset(self, indices, name: str | None = None) -> ImageDataset:
    """The examples at `indices` (an index array, a boolean mask or a slice)."""
    take = lambda a: None if a is None else a[indices]
    return dataclasses.replace(
        self, images=self.images[indices], labels=take(self.labels),
        attributes=take(self.attributes), ids=take(self.ids), files=take(self.files),
        name=self.name if name is None else name)

  def with_images(self, images, name: str | None = None) -> ImageDataset:
    """The same examples with other images (e.g. reconstructions), labels kept."""
    return dataclasses.replace(self, images=np.asarray(images, np.float32),
                               name=self.name if name is None else name)

  def attribute(self, name: str) -> np.ndarray:
    """The (n,) column of one attribute."""
    # attribute_index raises KeyError where there are no attributes.
    return self.attributes[:, self.attribute_index(name)]  # pyright: ignore[reportOptionalSubscript]

  def attribute_index(self, name: str) -> int:
    if self.attributes is None or name not in self.attribute_names:
      raise KeyError(f"{self.name or 'dataset'} has no attribute {name!r}; it has "
                     f"{list(self.attribute_names) or 'none'}")
    return self.attribute_names.index(name)


def split_dataset(
    dataset: ImageDataset, num_test: int | float, *, seed: int | None = 0,
) -> tuple[ImageDataset, ImageDataset]:
  """Splits a dataset into (train, test), deterministically.

  Args:
    dataset: the examples to split.
    num_test: the number of test examples, or a fraction of the dataset in
      (0, 1).
    seed: the examples are shuffled by `np.random.default_rng(seed)` before
      the last `num_test` are taken as the test set; `None` keeps the order,
      so the test set is the last `num_test` examples.

  Returns:
    `(train, test)`, disjoint, together the whole dataset.
  """
  n = len(dataset)
  if isinstance(num_test, float) and 0 < num_test < 1:
    num_test = int(round(num_test * n))
  if int(num_test) != num_test or not 0 < num_test < n:
    raise ValueError(f"num_test must be in (0, {n}) or a fraction in (0, 1); got {num_test}")
  order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
  cut = n - int(num_test)
  base = dataset.name or "dataset"
  return (dataset.subset(np.sort(order[:cut]), f"{base}[train {cut}]"),
          dataset.subset(np.sort(order[cut:]), f"{base}[test {n - cut}]"))


# -- scikit-learn digits ------------------------------------------------------


def load_digits() -> ImageDataset:
  """The 1,797 8x8 digits shipped with scikit-learn, as (n, 8, 8, 1) in [0, 1].

  No download: the quick-start and test dataset. Pixel values 0..16 are
  divided by 16. Split with `split_dataset(load_digits(), 0.2)`.
  """
  from sklearn.datasets import load_digits as sklearn_digits
  digits = sklearn_digits()
  # scikit-learn's annotations allow a tuple (return_X_y=True); this is a Bunch.
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # pyright: ignore[reportAttributeAccessIssue]
  return ImageDataset(images, digits.target.astype(np.int32),  # pyright: ignore[reportAttributeAccessIssue]
                      ids=np.arange(len(images), dtype=np.int64), name="digits")


# -- data folder resolution ---------------------------------------------------


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


# -- MNIST --------------------------------------------------------------------


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


# -- CelebA -------------------------------------------------------------------


def _celeba_images_in(folder: Path) -> dict[int, Path]:
  found = {}
  for entry in os.scandir(folder):
    match = _CELEBA_NAME.match(entry.name)
    if match and entry.is_file():
      found[int(match.group(1))] = Path(entry.path)
  return found


def _celeba_image_dir(folder: Path) -> Path:
  """`img_align_celeba/`, else the subfolder (or folder) with most CelebA-named images."""
  preferred = folder / "img_align_celeba"
  if preferred.is_dir() and _celeba_images_in(preferred):
    return preferred
  candidates = [p for p in sorted(folder.iterdir()) if p.is_dir()] + [folder]
  counts = {p: len(_celeba_images_in(p)) for p in candidates}
  best = max(candidates, key=lambda p: counts[p])
  if counts[best] == 0:
    raise FileNotFoundError(
        f"no CelebA images (files named like 000001.jpg) in {folder} or its subfolders; "
        "expected the standard layout img_align_celeba/000001.jpg ...")
  return best


def _read_text(path: Path) -> list[str]:
  try:
    return _read_bytes(path).decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a text file ({e})") from e


def read_celeba_attributes(path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Parses `list_attr_celeba.txt` (plain or .gz).

  Returns:
    `(numbers, attributes, names)`: (m,) int64 image numbers (1 for
    000001.jpg), (m, A) uint8 attributes with +1 -> 1 and -1 -> 0, and the
    A attribute names.
  """
  path = Path(path)
  lines = _read_text(path)
  if len(lines) < 3:
    raise ValueError(f"{path}: expected a count line, a line of attribute names and rows")
  names = tuple(lines[1].split())
  # One vectorised parse: 202,599 rows x 41 tokens is too many for a Python loop.
  tokens = np.array(" ".join(lines[2:]).split())
  width = len(names) + 1
  if not names or tokens.size % width:
    bad = next(i for i, line in enumerate(lines[2:]) if len(line.split()) not in (0, width))
    raise ValueError(f"{path}: line {bad + 3} has {len(lines[bad + 2].split()) - 1} values; "
                     f"expected {len(names)}")
  table = tokens.reshape(-1, width)
  values = table[:, 1:]
  positive, negative = values == "1", values == "-1"
  if not np.all(positive | negative):
    row = int(np.flatnonzero(~np.all(positive | negative, axis=1))[0])
    raise ValueError(f"{path}: line {row + 3}: attribute values must be +1 or -1")
  numbers = _celeba_numbers(table[:, 0], path)
  _check_unique(numbers, path)
  return numbers, positive.astype(np.uint8), names


def read_celeba_partition(path) -> tuple[np.ndarray, np.ndarray]:
  """Parses `list_eval_partition.txt` (plain or .gz).

  Returns:
    `(numbers, partition)`: (m,) int64 image numbers and (m,) int8 official
    split of each, 0 train, 1 valid, 2 test.
  """
  path = Path(path)
  tokens = np.array(" ".join(_read_text(path)).split())
  if tokens.size % 2 or not np.all(np.isin(tokens[1::2], ("0", "1", "2"))):
    raise ValueError(f"{path}: expected lines of '<file name> <0|1|2>'")
  numbers = _celeba_numbers(tokens[0::2], path)
  _check_unique(numbers, path, first_row_line=1)
  return numbers, tokens[1::2].astype(np.int8)


def _check_unique(numbers: np.ndarray, path: Path, first_row_line: int = 3) -> None:
  """Raises if an image is listed twice: which row holds the truth is unknowable."""
  order = np.argsort(numbers, kind="stable")
  repeated = np.flatnonzero(np.diff(numbers[order]) == 0)
  if repeated.size:
    first, again = order[repeated[0]], order[repeated[0] + 1]
    raise ValueError(
        f"{path}: image {numbers[again]:06d} is listed twice (lines {first + first_row_line} "
        f"and {again + first_row_line}); each image must have one row")


def _celeba_numbers(file_names: np.ndarray, path: Path) -> np.ndarray:
  """(m,) image numbers from CelebA file names like 000001.jpg."""
  stems = np.char.partition(file_names, ".")
  ok = (np.char.str_len(stems[:, 0]) == 6) & np.char.isdigit(stems[:, 0]) & np.isin(
      np.char.lower(stems[:, 2]), ("jpg", "jpeg", "png"))
  if not np.all(ok):
    bad = file_names[np.flatnonzero(~ok)[0]]
    raise ValueError(f"{path}: {bad!r} is not a CelebA image name like 000001.jpg")
  return stems[:, 0].astype(np.int64)


def preprocess_face(image, image_size: int) -> np.ndarray:
  """Center-crops a square of `CELEBA_CROP_FRACTION` of the width and resizes.

  Args:
    image: a PIL image or an (H, W, 3) uint8 array of an aligned face.
    image_size: side of the output.

  Returns:
    (image_size, image_size, 3) uint8.
  """
  from PIL import Image
  if not isinstance(image, Image.Image):
    image = Image.fromarray(np.asarray(image))
  image = image.convert("RGB")
  width, height = image.size
  side = min(round(width * CELEBA_CROP_FRACTION), height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  return np.asarray(image.resize((image_size, image_size), Image.Resampling.LANCZOS))


def _load_face(path: Path, image_size: int) -> np.ndarray:
  from PIL import Image
  try:
    with Image.open(path) as image:
      return preprocess_face(image, image_size)
  except OSError as e:
    raise ValueError(f"{path}: cannot decode image ({e})") from e


def default_cache_dir() -> Path:
  """`$CFAJAX_CACHE_DIR`, else `~/.cache/cfajax`."""
  return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cfajax")


def _preprocessed_faces(
    files: dict[int, Path], image_size: int, cache_dir, progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
  """All faces in `files`, preprocessed, cached as .npy; returns (numbers, uint8 images)."""
  numbers = np.array(sorted(files), np.int64)
  folder = files[int(numbers[0])].parent.resolve()
  stamp = max(os.stat(p).st_mtime_ns for p in files.values())
  key = json.dumps([str(folder), image_size, CELEBA_CROP_FRACTION, len(numbers),
                    int(numbers.sum()), stamp])
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  cache = None
  if cache_dir is not False:
    cache = Path(cache_dir or default_cache_dir()) / f"celeba_{image_size}px_{digest}.npz"
    if cache.is_file():
      try:
        with np.load(cache) as stored:
          if np.array_equal(stored["numbers"], numbers):
            return numbers, stored["images"]
      except (OSError, ValueError, KeyError):
        logger.warning("ignoring unreadable cache %s", cache)

  paths = [files[int(n)] for n in numbers]
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
    faces = pool.map(lambda p: _load_face(p, image_size), paths, chunksize=64)
    images = np.stack(list(tracked(faces, progress, total=len(paths),
                                   desc=f"CelebA {image_size}px", unit="image")))

  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
      np.savez(f, numbers=numbers, images=images)
    os.replace(tmp, cache)  # readers never see a half-written cache
  return numbers, images


def load_celeba(
    data_dir=None,
    split: str = "train",
    image_size: int = 64,
    *,
    cache_dir=None,
    progress: bool = True,
) -> ImageDataset:
  """Aligned CelebA faces, center-cropped and resized, with the 40 attributes.

  Args:
    data_dir: a folder in the standard layout (or holding one as `celeba/`):
      an image folder (`img_align_celeba/`, or any folder of CelebA-named
      images such as `img_align_celeba_89x109/`, at any resolution) plus
      `list_attr_celeba.txt` and `list_eval_partition.txt`, each plain or .gz.
      Default: `$CFAJAX_DATA_DIR/celeba`, else tensorflow-datasets `celeb_a`.
    split: "train", "valid", "test" (the official partition) or "all".
    image_size: side of the square output images.
    cache_dir: where the preprocessed faces are cached (.npz keyed by image
      folder, size and file count); default `default_cache_dir()`; False for
      no cache.
    progress: show a progress bar while decoding.

  Returns:
    An `ImageDataset` with images (n, image_size, image_size, 3) in file
    order, `labels=None`, attributes (n, 40) in {0, 1}, and `ids` the image
    numbers. Only the split's images present in the folder are returned; the
    name says how many were found, e.g. "celeba/train (10000 of 162770
    images present)".

  Raises:
    FileNotFoundError: missing folder, image folder or list file.
    ValueError: malformed list files, or none of the split's listed images in
      the image folder.
  """
  if split not in (*CELEBA_SPLITS, "all"):
    raise ValueError(f"split must be one of {[*CELEBA_SPLITS, 'all']}; got {split!r}")
  if int(image_size) != image_size or image_size < 1:
    raise ValueError(f"image_size must be a positive integer; got {image_size}")
  folder = _dataset_dir(
      data_dir, "celeba",
      lambda f: any((f / (CELEBA_ATTR_FILE + e)).is_file() for e in ("", ".gz")))
  if folder is None:
    return _celeba_from_tfds(split, image_size, progress)

  attr_path = _find_file(folder, [CELEBA_ATTR_FILE], "CelebA attributes")
  partition_path = _find_file(folder, [CELEBA_PARTITION_FILE], "CelebA partition")
  image_dir = _celeba_image_dir(folder)
  numbers, attributes, names = read_celeba_attributes(attr_path)
  partition_numbers, partition = read_celeba_partition(partition_path)
  sort = np.argsort(partition_numbers)
  where = np.searchsorted(partition_numbers, numbers, sorter=sort).clip(0, len(sort) - 1)
  known = partition_numbers[sort[where]] == numbers
  if not known.all():
    first = int(numbers[~known][0])
    raise ValueError(
        f"{int((~known).sum())} images listed in {attr_path.name} have no entry in "
        f"{partition_path.name}, first {first:06d}.jpg")
  parts = partition[sort[where]]
  listed = np.ones(len(numbers), bool) if split == "all" else parts == CELEBA_SPLITS[split]

  files = _celeba_images_in(image_dir)
  present = listed & np.isin(numbers, np.fromiter(files, np.int64, len(files)))
  if not present.any():
    example = f", e.g. {files[min(files)].name}" if files else ""
    raise ValueError(
        f"none of the {int(listed.sum())} images listed for split {split!r} in "
        f"{attr_path.name} were found in {image_dir} (it holds {len(files)} CelebA-named "
        f"images{example})")
  unlisted = len(set(files) - set(numbers.tolist()))
  if unlisted:
    logger.warning("%d images in %s have no row in %s; ignored", unlisted, image_dir,
                   attr_path.name)

  # Preprocess (and cache) every listed image in the folder, whatever the split,
  # so that one cache file serves all splits.
  listed_numbers = set(numbers.tolist())
  cached_numbers, faces = _preprocessed_faces(
      {n: p for n, p in files.items() if n in listed_numbers}, image_size, cache_dir, progress)
  order = np.argsort(numbers[present], kind="stable")
  rows = np.searchsorted(cached_numbers, numbers[present][order])
  report = f"{int(present.sum())} of {int(listed.sum())} images present"
  logger.info("CelebA %s from %s: %s", split, image_dir, report)
  return ImageDataset(
      images=faces[rows].astype(np.float32) / 255.0,
      attributes=attributes[present][order],
      attribute_names=names,
      ids=numbers[present][order],
      name=f"celeba/{split} ({report})")


def _celeba_from_tfds(split: str, image_size: int, progress: bool) -> ImageDataset:
  """CelebA through `tfds.data_source("celeb_a")`.

  Needs the `celeb_a` dataset prepared in array_record format (preparing it
  downloads about 1.4 GB and needs TensorFlow); reading it then needs only
  tensorflow-datasets and Pillow. tfds records carry no file names, so `ids`
  is None and the order is tfds' own.
  """
  hint = (f"pass data_dir= (or --data-dir) pointing at a CelebA folder (img_align_celeba/, "
          f"list_attr_celeba.txt, list_eval_partition.txt), or set ${DATA_DIR_ENV}")
  tfds_split = {"train": "train", "valid": "validation", "test": "test",
                "all": "train+validation+test"}[split]
  source = _tfds_source("celeb_a", tfds_split, hint)
  records = tracked(range(len(source)), progress, desc=f"CelebA (tfds) {image_size}px",
                    unit="image")
  images, attributes, names = [], [], None
  for i in records:
    record = source[i]
    names = names or tuple(record["attributes"])
    images.append(preprocess_face(record["image"], image_size))
    attributes.append([bool(record["attributes"][n]) for n in names])
  return ImageDataset(
      images=np.stack(images).astype(np.float32) / 255.0,
      # names is the first record's: np.stack has failed already where there is none.
      attributes=np.array(attributes, np.uint8),
      attribute_names=names,  # pyright: ignore[reportArgumentType]
      name=f"celeba/{split} (tfds)")


# -- images from anywhere ------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TFDS_PREFIX = "tfds:"


def read_images(paths, image_size: int | None = None, *, progress: bool = False) -> np.ndarray:
  """Reads image files into (n, H, W, C) float32 in [0, 1].

  Grayscale files give C = 1 when every file is grayscale; otherwise all are
  read as RGB (C = 3; an alpha channel is dropped).

  Args:
    paths: the files.
    image_size: resize every image to this square side (no crop); None keeps
      the files' size, which must then be the same for all.
    progress: show a progress bar.

  Raises:
    ValueError: a file cannot be decoded, or sizes differ and no image_size
      was given.
  """
  from PIL import Image
  paths = [Path(p) for p in paths]
  if image_size is not None:
    image_size = int(image_size)

  def mode_of(path):
    try:
      with Image.open(path) as image:
        return image.mode, image.size
    except OSError as e:
      raise ValueError(f"{path}: cannot decode image ({e})") from e

  modes = [mode_of(p) for p in paths]
  gray = all(mode in ("1", "L", "I", "I;16", "F") for mode, _ in modes)
  if image_size is None and len({size for _, size in modes}) > 1:
    first = modes[0][1]
    odd = next(i for i, (_, size) in enumerate(modes) if size != first)
    raise ValueError(f"images differ in size: {paths[0].name} is {first[0]}x{first[1]}, "
                     f"{paths[odd].name} is {modes[odd][1][0]}x{modes[odd][1][1]}; pass "
                     "image_size to resize them all")

  def load(path):
    with Image.open(path) as image:
      image = image.convert("L" if gray else "RGB")
      if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
      return np.asarray(image, np.uint8)

  arrays = [load(p) for p in tracked(paths, progress, desc="images", unit="image")]
  if not arrays:
    return np.zeros((0, image_size or 1, image_size or 1, 1 if gray else 3), np.float32)
  images = np.stack(arrays).astype(np.float32) / 255.0
  return images[..., None] if gray else images


def load_image_folder(folder, image_size: int | None = None, *,
                      progress: bool = False) -> ImageDataset:
  """Every image file in a folder (not its subfolders), in file-name order.

  Args:
    folder: the folder.
    image_size: resize to this square side; None keeps the files' common size.
    progress: show a progress bar.

  Returns:
    An `ImageDataset` with `files` the file names and `ids` their positions.

  Raises:
    FileNotFoundError: the folder does not exist or holds no image files.
    ValueError: a file cannot be decoded, or the sizes differ (see
      `read_images`).
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"no image folder at {folder}")
  paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    raise FileNotFoundError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
  images = read_images(paths, image_size, progress=progress)
  return ImageDataset(images, ids=np.arange(len(paths), dtype=np.int64),
                      files=np.array([p.name for p in paths]),
                      name=f"{folder.name}/ ({len(paths)} images)")


def load_tfds_images(name: str, split: str = "test") -> ImageDataset:
  """A tensorflow-datasets image dataset through `tfds.data_source` (no TensorFlow).

  Records need an "image" feature; a "label" feature becomes the labels.
  Needs the dataset prepared in array_record format (tfds downloads and
  prepares it the first time, which needs a network).
  """
  source = _tfds_source(name, split, "pass the images as an array or a folder of image files "
                       "instead")
  images, labels = [], []
  for i in range(len(source)):
    record = source[i]
    if "image" not in record:
      raise ValueError(f"{name} records have no 'image' feature; they have {sorted(record)}")
    images.append(np.asarray(record["image"]))
    if "label" in record:
      labels.append(int(record["label"]))
  array = np.stack(images)
  array = array[..., None] if array.ndim == 3 else array
  return ImageDataset(array.astype(np.float32) / 255.0,
                      labels=np.array(labels, np.int32) if len(labels) == len(images) else None,
                      ids=np.arange(len(images), dtype=np.int64), name=f"{name}/{split} (tfds)")


def as_image_dataset(images, *, image_size: int | None = None,
                     progress: bool = False) -> ImageDataset:
  """Images in any accepted form, as an `ImageDataset`.

  Args:
    images: an `ImageDataset`; an (n, H, W, C) array (float, in the range
      the models use, or uint8 divided by 255); a folder of image files; or
      "tfds:NAME" / "tfds:NAME:SPLIT" (default split "test").
    image_size: for a folder, resize to this square side.

  Raises:
    ValueError: an array of the wrong rank or dtype, or with NaN.
    FileNotFoundError: a folder that does not exist or holds no images.
  """
  if isinstance(images, ImageDataset):
    return images
  if isinstance(images, (str, os.PathLike)):
    text = os.fspath(images)
    if text.startswith(TFDS_PREFIX):
      name, _, split = text[len(TFDS_PREFIX):].partition(":")
      return load_tfds_images(name, split or "test")
    return load_image_folder(text, image_size, progress=progress)
  array = np.asarray(images)
  if array.ndim != 4:
    raise ValueError(f"images must be (n, H, W, C); got shape {array.shape}")
  if array.dtype == np.uint8:
    array = array.astype(np.float32) / 255.0
  elif not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"images must be float in [0, 1] or uint8; got dtype {array.dtype}")
  array = array.astype(np.float32, copy=False)
  if not np.all(np.isfinite(array)):
    raise ValueError("images must be finite; some pixels are NaN or inf")
  return ImageDataset(array, ids=np.arange(len(array), dtype=np.int64), name=f"{len(array)} images")
