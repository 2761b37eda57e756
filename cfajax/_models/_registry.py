"""Each model family by name: build one from its config, tell one's kind."""

from __future__ import annotations

from typing import Literal
from typing import overload

from flax import nnx

from cfajax._models.classifier import Classifier
from cfajax._models.classifier import ClassifierConfig
from cfajax._models.diffusion import DiffusionConfig
from cfajax._models.diffusion import DiffusionGenerator
from cfajax._models.diffusion import build_diffusion
from cfajax._models.duq import DUQ
from cfajax._models.duq import DUQConfig
from cfajax._models.gan import ConvGAN
from cfajax._models.gan import GANConfig
from cfajax._models.translator import Translator
from cfajax._models.translator import TranslatorConfig
from cfajax._models.vae import ConvVAE
from cfajax._models.vae import VAEConfig


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
def build_model(kind: Literal["diffusion"], config, seed: int = 0) -> DiffusionGenerator: ...
@overload
def build_model(kind: str, config, seed: int = 0) -> nnx.Module: ...
def build_model(kind: str, config, seed: int = 0) -> nnx.Module:
  """Builds the model of `kind` ("vae", "classifier", "gan", "duq", "translator" or
  "diffusion") from its config."""
  models = {"vae": (ConvVAE, VAEConfig), "classifier": (Classifier, ClassifierConfig),
            "gan": (ConvGAN, GANConfig), "duq": (DUQ, DUQConfig),
            "translator": (Translator, TranslatorConfig),
            "diffusion": (build_diffusion, DiffusionConfig)}
  if kind not in models:
    raise ValueError(f"kind must be one of {sorted(models)}; got {kind!r}")
  module, config_type = models[kind]
  if isinstance(config, dict):
    config = config_type.from_dict(config)
  if not isinstance(config, config_type):
    raise TypeError(f"a {kind} needs a {config_type.__name__}; got {type(config).__name__}")
  return module(config, rngs=nnx.Rngs(params=seed, sample=seed + 1))


def model_kind(model) -> str:
  """"vae", "classifier", "gan", "duq", "translator" or "diffusion"."""
  for kind, cls in (("vae", ConvVAE), ("classifier", Classifier), ("gan", ConvGAN),
                    ("duq", DUQ), ("translator", Translator), ("diffusion", DiffusionGenerator)):
    if isinstance(model, cls):
      return kind
  raise TypeError(f"expected a ConvVAE, Classifier, ConvGAN, DUQ, Translator or "
                  f"DiffusionGenerator; got {type(model).__name__}")
