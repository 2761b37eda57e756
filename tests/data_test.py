"""Tests of the data sources on tiny files written here, and on the real data if present."""

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cfajax
from cfajax import _data

# The project's real data sit beside the checkout (../shared/data) or where
# $CFAJAX_DATA_DIR says; tests that need them skip when they are absent.
REAL_DATA = Path(os.environ.get("CFAJAX_DATA_DIR") or
                 Path(__file__).resolve().parents[1].parent / "shared" / "data")


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
  magic = 0x0800 | array.ndim if magic is None else magic
  header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write(path: Path, data: bytes, compress: bool) -> Path:
  if compress:
    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(data))
  else:
    path.write_bytes(data)
  return path


def fake_mnist(folder: Path, compress: bool, n_train=5, n_test=3, seed=0) -> dict:
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    image_name, label_name = _data.MNIST_FILES[split]
    write(folder / image_name, idx_bytes(images), compress)
    write(folder / label_name, idx_bytes(labels), compress)
    arrays[split] = (images, labels)
  return arrays


# -- IDX and MNIST ------------------------------------------------------------


def test_idx_gz_and_raw_give_identical_arrays(tmp_path):
  array = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
  raw = write(tmp_path / "raw-idx3-ubyte", idx_bytes(array), compress=False)
  gz = write(tmp_path / "gz-idx3-ubyte", idx_bytes(array), compress=True)
  np.testing.assert_array_equal(cfajax.read_idx(raw, 2051), array)
  np.testing.assert_array_equal(cfajax.read_idx(gz, 2051), array)


def test_idx_wrong_magic_number(tmp_path):
  labels = write(tmp_path / "labels", idx_bytes(np.arange(3, dtype=np.uint8)), False)
  with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
    cfajax.read_idx(labels, expected_magic=2051)
  floats = write(tmp_path / "floats", idx_bytes(np.zeros(3, np.uint8), magic=0x0D01), False)
  with pytest.raises(ValueError, match="not unsigned-byte"):
    cfajax.read_idx(floats)


def test_idx_size_that_does_not_match_the_header(tmp_path):
  data = idx_bytes(np.zeros((2, 4, 4), np.uint8))
  short = write(tmp_path / "short", data[:-5], False)
  with pytest.raises(ValueError, match=r"shape \(2, 4, 4\) \(32 bytes of data\) but the file "
                     "holds 27"):
    cfajax.read_idx(short)
  with pytest.raises(ValueError, match="cannot read"):
    cfajax.read_idx(write(tmp_path / "broken.gz", b"not gzip", False))


@pytest.mark.parametrize("sizes, data", [
    # 2**31 * 2**31 * 4 = 2**64 wraps to 0 in int64, the length of the data.
    ((2**31, 2**31, 4), b""),
    ((2**32 - 1,) * 3, bytes(7)),
    ((60000, 28, 28), bytes(10)),
], ids=["wraps to the data's length", "beyond int64", "beyond the data"])
def test_idx_header_whose_sizes_overflow_names_the_file(tmp_path, sizes, data):
  path = write(tmp_path / "huge-idx3-ubyte", struct.pack(">4I", 0x0803, *sizes) + data, False)
  expected = f"{path}: header gives shape {sizes} ({sizes[0] * sizes[1] * sizes[2]} bytes"
  with pytest.raises(ValueError, match=re.escape(expected)):
    cfajax.read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_from_a_folder(tmp_path, compress):
  arrays = fake_mnist(tmp_path / "mnist", compress)
  for split in ("train", "test"):
    # The dataset folder itself, or the folder that holds mnist/.
    for data_dir in (tmp_path / "mnist", tmp_path):
      dataset = cfajax.load_mnist(data_dir, split)
      images, labels = arrays[split]
      assert dataset.images.dtype == np.float32 and dataset.images.shape == (len(images), 28,
                                                                               28, 1)
      np.testing.assert_array_equal(dataset.images[..., 0], images / np.float32(255))
      np.testing.assert_array_equal(dataset.labels, labels)
      np.testing.assert_array_equal(dataset.ids, np.arange(len(images)))


def test_load_mnist_from_the_environment(tmp_path, monkeypatch):
  fake_mnist(tmp_path / "mnist", compress=True)
  monkeypatch.setenv("CFAJAX_DATA_DIR", str(tmp_path))
  assert len(cfajax.load_mnist(split="test")) == 3


def test_mnist_count_mismatch(tmp_path):
  fake_mnist(tmp_path, compress=False)
  write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)), False)
  with pytest.raises(ValueError, match="holds 3 images but .* holds 4 labels"):
    cfajax.load_mnist(tmp_path, "test")


def test_mnist_missing_files_and_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such folder"):
    cfajax.load_mnist(tmp_path / "absent")
  fake_mnist(tmp_path, compress=False)
  (tmp_path / "t10k-images-idx3-ubyte").unlink()
  with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
    cfajax.load_mnist(tmp_path, "test")
  with pytest.raises(ValueError, match="split"):
    cfajax.load_mnist(tmp_path, "valid")


# -- CelebA -------------------------------------------------------------------

NAMES = ("Smiling", "Male", "Young")


def fake_celeba(root: Path, present, listed=8, compress_attr=True, size=(20, 24),
                folder="img_align_celeba_20x24"):
  """A CelebA layout: `listed` rows in the lists, images for `present` numbers only.

  Images 1..listed; partition: 1-4 train, 5-6 valid, 7-8 test. Attributes of
  image n: Smiling = n odd, Male = n > 4, Young = 1.
  """
  images = root / folder
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for n in present:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / f"{n:06d}.jpg", quality=95)
  rows = [f"{n:06d}.jpg {1 if n % 2 else -1:2d} {1 if n > 4 else -1:2d}  1"
          for n in range(1, listed + 1)]
  attr = "\n".join([str(listed), " ".join(NAMES) + " ", *rows]) + "\n"
  write(root / "list_attr_celeba.txt", attr.encode(), compress_attr)
  parts = {n: 0 if n <= 4 else 1 if n <= 6 else 2 for n in range(1, listed + 1)}
  write(root / "list_eval_partition.txt",
        "".join(f"{n:06d}.jpg {p}\n" for n, p in parts.items()).encode(), not compress_attr)
  return root


@pytest.mark.parametrize("compress_attr", [True, False])
def test_celeba_subset_of_images(tmp_path, compress_attr):
  root = fake_celeba(tmp_path / "celeba", present=[1, 2, 4, 5, 7], compress_attr=compress_attr)
  train = cfajax.load_celeba(root, "train", image_size=16, cache_dir=False, progress=False)
  assert train.images.shape == (3, 16, 16, 3) and train.images.dtype == np.float32
  assert 0 <= train.images.min() and train.images.max() <= 1
  np.testing.assert_array_equal(train.ids, [1, 2, 4])
  assert train.attribute_names == NAMES and train.labels is None
  np.testing.assert_array_equal(train.attributes, [[1, 0, 1], [0, 0, 1], [0, 0, 1]])
  assert "3 of 4 images present" in train.name
  every = cfajax.load_celeba(tmp_path, "all", image_size=16, cache_dir=False, progress=False)
  np.testing.assert_array_equal(every.ids, [1, 2, 4, 5, 7])
  np.testing.assert_array_equal(every.attribute("Male"), [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(every.images[:3], train.images)


def test_celeba_crop_and_resize_match_pil(tmp_path):
  root = fake_celeba(tmp_path, present=[1])
  face = cfajax.load_celeba(root, "train", 10, cache_dir=False, progress=False).images[0]
  with Image.open(root / "img_align_celeba_20x24" / "000001.jpg") as image:
    # Width 20: a 17-pixel square (148/178 of the width) from the center.
    want = image.crop((1, 3, 18, 20)).resize((10, 10), Image.Resampling.LANCZOS)
  np.testing.assert_array_equal(face, np.asarray(want) / np.float32(255))


def test_celeba_rows_without_images(tmp_path):
  root = fake_celeba(tmp_path, present=[1, 2])
  with pytest.raises(ValueError, match=r"none of the 2 images listed for split 'test'.*holds 2 "
                     "CelebA-named images"):
    cfajax.load_celeba(root, "test", 16, cache_dir=False, progress=False)


def test_celeba_missing_pieces(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such folder"):
    cfajax.load_celeba(tmp_path / "absent")
  root = fake_celeba(tmp_path / "a", present=[1])
  (root / "list_eval_partition.txt").unlink()
  with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
    cfajax.load_celeba(root, cache_dir=False, progress=False)
  root = fake_celeba(tmp_path / "b", present=[1])
  for jpg in (root / "img_align_celeba_20x24").iterdir():
    jpg.unlink()
  with pytest.raises(FileNotFoundError, match="no CelebA images"):
    cfajax.load_celeba(root, cache_dir=False, progress=False)


def test_celeba_malformed_attribute_file(tmp_path):
  root = fake_celeba(tmp_path, present=[1], compress_attr=False)
  text = (root / "list_attr_celeba.txt").read_text().replace("000003.jpg  1 -1  1",
                                                            "000003.jpg  1 -1")
  (root / "list_attr_celeba.txt").write_text(text)
  with pytest.raises(ValueError, match="line 5 has 2 values; expected 3"):
    cfajax.load_celeba(root, cache_dir=False, progress=False)


def test_celeba_image_listed_twice_is_refused(tmp_path):
  # A duplicated, conflicting row used to give 21 faces from 20 images.
  root = fake_celeba(tmp_path, present=[1, 2, 3], compress_attr=False)
  attr = root / "list_attr_celeba.txt"
  lines = attr.read_text().splitlines()
  lines.insert(4, "000001.jpg -1  1 -1")  # image 1 again, with other attributes
  attr.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"image 000001 is listed twice \(lines 3 and 5\)"):
    cfajax.load_celeba(root, "all", 16, cache_dir=False, progress=False)
  attr.write_text("\n".join(lines[:4] + lines[5:]) + "\n")
  write(root / "list_eval_partition.txt", b"000001.jpg 0\n000002.jpg 0\n000002.jpg 1\n", True)
  with pytest.raises(ValueError, match=r"image 000002 is listed twice \(lines 2 and 3\)"):
    cfajax.load_celeba(root, "all", 16, cache_dir=False, progress=False)


def test_celeba_cache_is_reused(tmp_path, monkeypatch):
  root = fake_celeba(tmp_path / "celeba", present=[1, 2, 5])
  cache = tmp_path / "cache"
  first = cfajax.load_celeba(root, "all", 12, cache_dir=cache, progress=False)
  assert len(list(cache.glob("celeba_12px_*.npz"))) == 1

  def no_decoding(*args):
    raise AssertionError("decoded a JPEG despite the cache")

  monkeypatch.setattr(_data.celeba, "_load_face", no_decoding)
  second = cfajax.load_celeba(root, "valid", 12, cache_dir=cache, progress=False)
  np.testing.assert_array_equal(second.images, first.images[2:])


# -- digits and splits --------------------------------------------------------


def test_digits_and_a_deterministic_split():
  digits = cfajax.load_digits()
  assert digits.images.shape == (1797, 8, 8, 1) and digits.images.dtype == np.float32
  assert digits.images.min() == 0 and digits.images.max() == 1
  train, test = cfajax.split_dataset(digits, 0.2, seed=0)
  again, _ = cfajax.split_dataset(digits, 0.2, seed=0)
  assert (len(train), len(test)) == (1438, 359)
  np.testing.assert_array_equal(train.ids, again.ids)
  assert not set(train.ids) & set(test.ids)
  np.testing.assert_array_equal(test.images, digits.images[test.ids])
  head, tail = cfajax.split_dataset(digits, 100, seed=None)
  np.testing.assert_array_equal(tail.ids, np.arange(1697, 1797))


# -- the real files, when present ---------------------------------------------


@pytest.mark.skipif(not (REAL_DATA / "mnist").is_dir(),
                    reason=f"real MNIST not found at {REAL_DATA / 'mnist'} (set CFAJAX_DATA_DIR)")
def test_real_mnist():
  train = cfajax.load_mnist(REAL_DATA, "train")
  test = cfajax.load_mnist(REAL_DATA / "mnist", "test")
  assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
  # The official files' first training labels and class counts.
  np.testing.assert_array_equal(train.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
  np.testing.assert_array_equal(np.bincount(test.labels),
                                [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  assert train.images.max() == 1.0 and train.images.min() == 0.0


@pytest.mark.skipif(not (REAL_DATA / "celeba").is_dir(),
                    reason=f"real CelebA not found at {REAL_DATA / 'celeba'} "
                    "(set CFAJAX_DATA_DIR)")
def test_real_celeba_lists_with_a_few_faces(tmp_path):
  # The real list files (all 202,599 rows) with the first 20 real faces.
  real = REAL_DATA / "celeba"
  (tmp_path / "img_align_celeba").mkdir()
  for n in range(1, 21):
    os.symlink(real / "img_align_celeba_89x109" / f"{n:06d}.jpg",
               tmp_path / "img_align_celeba" / f"{n:06d}.jpg")
  for name in ("list_attr_celeba.txt.gz", "list_eval_partition.txt.gz"):
    os.symlink(real / name, tmp_path / name)
  faces = cfajax.load_celeba(tmp_path, "train", 64, cache_dir=False, progress=False)
  assert faces.images.shape == (20, 64, 64, 3)
  assert faces.name == "celeba/train (20 of 162770 images present)"
  assert len(faces.attribute_names) == 40
  assert faces.attribute_names[:2] == ("5_o_Clock_Shadow", "Arched_Eyebrows")
  # 000001.jpg is young, attractive, not male, smiling in the official file.
  first = {n: faces.attribute(n)[0] for n in ("Young", "Attractive", "Male", "Smiling")}
  assert first == {"Young": 1, "Attractive": 1, "Male": 0, "Smiling": 1}


def test_without_tensorflow_datasets_the_way_out_is_named(tmp_path, monkeypatch):
  import sys
  monkeypatch.delenv(_data.DATA_DIR_ENV, raising=False)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(RuntimeError, match=r"pip install 'cfajax\[tfds\]'.*data_dir"):
    cfajax.load_mnist(None, "test")
  with pytest.raises(RuntimeError, match=r"cfajax\[tfds\]"):
    cfajax.load_celeba(None, "valid")


def test_offline_downloads_fail_in_seconds_and_leave_nothing(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")  # the optional extra
  import socket
  import time
  monkeypatch.delenv(_data.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  with socket.socket() as closed:  # a local port nobody listens on: refused at once
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
  monkeypatch.setattr(_data._tfds, "NETWORK_PROBE", ("127.0.0.1", port))
  start = time.perf_counter()
  with pytest.raises(RuntimeError, match="cannot be reached.*data_dir"):
    cfajax.load_mnist(None, "test")
  assert time.perf_counter() - start < 30
  leftovers = [p for p in (tmp_path / "tfds").rglob("*") if ".tmp" in p.name]
  assert not leftovers
