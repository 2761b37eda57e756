"""Projected gradient descent (Madry et al., ICLR 2018): the reference attack for robustness.

For each image `x` with label `y`, from a random start in the epsilon-ball,
repeat `steps` times

    x' <- project_{B(x, eps) and [0, 1]}( x' + step_size * direction(grad_x' loss(f(x'), y)) )

where the loss is the classifier's cross-entropy of the true label (binary
cross-entropy for a one-logit classifier), the direction is the gradient's
sign for the L-infinity ball and the gradient over its L2 norm for the L2
ball, and the projection clips the change to the ball (scales it, for L2)
and the image to [0, 1]. One example's update is written alone and vmapped;
the whole loop is one jitted `fori_loop` per batch, with epsilon and the step
size traced (a sweep over them compiles once) and the number of steps and the
norm static.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cfajax import _array_checks
from cfajax import _checks
from cfajax._batching import apply_batched
from cfajax._batching import map_batches
from cfajax._callables import as_pure_callable
from cfajax._sources import output_width

NORMS = ("linf", "l2")


def label_loss(logits: jax.Array, label: jax.Array) -> jax.Array:
  """One example's cross-entropy of its label: softmax over K >= 2 logits, or
  binary cross-entropy of label 1 against 0 for one logit."""
  if logits.shape[-1] == 1:
    margin = jnp.where(label == 1, logits[0], -logits[0])
    return -jax.nn.log_sigmoid(margin)
  return -jax.nn.log_softmax(logits)[label]


def _project(delta: jax.Array, x: jax.Array, epsilon, norm: str) -> jax.Array:
  """`delta` moved into the epsilon-ball, then so that `x + delta` lies in [0, 1]."""
  if norm == "linf":
    delta = jnp.clip(delta, -epsilon, epsilon)
  else:
    length = jnp.sqrt(jnp.sum(jnp.square(delta)))
    delta = delta * jnp.minimum(1.0, epsilon / jnp.maximum(length, 1e-12))
  # Clipping the image only shrinks each coordinate of delta toward 0: it stays in either ball.
  return jnp.clip(x + delta, 0.0, 1.0) - x


def _direction(grad: jax.Array, norm: str) -> jax.Array:
  if norm == "linf":
    return jnp.sign(grad)
  return grad / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(grad))), 1e-12)


def _random_start(key, x, epsilon, norm: str):
  """A uniform draw from the L-infinity cube, or a draw of uniform direction and
  radius epsilon * U^(1/d) (uniform in the L2 ball), projected."""
  if norm == "linf":
    delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * epsilon
  else:
    k1, k2 = jax.random.split(key)
    direction = jax.random.normal(k1, x.shape, x.dtype)
    direction = direction / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(direction))), 1e-12)
    radius = epsilon * jax.random.uniform(k2, (), x.dtype) ** (1.0 / x.size)
    delta = direction * radius
  return _project(delta, x, epsilon, norm)


def pgd_images(classify, x, labels, keys, epsilon, step_size, *, steps: int, norm: str,
               random_start: bool = True) -> jax.Array:
  """(B, H, W, C) adversarial images for one batch, each row from its own key: the
  traceable core of `pgd_attack`, for use inside a jitted training step."""
  def total_loss(delta):
    logits = classify(x + delta)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return jnp.sum(jax.vmap(label_loss)(logits, labels))

  if random_start:
    delta = jax.vmap(_random_start, in_axes=(0, 0, None, None))(keys, x, epsilon, norm)
  else:
    delta = jnp.zeros_like(x)

  def step(_, delta):
    grad = jax.grad(total_loss)(delta)  # row i depends on its own delta alone
    moved = delta + step_size * jax.vmap(_direction, in_axes=(0, None))(grad, norm)
    return jax.vmap(_project, in_axes=(0, 0, None, None))(moved, x, epsilon, norm)

  return x + jax.lax.fori_loop(0, steps, step, delta)


_pgd_batch = jax.jit(pgd_images, static_argnames=("steps", "norm", "random_start"))


def _check_labels(labels, n: int, num_logits: int) -> np.ndarray:
  """`labels` as (n,) int32, each a class of the classifier (0 or 1 for one logit)."""
  labels = np.asarray(labels)
  if labels.ndim > 1 or (labels.ndim == 1 and len(labels) != n):
    raise ValueError(f"labels must be a scalar or have shape ({n},), one per image; got shape "
                     f"{labels.shape}")
  if labels.dtype.kind not in "iub":
    raise ValueError(f"labels must be integer classes; got dtype {labels.dtype}")
  classes = 2 if num_logits == 1 else num_logits
  if labels.size and (labels.min() < 0 or labels.max() >= classes):
    raise ValueError(f"labels must lie in [0, {classes}) for a classifier with {num_logits} "
                     f"logit(s); got values in [{labels.min()}, {labels.max()}]")
  return np.broadcast_to(labels, (n,)).astype(np.int32)


def pgd_attack(
    classify: Callable,
    images,
    labels,
    *,
    epsilon: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 1024,
) -> np.ndarray:
  """Adversarial images within `epsilon` of each image that raise the loss of its label.

  Args:
    classify: images (B, H, W, C) -> logits (B, K), as for the attack.
    images: (n, H, W, C) float images in [0, 1].
    labels: () or (n,) true labels (for one logit, 0 or 1).
    epsilon: the ball's radius, >= 0 (L-infinity: per pixel, e.g. 0.3 for
      MNIST; L2: of the whole change).
    norm: "linf" or "l2".
    steps: gradient steps (10 and 40 are the usual budgets).
    step_size: each step's length (default 2.5 * epsilon / steps, Madry et
      al.'s choice, so that the boundary is reachable from any start).
    random_start: start from a uniform point of the ball (per example, from
      `seed`), not from the image.
    batch_size: images per compiled batch (the last padded).

  Returns:
    (n, H, W, C) float32 adversarial images, each within `epsilon` of its
    image in `norm` (up to float32 rounding) and in [0, 1].

  Raises:
    ValueError: on images, labels or options of the wrong type, shape or range.
  """
  x = _array_checks.finite_rows(images, "images", 4, "images (n, H, W, C)",
                                "image").astype(np.float32)
  _checks.choice("norm", norm, NORMS)
  epsilon = _checks.number("epsilon", epsilon, low=0.0)
  steps = _checks.integer("steps", steps, low=0)
  step_size = 2.5 * epsilon / max(steps, 1) if step_size is None else step_size
  step_size = _checks.number("step_size", step_size, low=0.0)
  batch_size = _checks.integer("batch_size", batch_size, low=1)
  if x.size and (x.min() < 0 or x.max() > 1):
    raise ValueError(f"images must lie in [0, 1]; got values in [{x.min():.4g}, {x.max():.4g}]")
  pure = as_pure_callable(classify)
  labels = _check_labels(labels, len(x), output_width(pure, x.shape[1:], "classify"))
  if len(x) == 0:
    return x
  keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed), len(x))))
  run = lambda xb, yb, kb: _pgd_batch(
      pure, jnp.asarray(xb), jnp.asarray(yb), jax.random.wrap_key_data(jnp.asarray(kb)),
      jnp.float32(epsilon), jnp.float32(step_size), steps=steps, norm=norm,
      random_start=bool(random_start))
  return map_batches(run, [x, labels, keys], batch_size)


def robust_accuracy(classify: Callable, images, labels, **pgd_options) -> dict[str, float]:
  """Clean and PGD accuracy of a classifier (`pgd_attack`'s options).

  Returns:
    {"clean": accuracy on `images`, "robust": accuracy on their PGD images}.
  """
  labels = np.asarray(labels)
  adversarial = pgd_attack(classify, images, labels, **pgd_options)

  def accuracy(x):
    logits = apply_batched(classify, x)
    predicted = (logits[:, 0] > 0).astype(int) if logits.shape[-1] == 1 else logits.argmax(-1)
    return float(np.mean(predicted == labels))

  return {"clean": accuracy(np.asarray(images, np.float32)), "robust": accuracy(adversarial)}
