"""Shared test helpers and tiny models.

Each new parameter shape costs a compilation of the random initialisers, so
the test files reuse the same few configs. Test modules may also import each
other's helpers (e.g. `from attack_test import mlp_models`).
"""

import os
import sys

import pytest
from flax import nnx

import cfajax

sys.path.insert(0, os.path.dirname(__file__))

TINY_VAE = cfajax.VAEConfig((8, 8, 1), latent_dim=4, widths=(8, 16))
TINY_CLASSIFIER = cfajax.ClassifierConfig((8, 8, 1), 10, widths=(8, 16), dense_width=16)


@pytest.fixture
def tiny_vae():
  return cfajax.ConvVAE(TINY_VAE, rngs=nnx.Rngs(0))


@pytest.fixture
def tiny_classifier():
  return cfajax.Classifier(TINY_CLASSIFIER, rngs=nnx.Rngs(0))
