"""What cannot work is refused before any work; what is weak is said, in the log and the summary."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfajax
from cfajax._plugin_example import fit_pca
from cfajax._plugin_example import fit_softmax_regression


@pytest.fixture(scope="module")
def user_models():
  """Digits, a PCA generator and a softmax regression: a user's own models."""
  digits = cfajax.load_digits()
  classify = fit_softmax_regression(digits.images[300:], digits.labels[300:])
  generator = cfajax.Generator(*fit_pca(digits.images[300:], latent_dim=12))
  labels, _ = cfajax.binarize_descriptors(cfajax.digit_descriptors(digits.images[300:900]))
  table = cfajax.AttributeTable(cfajax.DESCRIPTOR_ATTRIBUTE_NAMES, labels,
                                images=digits.images[300:900])
  return digits, classify, generator, table


OPTIONS = dict(attack=cfajax.attacks.LatentAttack(max_steps=100), pool_size=64,
               num_bootstrap=50, num_permutations=20, progress=False)


def explain(user_models, out, images=None, classifier=None, generator=None, log=None,
            **options):
  digits, classify, own_generator, table = user_models
  return cfajax.explain(images=digits.images[:300] if images is None else images,
                        classifier=classifier or classify,
                        generator=generator or own_generator,
                        attributes=table, out=str(out), log=log, **{**OPTIONS, **options})


@pytest.mark.parametrize("wrap, match", [
    (jax.nn.softmax, "look like probabilities"),
    (lambda logits: jax.nn.sigmoid(logits[:, :1]), "looks like a sigmoid probability"),
])
def test_probabilities_are_refused_before_anything_is_written(user_models, tmp_path, wrap,
                                                              match):
  _, classify, _, _ = user_models
  out = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    explain(user_models, out, classifier=lambda x: wrap(classify(x)))
  assert not out.exists()  # no folder, no .lock, no run.json


def test_log_probabilities_are_logits(user_models, tmp_path):
  # log-softmax rows differ from the logits by a constant per row, which the
  # softmax and the attack's log-odds ignore: the same counterfactuals.
  _, classify, _, _ = user_models
  plain = explain(user_models, tmp_path / "plain", limit=20)
  logs = explain(user_models, tmp_path / "log", limit=20,
                 classifier=lambda x: jax.nn.log_softmax(classify(x)))
  np.testing.assert_array_equal(
      np.load(tmp_path / "plain" / "examples.npz")["steps"],
      np.load(tmp_path / "log" / "examples.npz")["steps"])
  assert plain["flip_rate"] == logs["flip_rate"]


@pytest.mark.parametrize("classes, match", [
    ((4, 12), r"classes \(4, 12\) do not exist in a classifier with 10 logits"),
    ((2, 7), r"no image of .* is predicted as one of the classes \(2, 7\)"),
])
def test_classes_that_cannot_work_are_refused_before_anything_is_written(user_models, tmp_path,
                                                                         classes, match):
  digits, _, _, _ = user_models
  fours_and_nines = digits.images[np.isin(digits.labels, (4, 9))][:60]
  out = tmp_path / "run"
  # A classifier that only ever says 4 or 9.
  only = lambda x: jnp.zeros((x.shape[0], 10)).at[:, 4].set(x.reshape(x.shape[0], -1).mean(1))
  with pytest.raises(ValueError, match=match):
    explain(user_models, out, images=fours_and_nines, classifier=only, classes=classes)
  assert not out.exists()


def test_a_weak_run_says_so(user_models, tmp_path):
  digits, _, _, _ = user_models
  # Twelve images of 3 and 5 with a 3-vs-5 decision, among images of 2 and 7.
  chosen = np.flatnonzero(np.isin(digits.labels[:300], (3, 5)))[:12]
  others = np.flatnonzero(np.isin(digits.labels[:300], (2, 7)))[:40]
  images = digits.images[np.concatenate([chosen, others])]
  messages = []
  summary = explain(user_models, tmp_path / "weak", images=images, classes=(3, 5),
                    log=messages.append)
  warnings = summary["warnings"]
  assert summary["num_outside_pair"] == len(images) - summary["num_candidates"] > 0
  assert any("predicted as neither class of (3, 5)" in w for w in warnings)
  assert any(f"psi averages only {summary['global_attributions']['num_used']} counterfactuals"
             in w for w in warnings)
  assert all(f"warning: {w}" in messages for w in warnings)
  # Each attribute carries its p-value and its probe's held-out AUC.
  row = next(iter(summary["global_attributions"]["attributes"].values()))
  assert 0 < row["p_value"] <= 1 and 0 <= row["probe_val_auc"] <= 1
  assert summary["global_attributions"]["num_permutations"] == 20


def test_attacks_that_start_at_the_target_are_counted_and_can_be_left_out(user_models,
                                                                          tmp_path):
  # A binary "9 rather than 4" classifier, and a generator whose reconstructions
  # lean toward a 9 (a PCA's, plus the difference of the mean 9 and the mean 4), so
  # that the classifier already calls many a 4's reconstruction a 9, past 0.55.
  digits, classify, _, _ = user_models
  nine = lambda x: classify(x)[:, 9:10] - classify(x)[:, 4:5]
  images = digits.images[:300][np.isin(digits.labels[:300], (4, 9))]
  encode, decode = fit_pca(digits.images[300:], latent_dim=12)
  train = digits.images[300:], digits.labels[300:]
  lean = jnp.asarray(train[0][train[1] == 9].mean(0) - train[0][train[1] == 4].mean(0))
  blurry = cfajax.Generator(encode, lambda z: jnp.clip(decode(z) + lean, 0, 1))
  options = dict(images=images, classifier=nine, generator=blurry,
                 attack=cfajax.attacks.LatentAttack(max_steps=100, threshold=0.55))
  kept = explain(user_models, tmp_path / "kept", **options)
  started = kept["num_started_at_target"]
  examples = np.load(tmp_path / "kept" / "examples.npz")
  at_target = (examples["steps"] == 0) & (examples["status"] == cfajax.Status.REACHED)
  assert started == int(at_target.sum()) > 0
  assert np.all(examples["phi"][at_target] == 0)
  left_out = explain(user_models, tmp_path / "left", exclude_started_at_target=True, **options)
  psi_kept = kept["global_attributions"]
  psi_left = left_out["global_attributions"]
  assert psi_left["num_used"] == psi_kept["num_used"] - started
  # Leaving out phi = 0 rows scales psi by used / (used - started).
  scale = psi_kept["num_used"] / psi_left["num_used"]
  for name, row in psi_kept["attributes"].items():
    assert psi_left["attributes"][name]["psi"] == pytest.approx(row["psi"] * scale, rel=1e-6)
  assert os.path.exists(tmp_path / "left" / "summary.json")


def test_a_threshold_the_classifier_never_gives_real_images_is_flagged(user_models, tmp_path):
  # Logits scaled by 0.05: no digit gets 0.9 for its own class, and through a PCA
  # (images clipped to [0, 1]) no counterfactual can either.
  _, classify, _, _ = user_models
  summary = explain(user_models, tmp_path / "flat", limit=20,
                    classifier=lambda x: 0.05 * classify(x))
  assert summary["real_at_threshold"] == 0.0
  assert any("its logits are flat" in w for w in summary["warnings"])
