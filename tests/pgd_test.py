"""PGD: the epsilon-ball, closed-form optima for a linear classifier, the loss it raises."""

import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax._pgd import label_loss

PIXELS = 16


def linear_binary(w, b=0.0):
  w = np.asarray(w, np.float32)
  return lambda x: (x.reshape(len(x), -1) @ jnp.asarray(w) + b)[:, None]


def mid_range(n, seed=0):
  return np.random.default_rng(seed).uniform(0.3, 0.7, (n, 4, 4, 1)).astype(np.float32)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_linear_classifier_is_pushed_to_the_corner_of_its_ball(norm):
  # The label's loss grows along -(2y - 1) w, so its maximum over the ball is the
  # L-infinity corner -(2y - 1) eps sign(w), or the L2 point -(2y - 1) eps w / |w|.
  # Mid-range images and eps 0.1 keep [0, 1] out of play. L-infinity from a random start:
  # each pixel moves 2.5 eps / 40 toward its corner per step, so 32 steps reach it. L2 from
  # the image: the change grows along w alone until projected onto the sphere (from a
  # random start the part across w shrinks only by ~6% a step, too slowly for 40).
  w = np.random.default_rng(1).normal(size=PIXELS)
  x = mid_range(6)
  y = np.array([0, 1, 0, 1, 1, 0])
  eps = 0.1
  adversarial = cfajax.pgd_attack(linear_binary(w), x, y, epsilon=eps, norm=norm, steps=40,
                                  random_start=norm == "linf")
  sign = (2 * y - 1).reshape(-1, 1, 1, 1)
  unit = np.sign(w) if norm == "linf" else w / np.linalg.norm(w)
  np.testing.assert_allclose(adversarial, x - sign * eps * unit.reshape(1, 4, 4, 1), atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_image_stays_in_its_ball_and_in_range(norm, tiny_classifier):
  digits = cfajax.load_digits()
  x, y = digits.images[:40], digits.labels[:40]
  for eps in (0.05, 0.3, 2.0):
    adversarial = cfajax.pgd_attack(tiny_classifier, x, y, epsilon=eps, norm=norm, steps=10)
    delta = (adversarial - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-6) + 1e-6), size.max()
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_pgd_raises_the_loss_and_lowers_accuracy():
  train, test = cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)
  clf = cfajax.build_model("classifier", cfajax.ClassifierConfig((8, 8, 1), widths=(16, 32)))
  clf, _ = cfajax.train_classifier(clf, train, epochs=10, progress=False)
  x, y = test.images, test.labels
  adversarial = cfajax.pgd_attack(clf, x, y, epsilon=0.1, steps=10)
  loss = lambda images: np.mean([float(label_loss(row, label)) for row, label in zip(
      np.asarray(clf(jnp.asarray(images))), y, strict=True)])
  assert loss(adversarial) > loss(x) + 0.5
  accuracy = cfajax.robust_accuracy(clf, x, y, epsilon=0.1, steps=10)
  assert accuracy["clean"] > 0.8 and accuracy["robust"] < accuracy["clean"] - 0.2, accuracy
  # No steps and no random start leave the images as they are.
  np.testing.assert_array_equal(
      cfajax.pgd_attack(clf, x, y, epsilon=0.1, steps=0, random_start=False), x)


def test_each_image_is_attacked_independently_of_its_batch(tiny_classifier):
  digits = cfajax.load_digits()
  x, y = digits.images[:10], digits.labels[:10]
  whole = cfajax.pgd_attack(tiny_classifier, x, y, epsilon=0.2, steps=5, seed=3)
  small = cfajax.pgd_attack(tiny_classifier, x, y, epsilon=0.2, steps=5, seed=3, batch_size=3)
  # Each row draws its start from its own key and moves by its own gradient's sign, so
  # batches differ by round-off alone; a sign flip of a ~0 gradient moves a pixel by at
  # most 2 * step_size (0.1 here) on rare pixels.
  assert np.mean(np.abs(whole - small) > 1e-5) < 0.01
  other = cfajax.pgd_attack(tiny_classifier, x, y, epsilon=0.2, steps=5, seed=4)
  assert np.abs(other - whole).max() > 1e-3  # another seed, other starts


def test_bad_inputs_are_named():
  classify = linear_binary(np.zeros(PIXELS))
  x = mid_range(2)
  with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
    cfajax.pgd_attack(classify, x, 1, epsilon=-0.1)
  with pytest.raises(ValueError, match="norm must be one of 'linf', 'l2'"):
    cfajax.pgd_attack(classify, x, 1, epsilon=0.1, norm="l1")
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\) for a classifier with 1"):
    cfajax.pgd_attack(classify, x, 3, epsilon=0.1)
  with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
    cfajax.pgd_attack(classify, x * 2, 1, epsilon=0.1)
  with pytest.raises(ValueError, match=r"images must be images \(n, H, W, C\)"):
    cfajax.pgd_attack(classify, x[0], 1, epsilon=0.1)


def test_adversarial_training_learns_from_the_pgd_images_of_each_step():
  # One PGD-training step equals one plain step on the PGD images that the step's key
  # draws against the weights before the step. The two are compiled as different programs,
  # which may reorder float32 sums (of at most 8 * 8 * 4 terms here): weights of order 1
  # agree to ~100 ulps, 1e-5 relative.
  import jax
  import optax
  from flax import nnx

  from cfajax._pgd import pgd_images
  from cfajax._train import classifier as training
  config = cfajax.ClassifierConfig((8, 8, 1), widths=(4,), dense_width=8, num_outputs=3)
  x = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
  y = jnp.array([0, 1, 2, 0, 1, 2])
  key = jax.random.key(3)
  eps, steps = 0.1, 3
  trained, reference = (cfajax.build_model("classifier", config, seed=0) for _ in range(2))
  tx = optax.sgd(0.5)  # a step that moves every weight by its gradient
  step = training._adversarial_step(trained, eps, "linf", steps)
  step(trained, nnx.Optimizer(trained, tx, wrt=nnx.Param), jnp.asarray(x), y, key)
  adversarial = pgd_images(reference, jnp.asarray(x), y, jax.random.split(key, 6),
                           jnp.float32(eps), 2.5 * eps / steps, steps=steps, norm="linf")
  assert 0 < float(jnp.abs(adversarial - x).max()) <= eps + 1e-6
  training._classifier_train_step(reference, nnx.Optimizer(reference, tx, wrt=nnx.Param),
                                  adversarial, y, None)
  for got, want in zip(jax.tree.leaves(nnx.state(trained, nnx.Param)),
                       jax.tree.leaves(nnx.state(reference, nnx.Param)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  plain = cfajax.build_model("classifier", config, seed=0)
  training._classifier_train_step(plain, nnx.Optimizer(plain, tx, wrt=nnx.Param), jnp.asarray(x),
                                  y, None)
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
      jax.tree.leaves(nnx.state(trained, nnx.Param)), jax.tree.leaves(nnx.state(plain, nnx.Param)),
      strict=True)]
  assert max(moved) > 1e-4  # and it is not the plain step


def test_adversarial_training_options_are_checked():
  digits = cfajax.load_digits().subset(slice(0, 64))
  clf = cfajax.build_model("classifier", cfajax.ClassifierConfig((8, 8, 1), widths=(4,)))
  with pytest.raises(ValueError, match="pgd_norm"):
    cfajax.train_classifier(clf, digits, epochs=1, pgd_epsilon=0.1, pgd_norm="l1",
                            progress=False)
  with pytest.raises(ValueError, match="pgd_steps"):
    cfajax.train_classifier(clf, digits, epochs=1, pgd_epsilon=0.1, pgd_steps=0, progress=False)
  attributes = cfajax.build_model("classifier", cfajax.ClassifierConfig(
      (8, 8, 1), widths=(4,), num_outputs=2, head="sigmoid"))
  with pytest.raises(ValueError, match="one label per image"):
    cfajax.train_classifier(attributes, digits, epochs=1, pgd_epsilon=0.1, progress=False)
