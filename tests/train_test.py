"""Tests of training and evaluation on scikit-learn's digits (no download)."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

import cfajax
from cfajax import _train

from conftest import TINY_CLASSIFIER
from conftest import TINY_VAE


@pytest.fixture(scope="module")
def digits():
  return cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)


def with_attributes(dataset):
  """Digits with two binary attributes, "odd" and "big" (>= 5)."""
  attributes = np.stack([dataset.labels % 2, dataset.labels >= 5], 1).astype(np.uint8)
  return dataclasses.replace(dataset, attributes=attributes, attribute_names=("odd", "big"))


def test_vae_training_decreases_the_loss(digits, tiny_vae):
  train, test = digits
  before = cfajax.evaluate_vae(tiny_vae, test)
  _, history = cfajax.train_vae(tiny_vae, train, test, epochs=3, batch_size=64,
                                learning_rate=3e-3, progress=False)
  assert [r["epoch"] for r in history] == [1, 2, 3]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert history[-1]["test_loss"] < before["loss"]
  assert history[-1]["test_recon_bce"] < before["recon_bce"]
  for key in ("train_recon_bce", "train_mse", "train_kl", "test_mse", "test_kl", "seconds"):
    assert np.isfinite(history[-1][key]), key


def test_classifier_training_decreases_the_loss(digits, tiny_classifier):
  train, test = digits
  before = cfajax.evaluate_classifier(tiny_classifier, test)
  _, history = cfajax.train_classifier(tiny_classifier, train, test, epochs=4, batch_size=32,
                                       learning_rate=3e-3, progress=False)
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert history[-1]["test_loss"] < before["loss"]
  # Ten classes start near 10%; four epochs of a tiny CNN reach about 87% (seed 0).
  assert before["accuracy"] < 0.3 < 0.5 < history[-1]["test_accuracy"]


def test_sigmoid_heads_learn_named_attributes(digits):
  train, test = map(with_attributes, digits)
  # Outputs in another order than the dataset's columns: picked by name.
  config = dataclasses.replace(TINY_CLASSIFIER, num_outputs=2, head="sigmoid",
                               output_names=("big", "odd"))
  classifier = cfajax.Classifier(config, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(_train.classifier_targets(classifier, test),
                                test.attributes[:, ::-1])
  seen = []
  _, history = cfajax.train_classifier(classifier, train, test, epochs=2, batch_size=64,
                                       learning_rate=3e-3, progress=False, on_epoch=seen.append)
  assert seen == history
  last = history[-1]
  assert {"test_accuracy/big", "test_accuracy/odd", "train_accuracy/big"} <= set(last)
  np.testing.assert_allclose(last["test_accuracy"],
                             (last["test_accuracy/big"] + last["test_accuracy/odd"]) / 2)
  assert last["test_accuracy"] > 0.6


def test_training_is_reproducible_from_the_seed(digits):
  train, _ = digits
  small = train.subset(slice(0, 256))
  runs = []
  for _ in range(2):
    model = cfajax.build_model("classifier", TINY_CLASSIFIER, seed=3)
    _, history = cfajax.train_classifier(model, small, epochs=1, batch_size=64, seed=5,
                                         progress=False)
    runs.append(history[0]["train_loss"])
  assert runs[0] == runs[1]


def test_targets_that_do_not_fit_are_rejected(digits, tiny_classifier):
  train, _ = digits
  sigmoid = cfajax.Classifier(dataclasses.replace(
      TINY_CLASSIFIER, num_outputs=1, head="sigmoid", output_names=("Smiling",)),
      rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Smiling"):
    cfajax.train_classifier(sigmoid, with_attributes(train), progress=False)
  with pytest.raises(ValueError, match="labels in"):
    cfajax.evaluate_classifier(tiny_classifier, dataclasses.replace(
        train, labels=train.labels + 5))
  with pytest.raises(ValueError, match="shape"):
    cfajax.train_vae(cfajax.ConvVAE(TINY_VAE, rngs=nnx.Rngs(0)),
                     np.zeros((4, 28, 28, 1), np.float32), progress=False)


def test_reconstruct_pads_the_last_batch(tiny_vae):
  x = np.random.default_rng(0).random((7, 8, 8, 1)).astype(np.float32)
  batched = cfajax.reconstruct(tiny_vae, x, batch_size=3)
  np.testing.assert_allclose(batched, tiny_vae.reconstruct(x), atol=1e-6)


def test_no_images_give_no_outputs_of_the_right_shape(tiny_vae):
  from cfajax._batching import apply_batched
  empty = np.zeros((0, 8, 8, 1), np.float32)
  out = apply_batched(tiny_vae.encode, empty)
  assert out.shape == (0, tiny_vae.config.latent_dim) and out.dtype == np.float32
  assert cfajax.reconstruct(tiny_vae, empty).shape == (0, 8, 8, 1)


def test_optimizer_schedule_warms_up_then_decays():
  schedule_peak = 1e-2
  tx = _train.make_optimizer(schedule_peak, total_steps=100)
  state = tx.init({"w": np.zeros(())})
  rates = []
  for _ in range(100):
    # With a unit gradient Adam's first update is -lr; the schedule shows in |update|.
    updates, state = tx.update({"w": np.ones(())}, state)
    rates.append(-float(updates["w"]))
  assert rates[0] < rates[5] <= schedule_peak * 1.001
  assert rates[-1] < rates[50] < rates[5]
