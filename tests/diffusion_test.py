"""The diffusion generator: a latent attack through DDIM, differentiable with and without
rematerialisation (its checks against diffusers are in diffusers_test.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cfajax

from conftest import enable_x64

CONFIG = cfajax.UNetConfig(image_shape=(8, 8, 1), widths=(8, 16), down_attention=(False, True),
                           up_attention=(True, False), groups=4)


def generator(remat=True, steps=6, depth=0.5, seed=0):
  unet = cfajax.UNet(CONFIG, rngs=nnx.Rngs(seed))
  return cfajax.DiffusionGenerator(unet, cfajax.NoiseSchedule(), steps=steps, depth=depth,
                                   remat=remat)


def brightness(images):
  """A two-class 'classifier': class 1's logit is the mean pixel's log-odds."""
  m = jnp.clip(images.reshape(len(images), -1).mean(1), 1e-4, 1 - 1e-4)
  logit = jnp.log(m) - jnp.log1p(-m)
  return jnp.stack([-logit, logit], axis=1)


def test_rematerialisation_changes_no_gradient():
  # The same program with each step recomputed in the backward pass: under float64 the
  # gradients agree to float64 round-off (2^-53 over a few hundred products per pixel).
  z = np.random.default_rng(0).standard_normal((3, 64))
  with enable_x64():
    grads = []
    for remat in (True, False):
      g = generator(remat=remat)
      graphdef, state = nnx.split(g)
      g64 = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                                             if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                             state))
      loss = lambda z, g64=g64: jnp.sum(jnp.sin(3 * g64.decode(z)))
      grads.append(np.asarray(jax.grad(loss)(jnp.asarray(z))))
  scale = np.abs(grads[1]).max()
  assert scale > 0
  np.testing.assert_allclose(grads[0], grads[1], rtol=0, atol=1e-12 * scale)


def test_the_edit_depth_sets_the_steps_each_way():
  g = generator(steps=10, depth=0.3)
  assert g.edit_steps == 3 and list(g.edit_timesteps()) == [0, 100, 200]
  assert generator(steps=10, depth=0.01).edit_steps == 1
  images = np.random.default_rng(1).random((2, 8, 8, 1)).astype(np.float32)
  z = g.encode(images)
  assert z.shape == (2, 64) and np.all(np.isfinite(z))
  x = g.decode(z)
  assert x.shape == (2, 8, 8, 1) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_the_attack_moves_latents_through_the_diffusion_generator():
  g = generator(steps=4, depth=0.5)
  dark = np.full((4, 8, 8, 1), 0.3, np.float32)
  z = np.asarray(g.encode(dark))
  result = cfajax.counterfactual_attack(g.decode, brightness, z, 1, threshold=0.6,
                                        max_steps=50)
  assert np.all(np.asarray(result.status) == cfajax.Status.REACHED)
  after = np.asarray(brightness(g.decode(result.z)))
  assert np.all(after[:, 1] > after[:, 0])


@pytest.mark.parametrize("options, match", [
    (dict(depth=0), r"depth must be in \(0, 1\]"),
    (dict(depth=1.5), r"depth must be in \(0, 1\]"),
    (dict(steps=0), r"steps must be an integer in \[1, 1000\]"),
    (dict(steps=2.5), r"steps must be an integer"),
])
def test_bad_options_are_refused(options, match):
  with pytest.raises(ValueError, match=match):
    generator(**options)


def test_a_unet_that_cannot_halve_the_image_is_refused():
  with pytest.raises(ValueError, match=r"multiples of 2; got \(7, 8\)"):
    cfajax.UNetConfig(image_shape=(7, 8, 1), widths=(8, 16), groups=4)
