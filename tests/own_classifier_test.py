"""Explaining a classifier cfajax never trained, with a generator it was handed, on files."""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import cfajax
from cfajax._plugin_example import fit_pca
from cfajax._plugin_example import fit_softmax_regression


class LinenCNN(nn.Module):
  """A small Flax Linen CNN: the kind of classifier a user arrives with."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def train_linen_cnn(images, labels, steps=300):
  model = LinenCNN()
  params = model.init(jax.random.key(0), images[:1])
  tx = optax.adam(0.01)

  @jax.jit
  def step(params, state):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, images), labels).mean()
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return model, params


def write_pngs(folder, images):
  folder.mkdir(parents=True)
  for i, image in enumerate(images):
    Image.fromarray(np.round(image[..., 0] * 255).astype(np.uint8), "L").save(
        folder / f"{i:04d}.png")
  return folder


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
  """Digits as PNG files, an attribute CSV of descriptors, a Linen CNN and a PCA generator."""
  root = tmp_path_factory.mktemp("user")
  digits = cfajax.load_digits()
  write_pngs(root / "explain", digits.images[:300])
  aux = write_pngs(root / "aux", digits.images[300:900])
  aux_images = cfajax.load_image_folder(aux).images  # as read back: 8-bit
  values, _ = cfajax.binarize_descriptors(cfajax.digit_descriptors(aux_images))
  lines = ["file," + ",".join(cfajax.DESCRIPTOR_ATTRIBUTE_NAMES)]
  lines += [f"../aux/{i:04d}.png," + ",".join(map(str, row)) for i, row in enumerate(values)]
  (root / "labels").mkdir()
  (root / "labels" / "attributes.csv").write_text("\n".join(lines) + "\n")
  model, params = train_linen_cnn(jnp.asarray(digits.images[300:]),
                                  jnp.asarray(digits.labels[300:]))
  classifier = jax.tree_util.Partial(model.apply, params)
  generator = cfajax.Generator(*fit_pca(digits.images[300:], latent_dim=12))
  return root, classifier, generator


OPTIONS = dict(classes=(4, 9), pool_size=64,
               attack=cfajax.attacks.LatentAttack(threshold=0.6, step_size=0.5, max_steps=200),
               chunk_size=10_000, num_bootstrap=200, num_permutations=40, progress=False,
               log=None)


def test_the_pipeline_gives_the_psi_of_the_pieces_assembled_by_hand(user_files, tmp_path):
  root, classifier, generator = user_files
  summary = cfajax.explain(images=str(root / "explain"),
                           attributes=str(root / "labels" / "attributes.csv"),
                           classifier=classifier, generator=generator, out=str(tmp_path / "run"),
                           **OPTIONS)

  # By hand, with the same public pieces.
  data = cfajax.load_image_folder(root / "explain")
  table = cfajax.AttributeTable.from_csv(root / "labels" / "attributes.csv")
  apply = jax.jit(lambda f, x: f(x))
  logits = np.asarray(apply(classifier, data.images))
  chosen = np.flatnonzero(np.isin(np.argmax(logits, 1), (4, 9)))
  p9 = 1 / (1 + np.exp(logits[chosen, 4].astype(np.float64) - logits[chosen, 9]))
  target = np.where(p9 >= 0.5, 4, 9)
  z = np.asarray(apply(jax.tree_util.Partial(generator.encode), data.images[chosen]))
  fit, check = table.split(0.2, seed=0)
  encode = lambda x: np.asarray(apply(jax.tree_util.Partial(generator.encode), x))
  probes = cfajax.fit_probes(encode(fit.images), fit.values, C=1.0, names=table.names,
                             class_weight="balanced", standardize=True,
                             validation=(encode(check.images), check.values))
  result = cfajax.counterfactual_attack(generator.decode, classifier, z, target, threshold=0.6,
                                        step_size=0.5, max_steps=200, batch_size=64)
  phi = cfajax.local_attributions(probes, z, result.z)
  psi = cfajax.global_attributions(phi, p9, success=result.success, names=table.names,
                                   num_bootstrap=200, seed=0)

  examples = np.load(tmp_path / "run" / "examples.npz")
  np.testing.assert_array_equal(examples["index"], chosen)
  assert list(examples["files"][:2]) == [f"{i:04d}.png" for i in chosen[:2]]
  np.testing.assert_array_equal(examples["steps"], result.steps)
  assert summary["flip_rate"] > 0.9 and summary["num_examples"] == len(chosen) > 40
  got = summary["global_attributions"]
  assert got["ranking"] == psi.to_dict()["ranking"]
  # Same programs on the same inputs: equal up to float32 round-off in the
  # probes' evaluation, far below psi's own bootstrap intervals (~1e-2).
  for a, name in enumerate(table.names):
    assert got["attributes"][name]["psi"] == pytest.approx(float(psi.psi[a]), abs=1e-6)
  assert summary["models"]["classifier"]["source"] == "<Partial from Python>"


def test_an_nnx_model_and_a_plain_function_are_classifiers_too(user_files, tmp_path):
  root, _, generator = user_files
  digits = cfajax.load_digits()
  nnx_classifier = cfajax.build_model("classifier", cfajax.ClassifierConfig(
      (8, 8, 1), 10, widths=(8, 16), dense_width=16))
  nnx_classifier, _ = cfajax.train_classifier(nnx_classifier, digits.subset(slice(300, None)),
                                              epochs=15, batch_size=32, progress=False)
  plain = fit_softmax_regression(digits.images[300:], digits.labels[300:], steps=200)
  for name, classifier in (("nnx", nnx_classifier), ("plain", plain)):
    summary = cfajax.explain(images=cfajax.load_image_folder(root / "explain").images,
                             attributes=str(root / "labels" / "attributes.csv"),
                             classifier=classifier, generator=generator,
                             out=str(tmp_path / name), **OPTIONS)
    assert summary["num_examples"] > 40 and summary["flip_rate"] > 0.5, (name, summary["flip_rate"])
    assert summary["global_attributions"] is not None


FACTORIES = textwrap.dedent("""
    import jax.numpy as jnp
    import numpy as np
    import cfajax
    from cfajax._plugin_example import fit_pca, fit_softmax_regression

    digits = cfajax.load_digits()

    def classifier():
      return fit_softmax_regression(digits.images[300:], digits.labels[300:], steps=200)

    def generator():
      return cfajax.Generator(*fit_pca(digits.images[300:], latent_dim=12))
""")


def test_the_cli_takes_files_and_import_strings(user_files, tmp_path, monkeypatch, capsys):
  from cfajax._cli import main
  root, _, _ = user_files
  (tmp_path / "my_models.py").write_text(FACTORIES)
  monkeypatch.syspath_prepend(str(tmp_path))
  argv = ["explain", "--images", str(root / "explain"), "--attributes",
          str(root / "labels" / "attributes.csv"), "--classifier", "my_models:classifier",
          "--generator", "my_models:generator", "--out", str(tmp_path / "run"),
          "--threshold", "0.6", "--step-size", "0.5", "--max-steps", "200", "--pool-size", "64",
          "--num-bootstrap", "100", "--no-progress"]
  assert main(argv) == 0
  out = capsys.readouterr().out
  assert "class 4 vs 9 on explain/ (300 images)" in out and "top global attributions" in out
  # An import string that does not import, in one line and before any work.
  assert main([*argv[:5], "--classifier", "my_models:absent", *argv[7:]]) == 2
  assert "module 'my_models' has no 'absent'" in capsys.readouterr().err


# -- bad input is named before any work -------------------------------------------------


def test_a_classifier_that_does_not_give_logits_is_refused(user_files, tmp_path):
  root, classifier, generator = user_files
  with pytest.raises(ValueError, match=r"the classifier must map images \(n, 8, 8, 1\) to "
                     r"logits \(n, K\); for n = 2 it gave shape \(2,\)"):
    cfajax.explain(images=str(root / "explain"), attributes=str(root / "labels" /
                   "attributes.csv"), classifier=lambda x: classifier(x)[:, 0],
                   generator=generator, out=str(tmp_path / "never"), **OPTIONS)
  assert not (tmp_path / "never").exists()


def test_images_of_another_shape_than_the_generator_draws_are_refused(user_files, tmp_path):
  root, classifier, generator = user_files
  big = np.zeros((5, 16, 16, 1), np.float32)
  decode_only = jax.tree_util.Partial(generator.decode)
  with pytest.raises(ValueError, match=r"the generator's encode failed on inputs of shape "
                     r"\(2, 16, 16, 1\)"):
    cfajax.explain(images=big, attributes=str(root / "labels" / "attributes.csv"),
                   classifier=lambda x: jnp.zeros((x.shape[0], 10)), generator=generator,
                   out=str(tmp_path / "never"), **OPTIONS)
  with pytest.raises(ValueError, match=r"decode maps latents \(2, 12\) to images "
                     r"\(2, 8, 8, 1\); the images to explain are \(n, 16, 16, 1\)"):
    cfajax.explain(images=big, attributes=str(root / "labels" / "attributes.csv"),
                   classifier=lambda x: jnp.zeros((x.shape[0], 10)), generator=decode_only,
                   latent_dim=12, out=str(tmp_path / "never"), **OPTIONS)
  assert not (tmp_path / "never").exists()


def test_a_bad_attribute_csv_is_named(user_files, tmp_path):
  root, classifier, generator = user_files
  csv = tmp_path / "bad.csv"
  csv.write_text(f"file,thick\n{root}/explain/0000.png,1\n{root}/explain/9999.png,0\n")
  with pytest.raises(FileNotFoundError, match=r"bad.csv names 1 image file\(s\) not in .*9999"):
    cfajax.AttributeTable.from_csv(csv)
  csv.write_text(f"file,thick\n{root}/explain/0000.png,2\n")
  with pytest.raises(ValueError, match=r"line 2, thick: '2' is not a binary value"):
    cfajax.explain(images=str(root / "explain"), attributes=str(csv), classifier=classifier,
                   generator=generator, out=str(tmp_path / "never"), **OPTIONS)
  assert not (tmp_path / "never").exists()


def test_images_need_the_other_inputs_and_no_preset(user_files, tmp_path):
  root, classifier, generator = user_files
  with pytest.raises(ValueError, match="needs a attributes too|needs a classifier too"):
    cfajax.explain(images=str(root / "explain"), generator=generator, out=str(tmp_path / "x"),
                   **OPTIONS)
  with pytest.raises(ValueError, match="dataset='mnist' is a preset that brings its own images"):
    cfajax.explain(images=str(root / "explain"), dataset="mnist", out=str(tmp_path / "x"),
                   **OPTIONS)


def test_a_decoder_only_generator_is_inverted_and_bad_inversions_left_out(user_files, tmp_path):
  root, classifier, generator = user_files
  decode_only = jax.tree_util.Partial(generator.decode)  # no encode: latents by inversion
  images = cfajax.load_image_folder(root / "explain").images[:60].copy()
  images[:3] = 1.0 - images[:3]  # negatives: no PCA latent draws them
  summary = cfajax.explain(images=images, attributes=str(root / "labels" / "attributes.csv"),
                           classifier=classifier, generator=decode_only, latent_dim=12,
                           inversion_steps=150, inversion_step_size=0.1,
                           out=str(tmp_path / "run"), **OPTIONS)
  inversion = summary["inversion"]
  assert inversion["left_out"] >= 1 and inversion["images"] > inversion["left_out"]
  chosen_bad = [i for i in inversion["left_out_indices"] if i < 3]
  assert chosen_bad, inversion  # the negatives are among those left out
  examples = np.load(tmp_path / "run" / "examples.npz")
  assert not set(examples["index"]) & set(inversion["left_out_indices"])
  with pytest.raises(ValueError, match="needs the latent size: pass latent_dim"):
    cfajax.explain(images=images, attributes=str(root / "labels" / "attributes.csv"),
                   classifier=classifier, generator=decode_only, out=str(tmp_path / "never"),
                   **OPTIONS)


def test_latents_found_beforehand_stand_in_for_the_pipelines_inversion(user_files, tmp_path):
  """An `InversionResult` given as `latents` gives the run the pipeline's own inversion gives."""
  root, classifier, generator = user_files
  decode_only = jax.tree_util.Partial(generator.decode)
  images = cfajax.load_image_folder(root / "explain").images[:150]
  images = images[np.isin(np.asarray(classifier(images)).argmax(-1), (4, 9))]
  attributes = str(root / "labels" / "attributes.csv")
  inversion = dict(inversion_steps=150, inversion_step_size=0.1)
  own = cfajax.explain(images=images, attributes=attributes, classifier=classifier,
                       generator=decode_only, latent_dim=12, out=str(tmp_path / "own"),
                       **inversion, **OPTIONS)
  assert own["latents"] == "inverted" and own["num_candidates"] == len(images)
  config = cfajax.ExplainConfig()
  found = cfajax.invert(decode_only, images, latent_dim=12, starts=config.inversion_starts,
                        max_steps=150, step_size=0.1, prior_weight=config.inversion_prior_weight,
                        seed=config.seed, batch_size=OPTIONS["pool_size"])
  given = cfajax.explain(images=images, attributes=attributes, classifier=classifier,
                         generator=decode_only, latent_dim=12, latents=found,
                         out=str(tmp_path / "given"), **inversion, **OPTIONS)
  assert given["latents"] == "given"
  assert given["inversion"] == own["inversion"]
  assert given["global_attributions"] == own["global_attributions"]
  a, b = (np.load(tmp_path / run / "examples.npz") for run in ("own", "given"))
  for key in ("index", "z", "z_cf", "phi"):
    np.testing.assert_array_equal(a[key], b[key])
  # A plain array: no errors, so no image is left out.
  plain = cfajax.explain(images=images, attributes=attributes, classifier=classifier,
                         generator=decode_only, latent_dim=12, latents=np.asarray(found.z),
                         out=str(tmp_path / "plain"), **inversion, **OPTIONS)
  assert plain["inversion"] is None and plain["num_examples"] == len(images)


def test_bad_latents_are_refused_before_any_work(user_files, tmp_path):
  root, classifier, generator = user_files
  images = cfajax.load_image_folder(root / "explain").images[:20]
  run = dict(images=images, attributes=str(root / "labels" / "attributes.csv"),
             classifier=classifier, generator=generator, out=str(tmp_path / "never"), **OPTIONS)
  z = np.zeros((20, 12), np.float32)
  with pytest.raises(ValueError, match=r"one row per image .*: \(20, 12\); got \(19, 12\)"):
    cfajax.explain(latents=z[1:], **run)
  with pytest.raises(ValueError, match=r"latent size: \(20, 12\); got \(20, 11\)"):
    cfajax.explain(latents=z[:, 1:], **run)
  z[3, 4] = np.nan
  with pytest.raises(ValueError, match="latents"):
    cfajax.explain(latents=z, **run)
  with pytest.raises(ValueError, match="latents are for images you pass"):
    cfajax.explain(dataset="digits", latents=z, out=str(tmp_path / "never"), progress=False,
                   log=None)
  assert not (tmp_path / "never").exists()
