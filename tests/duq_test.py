"""DUQ: its certainty and centroid update against their formulas, training, checkpoints."""

import jax.numpy as jnp
import numpy as np
import pytest

import cfajax

CONFIG = cfajax.DUQConfig(image_shape=(8, 8, 1), num_classes=3, widths=(8,), dense_width=16,
                          embedding_size=5, length_scale=0.5, momentum=0.9)


def test_log_certainty_is_the_scaled_distance_to_each_centroid():
  duq = cfajax.build_model("duq", CONFIG, seed=0)
  x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
  embeddings = np.asarray(duq.embed(x))  # (4, 3, 5)
  centroids = np.asarray(duq.centroid_sum[...]) / np.asarray(duq.centroid_count[...])[:, None]
  want = -np.mean((embeddings - centroids) ** 2, axis=-1) / (2 * 0.5 ** 2)
  np.testing.assert_allclose(duq.log_certainty(x), want, rtol=1e-5, atol=1e-6)


def test_centroids_move_by_their_moving_average():
  duq = cfajax.build_model("duq", CONFIG, seed=1)
  x = np.random.default_rng(1).random((6, 8, 8, 1)).astype(np.float32)
  y = np.array([0, 0, 2, 2, 2, 0])
  count, total = np.asarray(duq.centroid_count[...]), np.asarray(duq.centroid_sum[...])
  embeddings = np.asarray(duq.embed(x))
  duq.update_centroids(jnp.asarray(x), jnp.asarray(y))
  onehot = np.eye(3)[y]
  np.testing.assert_allclose(duq.centroid_count[...], 0.9 * count + 0.1 * onehot.sum(0),
                             rtol=1e-6)
  np.testing.assert_allclose(duq.centroid_sum[...], 0.9 * total + 0.1 * np.einsum(
      "bk,bkm->km", onehot, embeddings), rtol=1e-5, atol=1e-6)
  assert np.asarray(duq.centroid_count[...])[1] == pytest.approx(0.9 * count[1])  # no class 1


def test_training_separates_classes_and_doubts_noise(tmp_path):
  train, test = cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)
  duq = cfajax.build_model("duq", cfajax.DUQConfig(image_shape=(8, 8, 1), widths=(16, 32)))
  duq, history = cfajax.train_duq(duq, train, test, epochs=10, progress=False)
  assert history[-1]["test_accuracy"] > 0.8, history[-1]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  noise = np.random.default_rng(2).random((200, 8, 8, 1)).astype(np.float32)
  certainty = lambda images: np.exp(np.max(np.asarray(duq.log_certainty(images)), -1))
  assert np.median(certainty(noise)) < np.median(certainty(test.images))
  # A checkpoint keeps the centroids, which the optimizer never touched.
  cfajax.save_model(tmp_path / "duq", duq)
  loaded = cfajax.load_model(tmp_path / "duq")
  np.testing.assert_array_equal(loaded.centroids(), duq.centroids())
  np.testing.assert_array_equal(loaded.log_certainty(test.images[:5]),
                                duq.log_certainty(test.images[:5]))


def test_bad_configs_and_labels_are_named():
  with pytest.raises(ValueError, match="num_classes must be >= 2"):
    cfajax.DUQConfig(num_classes=1)
  with pytest.raises(ValueError, match="length_scale must be a finite number > 0"):
    cfajax.DUQConfig(length_scale=0.0)
  duq = cfajax.build_model("duq", CONFIG)
  digits = cfajax.load_digits()
  with pytest.raises(ValueError, match=r"labels lie in \[0, 9\]; the DUQ model has 3 classes"):
    cfajax.train_duq(duq, digits, epochs=1, progress=False)


def test_cfajax_train_duq_writes_a_manifold_model_that_explain_uses(tmp_path):
  from cfajax._cli import main
  path = tmp_path / "duq"
  assert main(["train", "duq", "--dataset", "digits", "--epochs", "2", "--widths", "8,16",
               "--no-progress", "--out", str(path)]) == 0
  info = cfajax.read_checkpoint_info(path)
  assert info["kind"] == "duq" and info["config"]["num_classes"] == 10
  assert [r["epoch"] for r in info["metrics"]["history"]] == [1, 2]
  from cfajax import _recipes
  celeba_like = cfajax.ImageDataset(np.zeros((4, 8, 8, 3), np.float32),
                                    attributes=np.array([[0, 1], [1, 0], [1, 1], [0, 0]]),
                                    attribute_names=("Young", "Male"))
  assert list(_recipes._with_attribute_labels(celeba_like, "Male").labels) == [1, 0, 1, 0]
  with pytest.raises(ValueError, match="a CelebA DUQ learns one attribute's two values"):
    _recipes.train_model("duq", "celeba", celeba_like, celeba_like, attributes=("Young", "Male"))
