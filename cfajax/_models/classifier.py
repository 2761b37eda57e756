"""The convolutional classifier (softmax or per-attribute sigmoid heads), and one head of it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cfajax._models._base import _check_image_shape
from cfajax._models._base import _check_widths
from cfajax._models._base import _Config
from cfajax._models._layers import _conv_layer
from cfajax._models._layers import _halvings
from cfajax._models._layers import bernoulli_bce
from cfajax._models._layers import max_pool_2x2

HEADS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(_Config):
  """Architecture of a `Classifier`.

  Attributes:
    image_shape: (H, W, C) of the images.
    num_outputs: K logits: the classes of a softmax head, or the independent
      binary attributes of a sigmoid head.
    head: "softmax" (one of K classes) or "sigmoid" (K binary attributes).
    widths: channels of each stage; a stage is `depth` 3x3 convolutions then
      a 2x2 max pool.
    depth: convolutions per stage.
    dense_width: width of the hidden dense layer before the logits.
    output_names: optional names of the K outputs (class or attribute names).
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  num_outputs: int = 10
  head: str = "softmax"
  widths: tuple[int, ...] = (32, 64)
  depth: int = 1
  dense_width: int = 128
  output_names: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
    object.__setattr__(self, "widths", _check_widths(self.widths, "widths"))
    object.__setattr__(self, "output_names", tuple(self.output_names))
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}; got {self.head!r}")
    if int(self.num_outputs) != self.num_outputs or self.num_outputs < 1:
      raise ValueError(f"num_outputs must be a positive int; got {self.num_outputs}")
    if self.head == "softmax" and self.num_outputs < 2:
      raise ValueError("a softmax head needs num_outputs >= 2; use head='sigmoid' for one")
    if self.output_names and len(self.output_names) != self.num_outputs:
      raise ValueError(
          f"output_names has {len(self.output_names)} names for {self.num_outputs} outputs")
    for name in ("depth", "dense_width"):
      if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
        raise ValueError(f"{name} must be a positive int; got {getattr(self, name)}")


class Classifier(nnx.Module):
  """A CNN giving K logits: one softmax over K classes, or K sigmoid attributes.

  `depth` 3x3 convolutions then a 2x2 max pool per stage (`config.widths`),
  a dense hidden layer, and K logits. For a sigmoid head each logit is an
  independent attribute's log-odds.

  Example:
    >>> clf = Classifier(ClassifierConfig(image_shape=(8, 8, 1)), rngs=nnx.Rngs(0))
    >>> logits = clf(x)              # (B, 10)
  """

  def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
    self.config = config
    height, width, channels = config.image_shape
    convs = []
    previous = channels
    for out in config.widths:
      for _ in range(config.depth):
        convs.append(_conv_layer(previous, out, (3, 3), rngs=rngs))
        previous = out
    self.convs = nnx.data(convs)
    stages = len(config.widths)
    flat = _halvings(height, stages)[-1] * _halvings(width, stages)[-1] * config.widths[-1]
    self.hidden = nnx.Linear(flat, config.dense_width, rngs=rngs)
    self.logits = nnx.Linear(config.dense_width, config.num_outputs, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) in [0, 1] -> the penultimate layer (B, dense_width).

    What `cfajax.metrics.frechet_distance` compares when this classifier is
    an independent oracle (the role an Inception network plays in FID).
    """
    h = x
    for i, conv in enumerate(self.convs):
      h = nnx.relu(conv(h))
      if (i + 1) % self.config.depth == 0:
        h = max_pool_2x2(h)
    return nnx.relu(self.hidden(h.reshape(h.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) in [0, 1] -> logits (B, K)."""
    return self.logits(self.features(x))

  def probabilities(self, x: jax.Array) -> jax.Array:
    """(B, K): softmax probabilities, or each attribute's sigmoid probability."""
    logits = self(x)
    return jax.nn.softmax(logits) if self.config.head == "softmax" else jax.nn.sigmoid(logits)

  def predict(self, x: jax.Array) -> jax.Array:
    """(B,) class indices (softmax) or (B, K) {0, 1} attributes (sigmoid)."""
    logits = self(x)
    if self.config.head == "softmax":
      return jnp.argmax(logits, axis=-1)
    return (logits > 0).astype(jnp.int32)

  def loss(self, x: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy and accuracy.

    Args:
      x: (B, H, W, C) images.
      y: (B,) int class labels (softmax), or (B, K) {0, 1} attributes (sigmoid).

    Returns:
      `(loss, metrics)`: softmax cross-entropy, or binary cross-entropy averaged
      over the K attributes; metrics "loss", "accuracy" and, for a sigmoid
      head, "accuracy_per_output" (K,).
    """
    logits = self(x)
    if self.config.head == "softmax":
      loss = jnp.mean(-jnp.take_along_axis(
          jax.nn.log_softmax(logits), y[:, None].astype(jnp.int32), axis=-1))
      accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
      return loss, {"loss": loss, "accuracy": accuracy}
    y = y.astype(logits.dtype)
    loss = jnp.mean(bernoulli_bce(logits, y))
    per_output = jnp.mean((logits > 0) == (y > 0.5), axis=0)
    return loss, {"loss": loss, "accuracy": jnp.mean(per_output),
                  "accuracy_per_output": per_output}


class OneOutput(nnx.Module):
  """One sigmoid head of a multi-attribute classifier, as a (B, 1) classifier."""

  def __init__(self, classifier, column: int):
    self.classifier = classifier
    self.column = column

  def __call__(self, x):
    return self.classifier(x)[:, self.column:self.column + 1]


def select_output(classifier: Classifier, attribute: str):
  """The classifier's sigmoid head for `attribute`, as a (B, 1) binary classifier.

  A multi-attribute CelebA classifier (`--attributes Young,Male,...`) gives
  one logit per attribute; the attack and the explanation need one. A
  one-head classifier is returned as is.

  Raises:
    ValueError: the classifier has no sigmoid output named `attribute`.
  """
  names = tuple(classifier.config.output_names)
  if classifier.config.head != "sigmoid" or attribute not in names:
    raise ValueError(f"the classifier predicts {list(names) or classifier.config.num_outputs}, "
                     f"not the CelebA attribute {attribute!r}")
  return classifier if len(names) == 1 else OneOutput(classifier, names.index(attribute))
