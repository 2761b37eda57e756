"""The translator: shapes and ranges, its blend formula, target conditioning, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import _models

CONFIG = cfajax.TranslatorConfig(image_shape=(8, 8, 1), num_classes=3, widths=(8, 16, 16),
                                 critic_widths=(8,), dense_width=16)


def _images(n, seed=0):
  return np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)


def _randomize_output_layer(translator, seed=0):
  """The last convolution starts at zero (an identity translator); give it weights."""
  kernel = translator.generator.out.kernel
  kernel[...] = 0.5 * jax.random.normal(jax.random.key(seed), kernel.shape)


def test_shapes_and_ranges_and_an_untrained_translator_changes_nothing():
  translator = cfajax.build_model("translator", CONFIG, seed=0)
  x = _images(5)
  target = jnp.array([0, 1, 2, 0, 1])
  np.testing.assert_array_equal(translator.translate(x, target), x)
  assert translator(x).shape == (5, 3)
  logits = translator.critic_logits(x)
  assert logits.shape == (5, 4)
  np.testing.assert_allclose(translator.fakeness(x), jax.nn.softmax(logits)[:, -1], rtol=1e-6)
  np.testing.assert_allclose(translator(x), logits[:, :3])
  _randomize_output_layer(translator)
  translated = np.asarray(translator.translate(x, target))
  assert translated.shape == x.shape
  assert translated.min() >= 0.0 and translated.max() <= 1.0
  assert np.abs(translated - x).max() > 0.05


def test_translate_moves_each_value_the_fraction_r_toward_white_or_black():
  x = jnp.array([0.0, 0.2, 0.5, 0.9, 1.0, 0.3]).reshape(1, 2, 3, 1)
  r = jnp.array([0.5, -0.5, 1.0, -1.0, 0.7, 0.0]).reshape(1, 2, 3, 1)
  got = _models.translate_with(lambda images, target: r, x, None)
  want = np.where(r > 0, x + r * (1 - x), x + r * x)  # the two cases, written apart
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # At r = 0 the gradient is 1/2 toward either side, not zero (a dead start).
  grad = jax.grad(lambda r: jnp.sum(_models.translate_with(lambda *_: r, x, None)))(0 * r)
  np.testing.assert_allclose(grad, 0.5)


def test_each_row_follows_its_own_target():
  translator = cfajax.build_model("translator", CONFIG, seed=1)
  _randomize_output_layer(translator, seed=1)
  x = _images(6, seed=1)
  targets = jnp.array([0, 1, 2, 2, 1, 0])
  batch = np.asarray(translator.translate(x, targets))
  for t in range(3):
    alone = np.asarray(translator.translate(x, jnp.full((6,), t)))
    rows = np.asarray(targets) == t
    # The same rows through the same network: equal up to float32 round-off.
    np.testing.assert_allclose(batch[rows], alone[rows], rtol=1e-5, atol=1e-6)
    # A different target changes the image.
    assert np.abs(alone[~rows] - batch[~rows]).max() > 1e-3


def test_training_learns_to_translate_digits_into_the_target_class(tmp_path):
  train, test = cfajax.split_dataset(cfajax.load_digits(), 0.2, seed=0)
  config = cfajax.TranslatorConfig(image_shape=(8, 8, 1), num_classes=10, widths=(16, 32),
                                   critic_widths=(16, 32), dense_width=32)
  translator = cfajax.build_model("translator", config, seed=0)
  translator, history = cfajax.train_translator(translator, train, test, epochs=6,
                                                batch_size=32, learning_rate=1e-3,
                                                progress=False)
  final = history[-1]
  assert final["test_accuracy"] > 0.8, final  # the critic classifies real digits
  # Translations land in their target class far above chance: a translator that
  # ignored its target would reach about (1 - accuracy) / 9 < 0.03.
  assert final["test_flipped"] > 0.5, final
  assert final["test_fakeness_translated"] > final["test_fakeness_real"], final
  assert 0 < final["test_change"] < 0.5, final
  cfajax.save_model(tmp_path / "translator", translator)
  loaded = cfajax.load_model(tmp_path / "translator")
  assert isinstance(loaded, cfajax.Translator)
  targets = jnp.arange(5) % 10
  np.testing.assert_array_equal(loaded.translate(test.images[:5], targets),
                                translator.translate(test.images[:5], targets))


def test_bad_configs_labels_and_weights_are_named():
  with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
    cfajax.TranslatorConfig(num_classes=1)
  with pytest.raises(ValueError, match="class_names has 1 names for 2 classes"):
    cfajax.TranslatorConfig(class_names=("a",))
  translator = cfajax.build_model("translator", CONFIG)
  digits = cfajax.load_digits()
  with pytest.raises(ValueError, match=r"labels lie in \[0, 9\]; the translator has 3 classes"):
    cfajax.train_translator(translator, digits, epochs=1, progress=False)
  unlabelled = cfajax.ImageDataset(digits.images[:10])
  with pytest.raises(ValueError, match="has no class labels"):
    cfajax.train_translator(translator, unlabelled, epochs=1, progress=False)
  three = digits.subset(np.flatnonzero(digits.labels < 3))
  with pytest.raises(ValueError, match="loss weights must be finite and >= 0"):
    cfajax.train_translator(translator, three, epochs=1, cycle_weight=-1.0, progress=False)


def test_cfajax_train_translator_writes_a_checkpoint(tmp_path):
  from cfajax._cli import main
  path = tmp_path / "translator"
  assert main(["train", "translator", "--dataset", "digits", "--epochs", "1", "--widths", "8,16",
               "--no-progress", "--out", str(path)]) == 0
  info = cfajax.read_checkpoint_info(path)
  assert info["kind"] == "translator" and info["config"]["num_classes"] == 10
  assert info["config"]["widths"] == [8, 16]
  assert "test_flipped" in info["metrics"]["history"][0]


def test_a_translator_is_a_classifier_for_pgd():
  translator = cfajax.build_model("translator", CONFIG, seed=2)
  x = _images(4, seed=2)
  labels = np.array([0, 1, 2, 0])
  adversarial = cfajax.pgd_attack(translator, x, labels, epsilon=0.1, steps=3)
  assert np.abs(np.asarray(adversarial) - x).max() <= 0.1 + 1e-6
