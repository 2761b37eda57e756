"""Tests of the PyTorch peers in `benchmarks/torch_peers.py` against cfajax.

They need torch (`pip install -e ".[bench]"`) and skip without it.
"""

import os
import sys

import numpy as np
import pytest

# exc_type=ImportError: a torch that is installed but fails to import skips too.
torch = pytest.importorskip(
    "torch", reason="the PyTorch peers need torch: pip install -e '.[bench]'",
    exc_type=ImportError)

import cfajax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import torch_peers  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def models(tiny_vae, tiny_classifier):
  """The tiny models, the classifier's last layer scaled x20 so that an attack moves it."""
  # Untrained, the classifier's probabilities hardly move with the latent.
  tiny_classifier.logits.kernel[...] = tiny_classifier.logits.kernel[...] * 20.0
  return tiny_vae, tiny_classifier


def test_decoder_and_classifier_match_jax(models):
  vae, classifier = models
  decoder, torch_classifier = torch_peers.torch_models(vae, classifier, torch.float32, CPU)
  z = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
  with torch_peers._full_float32(), torch.no_grad():
    images = decoder(torch.from_numpy(z)).permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC
    want_images = np.asarray(vae.decode(z))
    logits = torch_classifier(torch.from_numpy(np.array(want_images)).permute(0, 3, 1, 2)).numpy()
    want_logits = np.asarray(classifier(want_images))
  # The same float32 sums in another order: differences of a few ulps, ~1e-7
  # of values of order 1; 1e-5 leaves room and still catches a misplaced
  # channel or pixel, which moves values by O(1).
  np.testing.assert_allclose(images, want_images, rtol=0, atol=1e-5)
  scale = np.abs(want_logits).max()
  np.testing.assert_allclose(logits / scale, want_logits / scale, rtol=0, atol=1e-5)

  errors = torch_peers.check_equivalence(vae, classifier, precision="float32", device=CPU)
  assert errors["max_rel_error"] <= 1e-5, errors
  assert errors["grad_median_rel_error"] <= 1e-5, errors


def test_eager_attack_matches_counterfactual_attack(models):
  vae, classifier = models
  z = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32) * 2
  logits = np.asarray(classifier(vae.decode(z)))
  target = np.argsort(logits, axis=1)[:, -2].astype(np.int32)  # the runner-up class
  target[0] = np.argmax(logits[0])  # already above the threshold: stops at 0 steps
  options = dict(threshold=0.5, max_steps=30, step_size=0.5)
  decoder, torch_classifier = torch_peers.torch_models(vae, classifier, torch.float32, CPU)
  with torch_peers._full_float32():
    want = cfajax.counterfactual_attack(vae.decode, classifier, z, target, batch_size=8,
                                        optimizer="ascent", **options)
    got_z, got_steps, got_status, _ = torch_peers.attack_eager(
        decoder, torch_classifier, torch.from_numpy(z), torch.from_numpy(target.astype(np.int64)),
        **options)
  want_steps, want_status = np.asarray(want.steps), np.asarray(want.status)
  # The latents were picked so that both outcomes and a 0-step stop occur.
  assert want_steps[0] == 0
  assert {cfajax.Status.REACHED, cfajax.Status.MAX_STEPS} <= set(want_status.tolist())
  np.testing.assert_array_equal(got_steps.numpy(), want_steps)
  np.testing.assert_array_equal(got_status.numpy(), want_status)
  # Up to 30 steps of size 0.5 with float32 gradients that agree to ~1e-6:
  # measured differences are below 1e-5.
  np.testing.assert_allclose(got_z.numpy(), np.asarray(want.z), rtol=0, atol=1e-4)
