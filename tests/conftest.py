"""Shared test helpers and tiny models.

Each new parameter shape costs a compilation of the random initialisers, so
the test files reuse the same few configs. Test modules may also import each
other's helpers (e.g. `from attack_test import mlp_models`).
"""

import atexit
import os
import shutil
import sys
import tempfile

# One persistent compilation cache for this test session and the processes its
# tests start (which inherit the environment): a subprocess that runs a
# program the session already compiled loads it instead of compiling it again.
# It is XLA's own cache, keyed by the program, the compile options and the
# devices, so it changes no result; it starts empty in every session.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="cfajax-tests-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax
import numpy as np
import pytest
from flax import nnx

import cfajax

sys.path.insert(0, os.path.dirname(__file__))

TINY_VAE = cfajax.VAEConfig((8, 8, 1), latent_dim=4, widths=(8, 16))
TINY_CLASSIFIER = cfajax.ClassifierConfig((8, 8, 1), 10, widths=(8, 16), dense_width=16)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
  """Drops each test module's compiled programs when it ends: the suite compiles a few
  thousand, which none of the later modules reuses, and holding them all grows the
  process for nothing (a run of the whole suite on the Colab stack once crashed inside
  XLA's compiler late in the run; the module it crashed in passed alone)."""
  yield
  jax.clear_caches()


@pytest.fixture
def tiny_vae():
  return cfajax.ConvVAE(TINY_VAE, rngs=nnx.Rngs(0))


@pytest.fixture
def tiny_classifier():
  return cfajax.Classifier(TINY_CLASSIFIER, rngs=nnx.Rngs(0))


def enable_x64():
  """A context in which JAX computes in 64 bits (the API moved between jax 0.7 and 0.8)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64 as experimental_enable_x64
  return experimental_enable_x64()


# What "a latent's result does not depend on its batch" means (README, "What is
# guaranteed"): the same steps and status, and latents equal up to the round-off
# of a different summation order inside batched matrix products. The tests
# check it in float64. There that round-off is ~1e-16 relative per operation;
# the attack's dynamics amplify it, and the same tests in float32 (round-off
# 6e-8) differ by up to 8.7e-5, an amplification below 1e3, i.e. below ~2e-13
# in float64. Z_ATOL sits 5e3 times above that and 1e6 times below the
# smallest real difference these tests can meet: one extra or missing update,
# step_size * |grad| >= 1e-3 for every moving latent in them.
Z_ATOL = 1e-9


def assert_same_results(a, b):
  """Two attacks' results agree: steps and status exactly, values to round-off."""
  np.testing.assert_array_equal(a.steps, b.steps)
  np.testing.assert_array_equal(a.status, b.status)
  np.testing.assert_array_equal(a.target, b.target)
  np.testing.assert_allclose(a.z, b.z, rtol=0, atol=Z_ATOL)
  # Probabilities are stored in float32: equal values round to within 1 ulp.
  np.testing.assert_allclose(a.initial_prob, b.initial_prob, rtol=2**-23, atol=0)
  np.testing.assert_allclose(a.final_prob, b.final_prob, rtol=2**-23, atol=0)

