"""Generators and classifiers as Flax NNX modules, each rebuilt from a small config.

Any pair of JAX callables `encode(x) -> z` and `decode(z) -> x` is a generator
for cfajax; `ConvVAE` is one that cfajax can train. `Generator` bundles such a
pair, e.g. for a model trained elsewhere:

    >>> from cfajax._plugin_example import fit_pca
    >>> digits = cfajax.load_digits()
    >>> pca = cfajax.Generator(*fit_pca(digits.images, latent_dim=16))
    >>> z = pca.encode(digits.images[:8])                       # (8, 16)
    >>> result = cfajax.counterfactual_attack(pca.decode, classifier, z, target=3)
    >>> counterfactuals = pca.decode(result.z)                 # (8, 8, 8, 1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple
from typing import overload

import jax
import jax.numpy as jnp
from flax import nnx

from cfajax._conv import conv_general_dilated

HEADS = ("softmax", "sigmoid")


class Generator(NamedTuple):
  """A generator as two JAX callables; `ConvVAE` has the same two methods.

  Attributes:
    encode: maps images (B, H, W, C) to latents (B, d), deterministically.
    decode: maps latents (B, d) to images (B, H, W, C).
  """

  encode: Callable[[jax.Array], jax.Array]
  decode: Callable[[jax.Array], jax.Array]


def _check_image_shape(image_shape) -> tuple[int, int, int]:
  shape = tuple(int(s) for s in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C) with positive sizes; got {image_shape}")
  return shape


def _check_widths(widths, name: str) -> tuple[int, ...]:
  widths = tuple(int(w) for w in widths)
  if not widths or min(widths) < 1:
    raise ValueError(f"{name} must be a non-empty sequence of positive ints; got {widths}")
  return widths


class _Config:
  """`to_dict`/`from_dict` for the frozen config dataclasses (JSON-safe)."""

  # dataclasses.fields: the subclasses are dataclasses.
  def to_dict(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}  # pyright: ignore[reportArgumentType]

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}  # pyright: ignore[reportArgumentType]
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected {sorted(names)}")
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class VAEConfig(_Config):
  """Architecture and objective of a `ConvVAE`.

  Attributes:
    image_shape: (H, W, C) of the images.
    latent_dim: size d of the latent.
    widths: channels of the encoder's stride-2 convolutions, one per halving
      of the resolution; the decoder mirrors them. (32, 64) suits 28x28 and
      8x8 images; 64x64 faces want four, e.g. (32, 64, 128, 256).
    beta: weight of the KL term in the objective (beta-VAE; 1 is the ELBO).
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  latent_dim: int = 16
  widths: tuple[int, ...] = (32, 64)
  beta: float = 1.0

  def __post_init__(self):
    object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
    object.__setattr__(self, "widths", _check_widths(self.widths, "widths"))
    if int(self.latent_dim) != self.latent_dim or self.latent_dim < 1:
      raise ValueError(f"latent_dim must be a positive int; got {self.latent_dim}")
    if not (math.isfinite(self.beta) and self.beta >= 0):
      raise ValueError(f"beta must be a finite number >= 0; got {self.beta}")


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


def _halvings(size: int, times: int) -> list[int]:
  """[size, ceil(size/2), ...]: the spatial sizes after each SAME stride-2 layer."""
  sizes = [size]
  for _ in range(times):
    sizes.append(-(-sizes[-1] // 2))
  return sizes


def _conv_layer(*args, **kwargs) -> nnx.Conv:
  """An `nnx.Conv` whose input gradient XLA runs fast inside the attack's loop (`_conv.py`)."""
  return nnx.Conv(*args, conv_general_dilated=conv_general_dilated, **kwargs)


def _depth_to_space(x: jax.Array) -> jax.Array:
  """(B, h, w, 4c) -> (B, 2h, 2w, c): each pixel's channels become a 2x2 block."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c // 4)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pool, stride 2, "SAME" padding, as a reshape and a max.

  The same values and gradients as `nnx.max_pool(x, (2, 2), (2, 2), "SAME")`,
  but its gradient is a cheap elementwise mask: XLA's select-and-scatter,
  which reduce_window's gradient lowers to, ran 56x slower than the forward
  pass on CPU and bounded the attack's step rate (benchmarks/RESULTS.md).
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:  # SAME pads the far edge with -inf, as reduce_window does
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
  return x.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


def _subpixel_decoder(latent_dim: int, widths, channels: int, flat: int, rngs):
  """The layers of a sub-pixel convolutional decoder (shared by the VAE and the GAN)."""
  outs = tuple(widths[-2::-1]) + (channels,)
  return (nnx.Linear(latent_dim, flat, rngs=rngs),
          nnx.data([_conv_layer(i, 4 * o, (3, 3), rngs=rngs)
                    for i, o in zip(widths[::-1], outs, strict=True)]))


def _subpixel_decode(from_latent, decoder, heights, widths_px, last_width, z):
  """Latents (B, d) -> logits (B, H, W, C): a dense layer to the smallest map, then per
  level a 3x3 convolution to four times the channels and depth-to-space, cropped
  where a size was odd."""
  h = nnx.silu(from_latent(z))
  h = h.reshape(z.shape[0], heights[-1], widths_px[-1], last_width)
  for level, conv in zip(range(len(decoder) - 1, -1, -1), decoder, strict=True):
    h = _depth_to_space(conv(h))[:, :heights[level], :widths_px[level]]
    if level > 0:
      h = nnx.silu(h)
  return h


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) summed over the last axis, in closed form.

  Args:
    mean, logvar: (..., d).

  Returns:
    (...,) nats.
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


class ConvVAE(nnx.Module):
  """A convolutional VAE with a Bernoulli (sigmoid) decoder.

  Encoder: stride-2 4x4 convolutions (`config.widths`), then dense layers to
  the mean and log-variance. Decoder: a dense layer to the smallest feature
  map, then per level a 3x3 convolution to four times the channels and a
  depth-to-space rearrangement that doubles the resolution (sub-pixel
  convolution), cropped where a size was odd; the last level gives the
  image's logits directly. On CPU this trains several times faster than
  transposed convolutions, and the decoder runs inside every attack step.

  Example:
    >>> vae = ConvVAE(VAEConfig(image_shape=(8, 8, 1), latent_dim=8), rngs=nnx.Rngs(0))
    >>> z = vae.encode(x)            # (B, 8), the mean: deterministic
    >>> images = vae.decode(z)       # (B, 8, 8, 1) in [0, 1]
  """

  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
    self.config = config
    height, width, channels = config.image_shape
    widths = config.widths
    self.heights = tuple(_halvings(height, len(widths)))
    self.widths_px = tuple(_halvings(width, len(widths)))
    ins = (channels,) + widths[:-1]
    self.encoder = nnx.data([_conv_layer(i, o, (4, 4), strides=2, rngs=rngs)
                             for i, o in zip(ins, widths, strict=True)])
    flat = self.heights[-1] * self.widths_px[-1] * widths[-1]
    self.to_mean = nnx.Linear(flat, config.latent_dim, rngs=rngs)
    self.to_logvar = nnx.Linear(flat, config.latent_dim, rngs=rngs)
    self.from_latent, self.decoder = _subpixel_decoder(config.latent_dim, widths, channels,
                                                       flat, rngs)

  def encode_stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images (B, H, W, C) in [0, 1] -> (mean, logvar), each (B, d)."""
    h = x
    for conv in self.encoder:
      h = nnx.silu(conv(h))
    h = h.reshape(h.shape[0], -1)
    return self.to_mean(h), self.to_logvar(h)

  def encode(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) -> latents (B, d): the posterior mean, no sampling."""
    return self.encode_stats(x)[0]

  def decode_logits(self, z: jax.Array) -> jax.Array:
    """Latents (B, d) -> per-pixel logits (B, H, W, C)."""
    return _subpixel_decode(self.from_latent, self.decoder, self.heights, self.widths_px,
                            self.config.widths[-1], z)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latents (B, d) -> images (B, H, W, C) in [0, 1]."""
    return jax.nn.sigmoid(self.decode_logits(z))

  def reconstruct(self, x: jax.Array) -> jax.Array:
    """decode(encode(x)): the deterministic reconstruction, (B, H, W, C)."""
    return self.decode(self.encode(x))

  def __call__(self, x: jax.Array, rngs: nnx.Rngs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The training forward pass: encode, sample z ~ q(z|x), decode.

    Args:
      x: (B, H, W, C) images in [0, 1].
      rngs: draws the noise from its `sample` stream (or its default).

    Returns:
      `(logits, mean, logvar)`: (B, H, W, C) decoder logits of the sampled
      latents, and the posterior's (B, d) mean and log-variance.
    """
    mean, logvar = self.encode_stats(x)
    noise = jax.random.normal(rngs.sample(), mean.shape, mean.dtype)
    z = mean + jnp.exp(0.5 * logvar) * noise
    return self.decode_logits(z), mean, logvar

  def loss(self, x: jax.Array, rngs: nnx.Rngs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The negative beta-ELBO per image, averaged over the batch.

    reconstruction + beta * KL, where reconstruction is the Bernoulli
    cross-entropy summed over pixels (nats per image).

    Returns:
      `(loss, metrics)`: a scalar, and per-batch means of "loss",
      "recon_bce" (per pixel), "mse" (per pixel) and "kl" (nats per image).
    """
    logits, mean, logvar = self(x, rngs)
    bce = jnp.mean(bernoulli_bce(logits, x), axis=(1, 2, 3))  # (B,) per pixel
    pixels = math.prod(self.config.image_shape)
    kl = gaussian_kl(mean, logvar)
    loss = jnp.mean(bce * pixels + self.config.beta * kl)
    mse = jnp.mean(jnp.square(jax.nn.sigmoid(logits) - x))
    return loss, {"loss": loss, "recon_bce": jnp.mean(bce), "mse": mse, "kl": jnp.mean(kl)}


def bernoulli_bce(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Elementwise -[x log sigmoid(l) + (1-x) log sigmoid(-l)]; x may be in [0, 1]."""
  return jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


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


@dataclasses.dataclass(frozen=True)
class GANConfig(_Config):
  """Architecture of a `ConvGAN`.

  Attributes:
    image_shape: (H, W, C) of the images.
    latent_dim: size d of the latent; the prior is N(0, I).
    widths: the generator's channels per level, as a VAE decoder's
      (`VAEConfig.widths`), and the discriminator's stride-2 convolutions.
  """

  image_shape: tuple[int, int, int] = (28, 28, 1)
  latent_dim: int = 32
  widths: tuple[int, ...] = (32, 64)

  def __post_init__(self):
    object.__setattr__(self, "image_shape", _check_image_shape(self.image_shape))
    object.__setattr__(self, "widths", _check_widths(self.widths, "widths"))
    if int(self.latent_dim) != self.latent_dim or self.latent_dim < 1:
      raise ValueError(f"latent_dim must be a positive int; got {self.latent_dim}")


class ConvGenerator(nnx.Module):
  """A GAN's generator: the VAE's sub-pixel decoder, latents N(0, I) -> images in [0, 1]."""

  def __init__(self, config: GANConfig, *, rngs: nnx.Rngs):
    height, width, channels = config.image_shape
    self.heights = tuple(_halvings(height, len(config.widths)))
    self.widths_px = tuple(_halvings(width, len(config.widths)))
    self.last_width = config.widths[-1]
    flat = self.heights[-1] * self.widths_px[-1] * config.widths[-1]
    self.from_latent, self.decoder = _subpixel_decoder(config.latent_dim, config.widths,
                                                       channels, flat, rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(_subpixel_decode(self.from_latent, self.decoder, self.heights,
                                           self.widths_px, self.last_width, z))


class ConvDiscriminator(nnx.Module):
  """Stride-2 4x4 convolutions with leaky ReLUs, then one real-vs-generated logit."""

  def __init__(self, config: GANConfig, *, rngs: nnx.Rngs):
    height, width, channels = config.image_shape
    ins = (channels,) + config.widths[:-1]
    self.convs = nnx.data([_conv_layer(i, o, (4, 4), strides=2, rngs=rngs)
                           for i, o in zip(ins, config.widths, strict=True)])
    flat = (_halvings(height, len(config.widths))[-1] * _halvings(width, len(config.widths))[-1]
            * config.widths[-1])
    self.out = nnx.Linear(flat, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) -> (B,) logits of "real"."""
    h = x
    for conv in self.convs:
      h = nnx.leaky_relu(conv(h), 0.2)
    return self.out(h.reshape(h.shape[0], -1))[:, 0]


class ConvGAN(nnx.Module):
  """A DCGAN-style generator and discriminator; a generator without an encoder.

  `decode(z)` draws images from latents, as a VAE's does, so a `ConvGAN`
  plugs into the attack and into `explain`, whose latents for real images
  come from `invert`. Trained by `train_gan`.

  Example:
    >>> gan = ConvGAN(GANConfig(image_shape=(8, 8, 1), latent_dim=8), rngs=nnx.Rngs(0))
    >>> images = gan.decode(jax.random.normal(jax.random.key(0), (4, 8)))   # (4, 8, 8, 1)
  """

  def __init__(self, config: GANConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.generator = ConvGenerator(config, rngs=rngs)
    self.discriminator = ConvDiscriminator(config, rngs=rngs)

  @property
  def latent_dim(self) -> int:
    return self.config.latent_dim

  def decode(self, z: jax.Array) -> jax.Array:
    """Latents (B, d) -> images (B, H, W, C) in [0, 1]."""
    return self.generator(z)

  def discriminate(self, x: jax.Array) -> jax.Array:
    """Images (B, H, W, C) -> (B,) logits that each is real."""
    return self.discriminator(x)


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


@overload
def build_model(kind: Literal["vae"], config, seed: int = 0) -> ConvVAE: ...
@overload
def build_model(kind: Literal["classifier"], config, seed: int = 0) -> Classifier: ...
@overload
def build_model(kind: Literal["gan"], config, seed: int = 0) -> ConvGAN: ...
@overload
def build_model(kind: Literal["duq"], config, seed: int = 0) -> DUQ: ...
@overload
def build_model(kind: Literal["translator"], config, seed: int = 0) -> Translator: ...
@overload
def build_model(kind: str, config, seed: int = 0) -> nnx.Module: ...
def build_model(kind: str, config, seed: int = 0) -> nnx.Module:
  """Builds the model of `kind` ("vae", "classifier", "gan", "duq" or "translator") from
  its config."""
  models = {"vae": (ConvVAE, VAEConfig), "classifier": (Classifier, ClassifierConfig),
            "gan": (ConvGAN, GANConfig), "duq": (DUQ, DUQConfig),
            "translator": (Translator, TranslatorConfig)}
  if kind not in models:
    raise ValueError(f"kind must be one of {sorted(models)}; got {kind!r}")
  module, config_type = models[kind]
  if isinstance(config, dict):
    config = config_type.from_dict(config)
  if not isinstance(config, config_type):
    raise TypeError(f"a {kind} needs a {config_type.__name__}; got {type(config).__name__}")
  return module(config, rngs=nnx.Rngs(params=seed, sample=seed + 1))


def model_kind(model) -> str:
  """"vae", "classifier", "gan", "duq" or "translator"."""
  for kind, cls in (("vae", ConvVAE), ("classifier", Classifier), ("gan", ConvGAN),
                    ("duq", DUQ), ("translator", Translator)):
    if isinstance(model, cls):
      return kind
  raise TypeError(f"expected a ConvVAE, Classifier, ConvGAN, DUQ or Translator; got "
                  f"{type(model).__name__}")
