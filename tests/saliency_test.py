"""Saliency maps and their scores against hand-made masks and closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import saliency


def test_iou_on_hand_made_masks():
  a = np.zeros((3, 4, 4), bool)
  b = np.zeros((3, 4, 4), bool)
  a[0, :2, :2] = True          # 4 pixels
  b[0, 1:3, 1:3] = True        # 4 pixels, 1 shared: IoU 1 / 7
  a[1, 0, 0] = b[1, 0, 0] = True  # identical: 1
  # row 2: both empty, which counts as agreement: 1
  np.testing.assert_allclose(saliency.iou(a, b), [1 / 7, 1.0, 1.0])
  b[1] = ~b[1]                 # disjoint and covering: 0
  assert saliency.iou(a, b)[1] == 0


def test_the_pointing_game_and_the_top_fraction_mask():
  maps = np.zeros((2, 5, 5), np.float32)
  maps[0, 1, 3], maps[1, 4, 4] = 2.0, 3.0
  maps[:, 2, 2] = 1.0
  truth = np.zeros((2, 5, 5), bool)
  truth[:, 1:3, 2:4] = True    # holds (1, 3) but not (4, 4)
  np.testing.assert_array_equal(saliency.pointing_game(maps, truth), [True, False])
  mask = saliency.saliency_mask(maps, fraction=2 / 25)
  assert mask.sum((1, 2)).tolist() == [2, 2]
  assert mask[0, 1, 3] and mask[0, 2, 2] and mask[1, 4, 4] and mask[1, 2, 2]


def test_smoothing_keeps_the_total_and_spreads_an_impulse_symmetrically():
  impulse = np.zeros((1, 15, 15), np.float32)
  impulse[0, 7, 7] = 1.0
  blurred = saliency.smooth(impulse, 1.5)
  assert blurred.sum() == pytest.approx(1.0, rel=1e-5)
  np.testing.assert_allclose(blurred[0], blurred[0].T, atol=1e-7)
  np.testing.assert_allclose(blurred[0], blurred[0, ::-1, ::-1], atol=1e-7)
  assert blurred[0, 7, 7] == blurred.max() < 1
  np.testing.assert_array_equal(saliency.smooth(impulse, 0), impulse)


def test_counterfactual_saliency_is_the_mean_absolute_change():
  rng = np.random.default_rng(0)
  x = rng.random((2, 6, 6, 3)).astype(np.float32)
  cf = x.copy()
  cf[0, 2, 3] += 0.3
  cf[1, 0, 0, 1] -= 0.6
  maps = saliency.counterfactual_saliency(x, cf, sigma=0)
  want = np.zeros((2, 6, 6), np.float32)
  want[0, 2, 3], want[1, 0, 0] = 0.3, 0.2
  np.testing.assert_allclose(maps, want, atol=1e-6)


def test_gradients_of_a_linear_classifier_are_its_weights():
  # log-odds w . x + b: the gradient map is |w| and integrated gradients are
  # exactly (x - baseline) * w, whose sum is f(x) - f(baseline) (completeness).
  w = np.random.default_rng(1).normal(size=(4, 4, 1)).astype(np.float32)
  classify = lambda x: jnp.sum(x * jnp.asarray(w), axis=(1, 2, 3))[:, None] + 0.5
  x = np.random.default_rng(2).random((3, 4, 4, 1)).astype(np.float32)
  np.testing.assert_allclose(saliency.gradient_saliency(classify, x, 1),
                             np.broadcast_to(np.abs(w[..., 0]), (3, 4, 4)), rtol=1e-6)
  ig = saliency.integrated_gradients(classify, x, 1, baseline=0.2, steps=4)
  np.testing.assert_allclose(ig, (x - 0.2) * w, rtol=1e-5, atol=1e-6)
  # For target 0 the log-odds are -(w . x + b).
  np.testing.assert_allclose(saliency.integrated_gradients(classify, x, 0, steps=4), -x * w,
                             rtol=1e-5, atol=1e-6)


def test_integrated_gradients_are_complete_for_a_trained_network(tiny_classifier):
  x = cfajax.load_digits().images[:4]
  ig = saliency.integrated_gradients(tiny_classifier, x, 3, steps=256)
  logits = np.asarray(tiny_classifier(jnp.asarray(np.concatenate([x, np.zeros_like(x)]))))
  odds = logits[:, 3] - np.log(np.exp(np.delete(logits, 3, axis=1)).sum(1))
  # The midpoint rule's error falls as 1/steps^2 for a smooth path; a ReLU network's
  # path is piecewise linear, so a few kinks leave a small remainder.
  np.testing.assert_allclose(ig.sum((1, 2, 3)), odds[:4] - odds[4:], atol=2e-2)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match=r"maps must be maps \(n, H, W\)"):
    saliency.saliency_mask(np.zeros((4, 4)))
  with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
    saliency.saliency_mask(np.zeros((1, 4, 4)), fraction=0)
  with pytest.raises(ValueError, match="must have the same shape"):
    saliency.counterfactual_saliency(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 5, 1)))
  with pytest.raises(ValueError, match="masks must both be"):
    saliency.iou(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))


def test_planted_defects_are_where_their_masks_say_and_seeded():
  x = np.zeros((200, 12, 12, 1), np.float32)
  images, labels, masks = saliency.plant_defects(x, fraction=0.5, length=(4, 7), seed=3)
  assert 70 < labels.sum() < 130
  np.testing.assert_array_equal(masks.any((1, 2)), labels == 1)
  # On black images the defect is exactly the changed pixels, drawn at full intensity.
  np.testing.assert_array_equal(images[..., 0] > 0, masks)
  assert np.all(images[masks] == 1.0)
  # A stroke spanning L - 1 pixels covers at least L pixels and, rasterised as a
  # staircase, at most |dy| + |dx| + 1 <= 2 (L - 1) + 1.
  sizes = masks.sum((1, 2))[labels == 1]
  assert sizes.min() >= 4 and sizes.max() <= 2 * (7 - 1) + 1
  again = saliency.plant_defects(x, fraction=0.5, length=(4, 7), seed=3)
  np.testing.assert_array_equal(again[2], masks)
  # A wider brush draws the same strokes, thicker.
  wide = saliency.plant_defects(x, fraction=0.5, length=(4, 7), width=2, seed=3)[2]
  assert np.all(wide[masks]) and wide.sum() > 1.5 * masks.sum()
  with pytest.raises(ValueError, match="length must be"):
    saliency.plant_defects(x, length=(4, 12))
