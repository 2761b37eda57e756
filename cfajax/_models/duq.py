"""DUQ (van Amersfoort et al. 2020): a classifier whose distance to class centroids is a
manifold score."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cfajax._models._base import _check_image_shape
from cfajax._models._base import _check_widths
from cfajax._models._base import _Config
from cfajax._models.classifier import Classifier
from cfajax._models.classifier import ClassifierConfig


@dataclasses.dataclass(frozen=True)
class DUQConfig(_Config):
  """Architecture of a `DUQ` certainty model (van Amersfoort et al., ICML 2020).

  Attributes:
    image_shape, widths, depth, dense_width: the feature network, a
      `Classifier`'s convolutions and hidden layer.
    num_classes: K classes, one centroid each.
    embedding_size: m, the size of each class's embedding of the features.
    length_scale: sigma of the RBF kernel `K_c = exp(-mean_j (W_c f(x) - e_c)_j^2 / (2 sigma^2))`.
    momentum: gamma of the centroids' moving average.
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 10
  widths: tuple[int, ...] = (32, 64)
  depth: int = 1
  dense_width: int = 128
  embedding_size: int = 64
  length_scale: float = 0.1
  momentum: float = 0.999

  def __post_init__(self):
    object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
    object.__setattr__(self, "widths", _check_widths(self.widths, "widths"))
    for name in ("num_classes", "embedding_size"):
      if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
        raise ValueError(f"{name} must be a positive int; got {getattr(self, name)}")
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2; got {self.num_classes}")
    if not (math.isfinite(self.length_scale) and self.length_scale > 0):
      raise ValueError(f"length_scale must be a finite number > 0; got {self.length_scale}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")


class Centroid(nnx.Param):
  """A DUQ centroid statistic: saved with the weights, moved by its moving
  average, never by the optimizer."""


# DUQ's reference implementation starts each class's count at 13 and its
# centroid sum at 13 draws of N(0, 0.05^2).
_CENTROID_START_COUNT = 13.0


class DUQ(nnx.Module):
  """Deterministic uncertainty quantification: a class is certain near its centroid.

  A `Classifier`'s network whose last layer gives K embeddings of size m
  (`W_c f(x)`); class c's certainty is the RBF kernel
  `K_c(x) = exp(-mean_j (W_c f(x) - e_c)_j^2 / (2 sigma^2))` to its centroid
  `e_c`, a moving average of the class's training embeddings. Far from every
  centroid every certainty is low: DUQ's measure of how far an input is from
  the data it was trained on. `data_free_attack` uses it as DISC's
  manifold-consistency model. Train it with `train_duq`.

  Example:
    >>> duq = DUQ(DUQConfig(image_shape=(28, 28, 1)), rngs=nnx.Rngs(0))
    >>> duq.log_certainty(x)           # (B, 10), <= 0
  """

  def __init__(self, config: DUQConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.network = Classifier(ClassifierConfig(
        image_shape=config.image_shape, num_outputs=config.num_classes * config.embedding_size,
        widths=config.widths, depth=config.depth, dense_width=config.dense_width), rngs=rngs)
    shape = (config.num_classes, config.embedding_size)
    count = _CENTROID_START_COUNT
    self.centroid_count = Centroid(jnp.full((config.num_classes,), count))
    self.centroid_sum = Centroid(0.05 * count * jax.random.normal(rngs.params(), shape))

  def embed(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) -> (B, K, m) class embeddings `W_c f(x)`."""
    return self.network(x).reshape(x.shape[0], self.config.num_classes, -1)

  def centroids(self) -> jax.Array:
    """(K, m) the class centroids `e_c`."""
    return self.centroid_sum[...] / self.centroid_count[...][:, None]

  def log_certainty(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) -> (B, K) `log K_c(x)`, each <= 0."""
    distance = jnp.mean(jnp.square(self.embed(x) - self.centroids()), axis=-1)
    return -distance / (2 * self.config.length_scale ** 2)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, K) log-certainties; their argmax is DUQ's class."""
    return self.log_certainty(x)

  def update_centroids(self, x: jax.Array, y: jax.Array) -> None:
    """Moves each class's centroid toward the embeddings of its examples in (x, y)."""
    gamma = self.config.momentum
    onehot = jax.nn.one_hot(y, self.config.num_classes)
    embeddings = jax.lax.stop_gradient(self.embed(x))
    self.centroid_count[...] = gamma * self.centroid_count[...] + (1 - gamma) * onehot.sum(0)
    self.centroid_sum[...] = (gamma * self.centroid_sum[...]
                              + (1 - gamma) * jnp.einsum("bk,bkm->km", onehot, embeddings))

  def loss(self, x: jax.Array, y: jax.Array, gradient_penalty: float = 0.5):
    """DUQ's objective: binary cross-entropy of each certainty against the
    one-hot label, plus `gradient_penalty * (||grad_x sum_c K_c||_2 - 1)^2`.

    Returns:
      `(loss, metrics)` with "loss", "bce", "penalty" and "accuracy".
    """
    def total_certainty(x):
      certainty = jnp.exp(self.log_certainty(x))
      return jnp.sum(certainty), certainty

    grads, certainty = jax.grad(total_certainty, has_aux=True)(x)
    onehot = jax.nn.one_hot(y, self.config.num_classes)
    clipped = jnp.clip(certainty, 1e-6, 1 - 1e-6)
    bce = -jnp.mean(jnp.sum(onehot * jnp.log(clipped) + (1 - onehot) * jnp.log1p(-clipped), -1))
    norm = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(len(x), -1)), axis=-1) + 1e-12)
    penalty = jnp.mean(jnp.square(norm - 1))
    loss = bce + gradient_penalty * penalty
    accuracy = jnp.mean(jnp.argmax(certainty, -1) == y)
    return loss, {"loss": loss, "bce": bce, "penalty": penalty, "accuracy": accuracy}
