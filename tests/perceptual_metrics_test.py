"""FID and LPIPS from weight files: the files' checks, and the metrics' properties.

Weights here are random, written as .npz in the names and shapes the networks ask for;
the comparison with pytorch-fid and lpips themselves is tests/perceptual_reference_test.py.
"""

import pickle
from functools import partial

import numpy as np
import pytest

from cfajax import metrics
from cfajax._feature_nets import expected_weights
from cfajax._feature_nets import frechet
from cfajax._inception import pool3_features
from cfajax._lpips import _trunk_only
from cfajax._torch_files import read_state_dict


def _random_weights(expected, seed):
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, shape in expected.items():
    if name.endswith("running_var"):
      arrays[name] = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(("running_mean", ".bias")):
      arrays[name] = 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1:  # a BatchNorm scale
      arrays[name] = rng.uniform(0.5, 1.5, shape)
    else:  # a convolution: unit gain through a ReLU (He et al.)
      arrays[name] = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))
  return {k: v.astype(np.float32) for k, v in arrays.items()}


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("lpips")
  trunk = _random_weights(expected_weights(partial(_trunk_only, "alex"), (64, 64, 3)), 0)
  trunk["classifier.1.weight"] = np.zeros((4, 3), np.float32)  # a head the metric ignores
  linear = {f"lin{k}.model.1.weight": np.random.default_rng(k).random((1, c, 1, 1))
            for k, c in enumerate((64, 192, 384, 256, 256))}
  np.savez(folder / "trunk.npz", **trunk)
  np.savez(folder / "linear.npz", **linear)
  return folder / "trunk.npz", folder / "linear.npz"


def _lpips(files, a, b, **options):
  return metrics.lpips(a, b, trunk=files[0], linear=files[1], **options)


def test_lpips_is_zero_for_identical_images_and_symmetric(lpips_files):
  rng = np.random.default_rng(1)
  a, b = rng.random((3, 40, 40, 3)), rng.random((3, 40, 40, 3))
  # An image's features at two places of one batch agree to float32 round-off (about
  # 1e-6 relative after five layers); the squared difference of unit vectors that close
  # is at most (1e-6)^2 summed over five taps.
  assert np.all(_lpips(lpips_files, a, a) < 1e-10)
  ab, ba = _lpips(lpips_files, a, b), _lpips(lpips_files, b, a)
  assert ab.shape == (3,) and ab.dtype == np.float32 and np.all(ab > 1e-3)
  np.testing.assert_allclose(ab, ba, rtol=1e-5)


def test_lpips_grows_with_the_change(lpips_files):
  rng = np.random.default_rng(2)
  a = rng.random((4, 40, 40, 3))
  noise = rng.standard_normal(a.shape)
  small = _lpips(lpips_files, a, np.clip(a + 0.05 * noise, 0, 1))
  large = _lpips(lpips_files, a, np.clip(a + 0.5 * noise, 0, 1))
  assert np.all(large > small)


def test_lpips_refuses_images_below_the_trunks_smallest_side_and_resizes_on_request(
    lpips_files):
  rng = np.random.default_rng(3)
  a, b = rng.random((2, 28, 28, 1)), rng.random((2, 28, 28, 1))
  with pytest.raises(ValueError, match="at least 31 pixels.*28 x 28.*size="):
    _lpips(lpips_files, a, b)
  assert _lpips(lpips_files, a, b, size=64).shape == (2,)


@pytest.mark.parametrize("bad, message", [
    (lambda a: (a * 255).astype(np.uint8), "floats in \\[0, 1\\].*uint8"),
    (lambda a: np.where(a > 0.5, np.nan, a), "NaN"),
    (lambda a: a * 3, "must lie in \\[0, 1\\]"),
    (lambda a: a[..., :2], "C in \\(1, 3\\)"),
], ids=["uint8", "nan", "range", "channels"])
def test_lpips_names_bad_images(lpips_files, bad, message):
  a = np.random.default_rng(4).random((2, 40, 40, 3))
  with pytest.raises(ValueError, match=message):
    _lpips(lpips_files, bad(a), a if bad(a).shape == a.shape else bad(a))


def test_lpips_refuses_pairs_of_different_shapes_and_unknown_nets(lpips_files):
  a = np.random.default_rng(5).random((2, 40, 40, 3))
  with pytest.raises(ValueError, match="pairs of one shape"):
    _lpips(lpips_files, a, a[:1])
  with pytest.raises(ValueError, match="net must be one of"):
    _lpips(lpips_files, a, a, net="squeeze")


def test_a_weight_file_is_checked_naming_missing_unexpected_and_misshapen_weights(
    lpips_files, tmp_path):
  trunk, linear = lpips_files
  arrays = dict(np.load(trunk))
  del arrays["features.3.bias"]
  arrays["features.4.weight"] = np.zeros(3, np.float32)
  arrays["features.0.weight"] = arrays["features.0.weight"][:, :1]
  np.savez(tmp_path / "bad.npz", **arrays)
  a = np.random.default_rng(6).random((1, 40, 40, 3))
  with pytest.raises(ValueError) as error:
    metrics.lpips(a, a, trunk=tmp_path / "bad.npz", linear=linear)
  message = str(error.value)
  assert "missing: features.3.bias" in message
  assert "unexpected: features.4.weight" in message
  assert "wrong shape: features.0.weight (64, 1, 11, 11) (expected (64, 3, 11, 11))" in message
  with pytest.raises(FileNotFoundError, match="no weight file"):
    metrics.lpips(a, a, trunk=tmp_path / "absent.pth", linear=linear)


def test_a_weight_file_that_would_build_anything_but_tensors_is_refused(tmp_path):
  path = tmp_path / "evil.pth"
  path.write_bytes(pickle.dumps({"w": pickle.loads}))  # a global a tensor file never names
  with pytest.raises(ValueError, match="tensors only; it names _pickle.loads"):
    read_state_dict(path)
  path.write_bytes(b"not a weight file at all")
  with pytest.raises(ValueError, match="not a readable torch.save file"):
    read_state_dict(path)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("fid") / "inception.npz"
  weights = _random_weights(expected_weights(pool3_features, (299, 299, 3)), 7)
  weights["fc.weight"] = np.zeros((1008, 2048), np.float32)  # the head FID does not use
  np.savez(path, **weights)
  return path


def test_fid_is_the_frechet_distance_of_the_inception_features(inception_file):
  rng = np.random.default_rng(8)
  a, b = rng.random((3, 28, 28, 1)), rng.random((3, 28, 28, 1)) ** 3
  result = metrics.fid(a, b, weights=inception_file, batch_size=3)
  assert (result["n"], result["n_reference"]) == (3, 3) and result["fid"] > 0
  features = metrics.inception_features(inception_file)
  fa, fb = (np.asarray(features(x), np.float64) for x in (a, b))
  assert fa.shape == (3, 2048)
  stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (fa, fb)]
  # The same compiled program on the same batches: equal features, and a distance equal
  # to float64 round-off.
  assert result["fid"] == pytest.approx(frechet(*stats[0], *stats[1]), rel=1e-12)


def test_fid_names_bad_input(inception_file):
  a = np.random.default_rng(9).random((3, 28, 28, 1))
  with pytest.raises(ValueError, match="at least 2 reference"):
    metrics.fid(a, a[:1], weights=inception_file)
  with pytest.raises(ValueError, match="FID Inception.*missing: Mixed_7c.branch_pool.conv"):
    metrics.fid(a, a, weights=_truncated(inception_file))


def _truncated(path):
  arrays = dict(np.load(path))
  arrays.pop("Mixed_7c.branch_pool.conv.weight")
  out = path.with_name("truncated.npz")
  np.savez(out, **arrays)
  return out
