"""Tests of the digit descriptors on drawn shapes whose answers are known."""

import numpy as np
import pytest

import cfajax
from cfajax import _descriptors

THICKNESS, SLANT, WIDTH, HEIGHT, LENGTH, AREA = range(6)


def canvas(size=28):
  return np.zeros((size, size), np.float32)


def rectangle(top, left, height, width, size=28):
  image = canvas(size)
  image[top:top + height, left:left + width] = 1.0
  return image


def sheared_bar(shear, width=3, height=16, size=28):
  """A vertical bar whose rows shift right by `shear` pixels per row going up."""
  image = canvas(size)
  top = (size - height) // 2
  middle = top + (height - 1) / 2
  for row in range(top, top + height):
    left = int(round(size / 2 - width / 2 + shear * (middle - row)))
    image[row, left:left + width] = 1.0
  return image


def describe(*images, **options):
  return cfajax.digit_descriptors(np.stack(images)[..., None], **options)


def test_names_and_shapes():
  assert cfajax.DESCRIPTOR_NAMES == ("thickness", "slant", "width", "height", "length", "area")
  assert cfajax.DESCRIPTOR_ATTRIBUTE_NAMES == (
      "thick", "slanted_right", "wide", "tall", "long_stroke", "much_ink")
  values = describe(canvas(), rectangle(4, 4, 10, 6))
  assert values.shape == (2, 6) and values.dtype == np.float32
  np.testing.assert_array_equal(values[0], 0)  # no ink: all zeros
  # (n, H, W) works as well as (n, H, W, 1).
  np.testing.assert_array_equal(
      cfajax.digit_descriptors(np.stack([rectangle(4, 4, 10, 6)])), values[1:])


def test_upright_rectangles_are_measured_exactly():
  # Moment-based extents sqrt(12 var + 1) are exact for filled upright rectangles.
  shapes = [(4, 3, 10, 6), (2, 2, 20, 3), (10, 5, 5, 18)]
  values = describe(*[rectangle(*s) for s in shapes])
  for (_, _, height, width), row in zip(shapes, values, strict=True):
    assert row[AREA] == height * width
    # float32 moments of up to ~400 pixels: 1e-4 is ample.
    assert row[WIDTH] == pytest.approx(width, abs=1e-4)
    assert row[HEIGHT] == pytest.approx(height, abs=1e-4)
    assert row[SLANT] == pytest.approx(0.0, abs=1e-6)


def test_one_pixel_line_is_its_own_skeleton():
  line = rectangle(5, 10, 15, 1)
  row = describe(line)[0]
  assert row[LENGTH] == 15 and row[THICKNESS] == 1 and row[AREA] == 15


def test_thicker_bars_are_thicker_with_length_kept():
  widths = np.arange(1, 9)
  values = describe(*[rectangle(4, 12 - t // 2, 20, t) for t in widths])
  # Twice the centreline's depth less one: exact for odd widths, one short for even
  # ones (the skeleton sits on one of the two middle columns).
  np.testing.assert_array_equal(values[:, THICKNESS], np.where(widths % 2, widths, widths - 1))
  assert np.all(values[:, LENGTH] >= 12) and np.all(values[:, LENGTH] <= 20)
  # A diagonal stroke: thicker bands are thicker too.
  rows, cols = np.mgrid[:28, :28]
  bands = [((np.abs(rows - cols) <= t) & (rows > 4) & (rows < 24)).astype(np.float32)
           for t in (0, 2, 4)]
  assert np.all(np.diff(describe(*bands)[:, THICKNESS]) > 1)


def test_longer_strokes_are_longer():
  values = describe(*[rectangle(2, 12, h, 3) for h in (6, 12, 24)])
  assert np.all(np.diff(values[:, LENGTH]) > 5)
  # An L shape is as long as its two arms.
  ell = np.maximum(rectangle(4, 6, 18, 2), rectangle(20, 6, 2, 14))
  assert describe(ell)[0, LENGTH] == pytest.approx(18 + 14, abs=4)


@pytest.mark.parametrize("shear", [0.25, 0.5])
def test_slant_sign_and_size(shear):
  right, left, upright = describe(sheared_bar(shear), sheared_bar(-shear),
                                  sheared_bar(0.0))[:, SLANT]
  # Rounding each row to whole pixels perturbs the shear by < 0.5 px over 16 rows.
  assert right == pytest.approx(np.arctan(shear), abs=0.05)
  assert left == pytest.approx(-np.arctan(shear), abs=0.05)
  assert upright == pytest.approx(0.0, abs=1e-6)


def test_width_ignores_slant_and_grows_with_the_shape():
  bars = describe(sheared_bar(0.0, width=3), sheared_bar(0.5, width=3), sheared_bar(0.0, width=6))
  assert bars[1, WIDTH] == pytest.approx(bars[0, WIDTH], abs=0.5)  # de-slanted
  assert bars[2, WIDTH] > bars[0, WIDTH] + 2
  wide, narrow = describe(rectangle(10, 2, 6, 22), rectangle(10, 10, 6, 8))
  assert wide[WIDTH] > narrow[WIDTH] and wide[HEIGHT] == pytest.approx(narrow[HEIGHT])
  tall, short = describe(rectangle(2, 10, 22, 6), rectangle(10, 10, 8, 6))
  assert tall[HEIGHT] > short[HEIGHT] and tall[WIDTH] == pytest.approx(short[WIDTH])


def test_small_images_are_upsampled_and_reported_in_input_pixels():
  # An 8 x 8 digit-sized image: a 6-tall, 2-wide bar.
  small = rectangle(1, 3, 6, 2, size=8)
  assert _descriptors.default_upsample(8, 8) == 4 and _descriptors.default_upsample(28, 28) == 1
  row = describe(small)[0]
  # Bilinear upsampling keeps edges where they were but rounds the 4 corners off.
  assert row[AREA] == pytest.approx(12, abs=0.5)
  assert row[WIDTH] == pytest.approx(2, abs=0.2)
  assert row[HEIGHT] == pytest.approx(6, abs=0.2)
  assert row[THICKNESS] == pytest.approx(2, abs=0.3)  # 8 upsampled pixels: 7 / 4
  # The same shape drawn 4x larger gives the same numbers in its own pixels / 4.
  big = np.kron(small, np.ones((4, 4), np.float32))
  big_row = describe(big)[0]
  assert big_row[LENGTH] / 4 == pytest.approx(row[LENGTH], abs=1)


def test_results_do_not_depend_on_batching():
  rng = np.random.default_rng(0)
  images = [sheared_bar(s, width=w)
            for s, w in zip(rng.uniform(-0.5, 0.5, 7), rng.integers(1, 6, 7), strict=True)]
  together = describe(*images)
  chunked = describe(*images, batch_size=3)
  np.testing.assert_array_equal(chunked, together)


def test_binarize_above_the_median():
  values = np.array([[1.0, 0, 0, 0, 0, 0], [2, 1, 1, 1, 1, 1], [3, 2, 2, 2, 2, 2]])
  attributes, thresholds = cfajax.binarize_descriptors(values)
  np.testing.assert_array_equal(thresholds, [2, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(attributes, [[0] * 6, [0] * 6, [1] * 6])
  # The same thresholds apply to other data.
  other, same = cfajax.binarize_descriptors(values + 0.5, thresholds)
  np.testing.assert_array_equal(same, thresholds)
  np.testing.assert_array_equal(other, [[0] * 6, [1] * 6, [1] * 6])


@pytest.mark.parametrize(
    "images, options, match",
    [
        (np.zeros((2, 28, 28, 3)), {}, "grayscale"),
        (np.zeros((28, 28)), {}, r"shape \(n, H, W, 1\)"),
        (np.full((1, 28, 28, 1), np.nan), {}, "NaN"),
        (np.full((1, 28, 28, 1), 255, np.uint8), {}, r"in \[0, 1\].*divide 8-bit images by 255"),
        (np.zeros((1, 28, 28, 1)), dict(threshold=1.0), "threshold"),
        (np.zeros((1, 28, 28, 1)), dict(upsample=0), "upsample"),
        (np.zeros((1, 2, 2, 1)), {}, "at least 3 x 3"),
    ],
)
def test_bad_images_are_named(images, options, match):
  with pytest.raises(ValueError, match=match):
    cfajax.digit_descriptors(images, **options)


def test_bad_values_for_binarize_are_named():
  with pytest.raises(ValueError, match=r"shape \(n, 6\)"):
    cfajax.binarize_descriptors(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="NaN"):
    cfajax.binarize_descriptors(np.full((3, 6), np.nan))
  with pytest.raises(ValueError, match="thresholds"):
    cfajax.binarize_descriptors(np.zeros((3, 6)), np.zeros(5))


def test_new_images_and_threshold_do_not_compile_again():
  describe(rectangle(4, 4, 10, 6), threshold=0.5)
  compiled = _descriptors._descriptors_jit._cache_size()
  describe(sheared_bar(0.3), threshold=0.3)
  assert _descriptors._descriptors_jit._cache_size() == compiled
