"""The DCGAN-style generator and critic, trained with R1 (a generator for the attack)."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from cfajax._models._base import _check_image_shape
from cfajax._models._base import _check_widths
from cfajax._models._base import _Config
from cfajax._models._layers import _conv_layer
from cfajax._models._layers import _halvings
from cfajax._models._layers import _subpixel_decode
from cfajax._models._layers import _subpixel_decoder


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
