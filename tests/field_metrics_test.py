"""MNAC and COUT on classifiers whose answers are known by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from cfajax import metrics


def one_pixel(images):
  """Two classes decided by pixel (0, 0) alone: logits (-4 v, 4 v), v its value - 0.5."""
  v = images[:, 0, 0, 0] - 0.5
  return jnp.stack([-4 * v, 4 * v], axis=1)


def test_cout_is_the_area_under_the_transition_when_the_deciding_pixel_moves_first():
  x = np.zeros((2, 4, 4, 1), np.float32)
  cf = x.copy()
  cf[:, 0, 0, 0] = 1.0  # the deciding pixel changes most ...
  cf[:, 2:, 2:, 0] = 0.2  # ... and four others a little
  result = metrics.cout(one_pixel, x, cf, source=0, target=1, steps=4)
  # s = p(1) - p(0) = tanh(4 v): tanh(-2) before, tanh(2) once the pixel moved (k >= 1).
  s0, s1 = np.tanh(-2.0), np.tanh(2.0)
  expected = ((s0 + s1) / 2 + 3 * s1) / 4
  np.testing.assert_allclose(result["per_example"], expected, rtol=1e-6)
  np.testing.assert_allclose(result["curve"], [s0, s1, s1, s1, s1], rtol=1e-6)
  assert result["count"] == 2


def test_cout_is_lower_when_the_deciding_pixel_moves_last():
  x = np.zeros((1, 4, 4, 1), np.float32)
  cf = np.full_like(x, 0.9)
  cf[:, 0, 0, 0] = 0.6  # the smallest change: moved with the last quarter
  result = metrics.cout(one_pixel, x, cf, source=0, target=1, steps=4)
  s0, s1 = np.tanh(-2.0), np.tanh(4 * 0.1)
  np.testing.assert_allclose(result["per_example"], ((s0 + s1) / 2 + 3 * s0) / 4, rtol=1e-6)


def test_cout_of_a_sigmoid_classifier_uses_the_two_sides_of_one_logit():
  x = np.zeros((1, 2, 2, 1), np.float32)
  cf = x.copy()
  cf[0, 0, 0, 0] = 1.0
  sigmoid = lambda images: one_pixel(images)[:, 1:]
  p = lambda v: 1 / (1 + np.exp(-4 * v))
  result = metrics.cout(sigmoid, x, cf, source=0, target=1, steps=1)
  s0, s1 = 2 * p(-0.5) - 1, 2 * p(0.5) - 1
  np.testing.assert_allclose(result["cout"], (s0 + s1) / 2, rtol=1e-6)


def attributes(images):
  """Three binary attributes: pixel (0, 0) bright, pixel (0, 1) bright, mean ink > 0.5."""
  flat = images.reshape(len(images), -1)
  return jnp.stack([flat[:, 0] - 0.5, flat[:, 1] - 0.5, flat.mean(1) - 0.5], axis=1)


def test_mnac_counts_the_attributes_changed_other_than_the_explained_one():
  x = np.zeros((3, 2, 2, 1), np.float32)
  cf = x.copy()
  cf[0, 0, 0, 0] = 1.0  # only the explained attribute
  cf[1, 0, :, 0] = 1.0  # and attribute 1
  cf[2] = 1.0  # and attributes 1 and 2
  result = metrics.mnac(attributes, x, cf, exclude=("first",), names=("first", "second", "ink"))
  assert result["per_example"].tolist() == [0, 1, 2]
  assert result["mnac"] == 1.0 and result["change_rate"] == {"second": 2 / 3, "ink": 1 / 3}
  counted = metrics.mnac(attributes, x, cf, exclude=(0,), success=[True, True, False])
  assert counted["mnac"] == 0.5 and counted["count"] == 2


@pytest.mark.parametrize("call, match", [
    (lambda x: metrics.cout(one_pixel, x, x[:1], 0, 1), "one shape"),
    (lambda x: metrics.cout(one_pixel, x, x, 0, 1, steps=17),
     r"steps must be an integer in \[1, 16\]"),
    (lambda x: metrics.mnac(attributes, x, x, exclude=("tall",), names=("a", "b", "c")),
     "do not exist"),
    (lambda x: metrics.mnac(attributes, x, x * np.nan), "finite"),
])
def test_bad_input_is_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call(np.zeros((2, 4, 4, 1), np.float32))
