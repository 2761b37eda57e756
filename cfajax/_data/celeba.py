"""CelebA's aligned faces and 40 attributes from the official files, cropped and resized
(with a cache of the preprocessed faces), or through tensorflow-datasets."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from cfajax._data._dataset import ImageDataset
from cfajax._data._files import DATA_DIR_ENV
from cfajax._data._files import _dataset_dir
from cfajax._data._files import _find_file
from cfajax._data._files import _read_text
from cfajax._data._files import default_cache_dir
from cfajax._data._tfds import _tfds_source
from cfajax._progress import tracked

logger = logging.getLogger("cfajax.data")
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
