"""Images from anywhere: a folder of image files, a tensorflow-datasets name, or an array."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cfajax._data._dataset import ImageDataset
from cfajax._data._tfds import _tfds_source
from cfajax._progress import tracked

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
