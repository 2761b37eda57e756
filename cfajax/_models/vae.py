"""The convolutional VAE: the generator cfajax trains, and its losses."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cfajax._models._base import _check_image_shape
from cfajax._models._base import _check_widths
from cfajax._models._base import _Config
from cfajax._models._layers import _conv_layer
from cfajax._models._layers import _halvings
from cfajax._models._layers import _subpixel_decode
from cfajax._models._layers import _subpixel_decoder
from cfajax._models._layers import bernoulli_bce


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

