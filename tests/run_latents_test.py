"""A run inverts each distinct image once, however many of its image sets hold it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax import _inputs
from cfajax import _sources
from cfajax._plugin_example import fit_pca
from cfajax._plugin_example import fit_softmax_regression

D = 4


def linear_parts(seed=0):
  a = jnp.asarray(np.random.default_rng(seed).normal(size=(D, 9)) / 2, jnp.float32)
  decode = jax.tree_util.Partial(lambda a, z: (z @ a).reshape(-1, 3, 3, 1), a)
  return _sources.GeneratorParts(decode=decode, encode=None, latent_dim=D)


@pytest.fixture
def counted(monkeypatch):
  """The images each `invert` call of `_inputs` is given."""
  calls = []
  real = _inputs.invert

  def invert(decode, images, **options):
    calls.append(np.array(images))
    return real(decode, images, **options)

  monkeypatch.setattr(_inputs, "invert", invert)
  return calls


def test_an_image_in_two_sets_is_inverted_once_and_gets_one_latent(counted):
  config = cfajax.ExplainConfig(inversion_starts=2, inversion_steps=40)
  parts = linear_parts()
  contract = _inputs.Contract((3, 3, 1), D, 2)
  images = np.random.default_rng(1).random((10, 3, 3, 1)).astype(np.float32)
  latents = _inputs.RunLatents(config, parts, contract, False, lambda message: None)
  z_a, errors_a = latents(images[:6], "images to explain")
  # The second set repeats rows 4 and 5 of the first, and its own row 8 twice.
  z_b, errors_b = latents(images[[4, 8, 6, 5, 8, 7]], "images of a table")
  assert [len(c) for c in counted] == [6, 3] and latents.inverted == 9
  np.testing.assert_array_equal(counted[1], images[[8, 6, 7]])
  np.testing.assert_array_equal(z_b[[0, 3]], z_a[[4, 5]])
  np.testing.assert_array_equal(errors_b[[0, 3]], errors_a[[4, 5]])
  np.testing.assert_array_equal(z_b[1], z_b[4])
  # Images all new: what a separate `invert` with the run's options finds.
  direct = cfajax.invert(parts.decode, images[:6],
                         **_inputs.inversion_options(config, D))
  np.testing.assert_array_equal(z_a, direct.z)
  np.testing.assert_array_equal(errors_a, direct.pixel_mse)
  z_c, errors_c = latents(images[:0], "no images")
  assert z_c.shape == (0, D) and errors_c.shape == (0,) and len(counted) == 2


def test_latents_given_beforehand_are_not_found_again(counted):
  config = cfajax.ExplainConfig(inversion_starts=2, inversion_steps=40)
  latents = _inputs.RunLatents(config, linear_parts(), _inputs.Contract((3, 3, 1), D, 2), False,
                               lambda message: None)
  images = np.random.default_rng(2).random((3, 3, 3, 1)).astype(np.float32)
  z = np.arange(3 * D, dtype=np.float32).reshape(3, D)
  latents.remember(images[:2], z[:2], np.array([0.5, 0.25]))
  z_t, errors_t = latents(images[::-1], "images of a table")
  assert [len(c) for c in counted] == [1]
  np.testing.assert_array_equal(z_t[1:], z[1::-1])
  np.testing.assert_array_equal(errors_t[1:], [0.25, 0.5])


def test_explain_inverts_the_union_of_explained_and_tabled_images_once(counted, tmp_path):
  digits = cfajax.load_digits()
  train, images = digits.images[300:], digits.images[:80]
  classify = fit_softmax_regression(train, digits.labels[300:])
  _, decode = fit_pca(train, latent_dim=8)
  decode_only = jax.tree_util.Partial(decode)
  predicted = np.asarray(classify(images)).argmax(-1)
  images = images[np.isin(predicted, (4, 9))]
  # The table holds every explained image and as many others.
  table_images = np.concatenate([images, digits.images[100:100 + len(images)]])
  values, _ = cfajax.binarize_descriptors(cfajax.digit_descriptors(table_images))
  table = cfajax.AttributeTable(cfajax.DESCRIPTOR_ATTRIBUTE_NAMES, values, images=table_images,
                                name="descriptors")
  distinct = len({_inputs.image_digest(x) for x in table_images})
  summary = cfajax.explain(images=images, attributes=table, classifier=classify,
                           generator=decode_only, latent_dim=8, classes=(4, 9),
                           inversion_starts=2, inversion_steps=60, pool_size=64,
                           attack=cfajax.attacks.LatentAttack(max_steps=50),
                           num_bootstrap=50, out=str(tmp_path / "run"), progress=False, log=None)
  assert summary["latents"] == "inverted"
  assert sum(len(c) for c in counted) == distinct < len(images) + len(table_images)
