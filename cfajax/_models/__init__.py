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

One family a module: `vae`, `classifier`, `gan`, `duq`, `translator` and
`diffusion` (with `unet`, its noise predictor), each its config and its
module; `_base` the generator pair and the configs' JSON form; `_layers` the
convolutional blocks they share; `_registry` every family by name, for
checkpoints.
"""

from cfajax._models._base import Generator
from cfajax._models._layers import _depth_to_space
from cfajax._models._layers import bernoulli_bce
from cfajax._models._layers import max_pool_2x2
from cfajax._models._registry import build_model
from cfajax._models._registry import model_kind
from cfajax._models.classifier import HEADS
from cfajax._models.classifier import Classifier
from cfajax._models.classifier import ClassifierConfig
from cfajax._models.classifier import OneOutput
from cfajax._models.classifier import select_output
from cfajax._models.diffusion import DiffusionConfig
from cfajax._models.diffusion import DiffusionGenerator
from cfajax._models.diffusion import NoiseSchedule
from cfajax._models.duq import DUQ
from cfajax._models.duq import Centroid
from cfajax._models.duq import DUQConfig
from cfajax._models.gan import ConvDiscriminator
from cfajax._models.gan import ConvGAN
from cfajax._models.gan import ConvGenerator
from cfajax._models.gan import GANConfig
from cfajax._models.translator import TranslationNet
from cfajax._models.translator import Translator
from cfajax._models.translator import TranslatorConfig
from cfajax._models.translator import translate_with
from cfajax._models.unet import UNet
from cfajax._models.unet import UNetConfig
from cfajax._models.vae import ConvVAE
from cfajax._models.vae import VAEConfig
from cfajax._models.vae import gaussian_kl

__all__ = [
    "DUQ", "HEADS", "Centroid", "Classifier", "ClassifierConfig", "ConvDiscriminator", "ConvGAN",
    "ConvGenerator", "ConvVAE", "DUQConfig", "DiffusionConfig", "DiffusionGenerator",
    "NoiseSchedule", "GANConfig", "Generator", "OneOutput",
    "TranslationNet", "Translator", "TranslatorConfig", "UNet", "UNetConfig", "VAEConfig",
    "_depth_to_space",
    "bernoulli_bce", "build_model", "gaussian_kl", "max_pool_2x2", "model_kind", "select_output",
    "translate_with",
]
