"""The translator: a one-pass counterfactual generator with its critic (Bischof et al. 2023)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cfajax._models._base import _check_image_shape
from cfajax._models._base import _check_widths
from cfajax._models._base import _Config
from cfajax._models._layers import _conv_layer
from cfajax._models.classifier import Classifier
from cfajax._models.classifier import ClassifierConfig


@dataclasses.dataclass(frozen=True)
class TranslatorConfig(_Config):
  """Architecture of a `Translator` (Bischof et al., arXiv 2310.00761).

  Attributes:
    image_shape: (H, W, C) of the images.
    num_classes: K real classes; the critic has K + 1 outputs, the last "fake".
    widths: the translation network's channels per level of its U-Net (a
      3x3 convolution at full size, then one stride-2 4x4 convolution per
      further level, mirrored on the way up with skip connections).
    critic_widths, critic_depth, dense_width: the critic's `Classifier`
      architecture (`ClassifierConfig.widths`, `.depth`, `.dense_width`).
    class_names: optional names of the K classes.
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 2
  widths: tuple[int, ...] = (32, 64, 64)
  critic_widths: tuple[int, ...] = (32, 64)
  critic_depth: int = 1
  dense_width: int = 128
  class_names: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
    object.__setattr__(self, "widths", _check_widths(self.widths, "widths"))
    object.__setattr__(self, "critic_widths", _check_widths(self.critic_widths, "critic_widths"))
    object.__setattr__(self, "class_names", tuple(self.class_names))
    if int(self.num_classes) != self.num_classes or self.num_classes < 2:
      raise ValueError(f"num_classes must be an int >= 2; got {self.num_classes}")
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(
          f"class_names has {len(self.class_names)} names for {self.num_classes} classes")

  def critic_config(self) -> ClassifierConfig:
    """The critic: a softmax `Classifier` over the K classes and "fake"."""
    names = self.class_names + ("fake",) if self.class_names else ()
    return ClassifierConfig(image_shape=self.image_shape, num_outputs=self.num_classes + 1,
                            widths=self.critic_widths, depth=self.critic_depth,
                            dense_width=self.dense_width, output_names=names)


class TranslationNet(nnx.Module):
  """`(x, target) -> r`: a small U-Net whose input and bottleneck see the target
  class as K constant one-hot channels; `r` in (-1, 1) per pixel and channel
  says how far to move each value toward white (r > 0) or black (r < 0).

  The last convolution starts at zero, so an untrained network changes nothing.
  """

  def __init__(self, config: TranslatorConfig, *, rngs: nnx.Rngs):
    channels, k, widths = config.image_shape[2], config.num_classes, config.widths
    self.num_classes = k
    self.stem = _conv_layer(channels + k, widths[0], (3, 3), rngs=rngs)
    self.down = nnx.data([_conv_layer(i + (k if level == len(widths) - 1 else 0), o, (4, 4),
                                   strides=2, rngs=rngs)
                          for level, (i, o)
                          in enumerate(zip(widths[:-1], widths[1:], strict=True), 1)])
    self.up = nnx.data([_conv_layer(o + i, i, (3, 3), rngs=rngs)
                        for i, o in zip(widths[:-1], widths[1:], strict=True)][::-1])
    self.out = _conv_layer(widths[0], channels, (1, 1), kernel_init=nnx.initializers.zeros,
                        rngs=rngs)

  def _with_target(self, h, onehot):
    planes = jnp.broadcast_to(onehot[:, None, None, :], h.shape[:3] + (self.num_classes,))
    return jnp.concatenate([h, planes], axis=-1)

  def __call__(self, x: jax.Array, target: jax.Array) -> jax.Array:
    """Images (B, H, W, C) in [0, 1] and (B,) int targets -> r (B, H, W, C) in (-1, 1)."""
    onehot = jax.nn.one_hot(target, self.num_classes, dtype=x.dtype)
    h = nnx.silu(self.stem(self._with_target(x, onehot)))
    skips = []
    for level, conv in enumerate(self.down, 1):
      skips.append(h)
      h = self._with_target(h, onehot) if level == len(self.down) else h
      h = nnx.silu(conv(h))
    for conv, skip in zip(self.up, skips[::-1], strict=True):
      h = jax.image.resize(h, skip.shape[:3] + h.shape[3:], "nearest")
      h = nnx.silu(conv(jnp.concatenate([h, skip], axis=-1)))
    return jnp.tanh(self.out(h))


def translate_with(generator: TranslationNet, x: jax.Array, target: jax.Array) -> jax.Array:
  """Each value moved the fraction |r| of the way to 1 (r > 0) or to 0 (r < 0).

  Written as `x + r / 2 + |r| (1 - 2x) / 2`, which is `x + r (1 - x)` for r > 0
  and `x + r x` for r < 0: the image stays in [0, 1] without clipping (whose
  zero gradient would stall training). |r| is spelled `r sign(r)`, whose
  gradient at 0 is 0 (`jnp.abs`'s is 1), so at r = 0, where an untrained
  network starts, the gradient is 1/2 for every pixel: neither a black nor a
  white pixel starts dead.
  """
  r = generator(x, target)
  return x + 0.5 * r + 0.5 * r * jnp.sign(r) * (1 - 2 * x)


class Translator(nnx.Module):
  """An image-to-image counterfactual generator and its classifier-discriminator.

  The framework of Bischof et al. (arXiv 2310.00761): a translation network
  `G(x, target)` rewrites an image into a chosen class in one forward pass,
  and one critic both classifies real images into their K classes and flags
  generated ones as a (K+1)-th class, "fake". Trained by `train_translator`.
  As a classifier (`__call__`) the translator gives the critic's K class
  logits, so PGD, the attacks and `explain` can use it as any other model;
  `fakeness` is the critic's probability of "fake", proposed as an
  uncertainty measure.

  Example:
    >>> tr = Translator(TranslatorConfig(image_shape=(8, 8, 1), num_classes=10),
    ...                 rngs=nnx.Rngs(0))
    >>> x_cf = tr.translate(x, jnp.full((len(x),), 3))    # (B, 8, 8, 1)
    >>> saliency = jnp.abs(x_cf - x)
  """

  def __init__(self, config: TranslatorConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.generator = TranslationNet(config, rngs=rngs)
    self.critic = Classifier(config.critic_config(), rngs=rngs)

  def translate(self, x: jax.Array, target: jax.Array) -> jax.Array:
    """(B, H, W, C) images in [0, 1], (B,) int targets -> (B, H, W, C) counterfactuals
    in [0, 1] (`translate_with`)."""
    return translate_with(self.generator, x, target)

  def critic_logits(self, x: jax.Array) -> jax.Array:
    """(B, K + 1) logits: the K classes, then "fake"."""
    return self.critic(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, K) class logits: the critic's, given that the image is real."""
    return self.critic(x)[:, :-1]

  def fakeness(self, x: jax.Array) -> jax.Array:
    """(B,) the critic's softmax probability that each image is generated."""
    return jax.nn.softmax(self.critic(x))[:, -1]
