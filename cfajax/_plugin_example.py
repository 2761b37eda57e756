"""Models cfajax did not train, as an example of the plug-in contract.

The generator is a PCA of images (a linear decoder `x = mean + z @ components`),
the classifier a softmax regression fitted with optax. Both are plain JAX
functions: any such pair plugs into `counterfactual_attack`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def fit_pca(images: np.ndarray, latent_dim: int):
  """Returns (encode, decode) of a PCA with `latent_dim` components."""
  flat = images.reshape(len(images), -1)
  mean = flat.mean(0)
  _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
  components = jnp.asarray(vt[:latent_dim], jnp.float32)
  mean = jnp.asarray(mean, jnp.float32)
  encode = lambda x: (x.reshape(x.shape[0], -1) - mean) @ components.T
  decode = lambda z: jnp.clip(z @ components + mean, 0, 1).reshape(-1, *images.shape[1:])
  return encode, decode


def fit_softmax_regression(images: np.ndarray, labels: np.ndarray, steps: int = 300):
  """Returns `classify(x) -> logits` fitted by Adam on the cross-entropy."""
  x = jnp.asarray(images.reshape(len(images), -1))
  y = jnp.asarray(labels)
  params = (jnp.zeros((x.shape[1], 10)), jnp.zeros(10))
  tx = optax.adam(0.05)

  def loss(p):
    logits = x @ p[0] + p[1]
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            + 1e-3 * jnp.sum(p[0] ** 2))

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  w, b = params
  return lambda images: images.reshape(images.shape[0], -1) @ w + b
