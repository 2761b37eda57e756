"""What an explanation runs on: the user's inputs (or a preset's), checked against each other.

`custom_inputs` reads the user's images, attribute tables and models; `check_contract` checks
the models against the images before any of them runs; `latents_of` encodes
images, or inverts them for a generator without an encoder, and `RunLatents`
does so for a whole run, inverting each distinct image once however many of
the run's image sets hold it; `given_latents` checks latents found beforehand,
and `badly_inverted` says which inversions are too poor to explain.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import numpy as np

from cfajax import _array_checks
from cfajax import _data
from cfajax import _models
from cfajax import _sources
from cfajax._attribute_tables import AttributeTable
from cfajax._attribute_tables import as_attribute_table
from cfajax._batching import apply_batched
from cfajax._inversion import InversionResult
from cfajax._inversion import invert

# Inputs that may be given as Python objects instead of strings.
OBJECT_INPUTS = ("classifier", "generator", "images", "attributes")


@dataclasses.dataclass
class Inputs:
  """Everything an explanation runs on, however it was given.

  Attributes:
    classifier: images (B, H, W, C) -> logits (B, K).
    generator: the generator object (or a bare decode callable).
    data: the images to explain, an `ImageDataset`.
    attributes: the table the probes are fitted on.
    validation: the table they are checked on (None: hold out part of
      `attributes`).
    decision: what a binary classifier decides, in words.
    info: how each part was obtained, for the summary.
    split: for a preset's train and test splits explained together, the
      split of each row ("train" or "test"), whose ids count from 0 in each.
  """

  classifier: Any
  generator: Any
  data: Any
  attributes: AttributeTable
  validation: AttributeTable | None
  decision: str
  info: dict[str, Any]
  split: Any = None


def custom_inputs(config, objects, validation, progress: bool) -> Inputs:
  """Inputs from the user's objects and strings (no preset)."""
  info = {}
  models = {}
  for kind in ("classifier", "generator"):
    if objects[kind] is not None:
      models[kind], info[kind] = objects[kind], {"source": _sources.describe(objects[kind])}
    else:
      spec = getattr(config, kind)
      models[kind] = _sources.load_model_spec(spec, kind)
      info[kind] = {"source": spec}
  images = objects["images"] if objects["images"] is not None else config.images
  data = _data.as_image_dataset(images, image_size=config.image_size or None, progress=progress)
  table = objects["attributes"] if objects["attributes"] is not None else config.attributes
  table = as_attribute_table(table, image_size=config.image_size or None, progress=progress)
  if config.exclude_attributes:
    unknown = [n for n in config.exclude_attributes if n not in table.names]
    if unknown:
      raise ValueError(f"exclude_attributes {unknown} are not in {table.name}: {list(table.names)}")
    table = table.columns([i for i, n in enumerate(table.names)
                           if n not in config.exclude_attributes])
  if validation is not None:
    validation = as_attribute_table(validation, image_size=config.image_size or None)
    validation = validation.columns([validation.names.index(n) for n in table.names])
  generator = edited_generator(config, models["generator"], info["generator"])
  return Inputs(classifier=models["classifier"], generator=generator,
                         data=data, attributes=table, validation=validation,
                         decision="the classifier", info=info)


def edited_generator(config, generator, info: dict[str, Any]):
  """The generator with the run's diffusion edit (`ddim_steps`, `edit_depth`) where set; a
  diffusion generator's edit goes to `info`."""
  if config.ddim_steps or config.edit_depth:
    if not isinstance(generator, _models.DiffusionGenerator):
      raise ValueError(f"ddim_steps and edit_depth set a diffusion generator's edit; the "
                       f"generator is a {type(generator).__name__}")
    generator = generator.with_edit(steps=config.ddim_steps or None,
                                    depth=config.edit_depth or None)
  if isinstance(generator, _models.DiffusionGenerator):
    info["edit"] = {"ddim_steps": generator.steps, "depth": generator.depth,
                    "edit_steps": generator.edit_steps, "remat": generator.remat}
  return generator


@dataclasses.dataclass(frozen=True)
class Contract:
  image_shape: tuple[int, ...]
  latent_dim: int
  num_logits: int


def check_contract(config, inputs: Inputs,
                    parts: _sources.GeneratorParts) -> Contract:
  """Checks the models against the images and each other before any of them runs.

  Raises:
    ValueError: a classifier whose output is not (n, K), a generator whose
      images do not have the images' shape, a latent size that cannot be
      found, or an attribute table of another shape.
  """
  shape = tuple(inputs.data.image_shape)
  example = jax.ShapeDtypeStruct((2, *shape), np.float32)
  logits = _sources.output_shape(inputs.classifier, example, "the classifier")
  if len(logits) != 2 or logits[0] != 2:
    raise ValueError(f"the classifier must map images (n, {', '.join(map(str, shape))}) to "
                     f"logits (n, K); for n = 2 it gave shape {logits}")
  if parts.encode is not None:
    z = _sources.output_shape(parts.encode, example, "the generator's encode")
    if len(z) != 2 or z[0] != 2:
      raise ValueError(f"the generator's encode must map images to latents (n, d); for n = 2 it "
                       f"gave shape {z}")
    latent_dim = z[1]
  elif config.latent_dim or parts.latent_dim:
    latent_dim = config.latent_dim or parts.latent_dim
  else:
    raise ValueError("the generator has no encode, so its latents are found by inversion, "
                     "which needs the latent size: pass latent_dim")
  decoded = _sources.output_shape(parts.decode, jax.ShapeDtypeStruct((2, latent_dim), np.float32),
                                  "the generator's decode")
  if decoded != (2, *shape):
    raise ValueError(f"the generator's decode maps latents (2, {latent_dim}) to images "
                     f"{decoded}; the images to explain are (n, {', '.join(map(str, shape))})")
  for table in filter(None, (inputs.attributes, inputs.validation)):
    if table.images is not None and tuple(table.images.shape[1:]) != shape:
      raise ValueError(f"{table.name} has images of shape {table.images.shape[1:]}; the images "
                       f"to explain are {shape}")
    if table.latents is not None and table.latents.shape[1] != latent_dim:
      raise ValueError(f"{table.name} has latents of size {table.latents.shape[1]}; the "
                       f"generator's are {latent_dim}")
  return Contract(shape, latent_dim, logits[1])  # pyright: ignore[reportArgumentType]  (set above)


def latents_of(config, parts: _sources.GeneratorParts, contract: Contract,
                images: np.ndarray, what: str, progress: bool, log):
  """Latents of `images`: the encoder's, or found by inversion (with each one's error)."""
  if parts.encode is not None:
    return apply_batched(parts.encode, images), None
  log(f"inverting {len(images)} {what} (the generator has no encoder)")
  result = invert(parts.decode, images, **inversion_options(config, contract.latent_dim),
                  progress=progress)
  return np.asarray(result.z), np.asarray(result.pixel_mse)


def inversion_options(config, latent_dim: int) -> dict[str, Any]:
  """The keyword arguments of `invert` that a run's options (an `ExplainConfig`) give."""
  return dict(latent_dim=latent_dim, starts=config.inversion_starts,
              max_steps=config.inversion_steps, step_size=config.inversion_step_size,
              prior_weight=config.inversion_prior_weight, seed=config.seed,
              batch_size=config.pool_size)


def given_latents(latents, num_images: int, latent_dim: int):
  """(z, errors) of latents the user found beforehand for every image to explain.

  `latents` is an (n, d) array, or the `InversionResult` of `invert` on the
  images, whose pixel errors then decide which images are left out as for an
  inversion the pipeline runs itself.

  Raises:
    ValueError: latents that are not finite (n, d) floats, one row per image,
      of the generator's latent size.
  """
  errors = None
  if isinstance(latents, InversionResult):
    latents, errors = latents.z, np.asarray(latents.pixel_mse, np.float64)
  z = _array_checks.latents(latents, "latents")
  if z.shape != (num_images, latent_dim):
    raise ValueError(f"latents must hold one row per image to explain, of the generator's "
                     f"latent size: ({num_images}, {latent_dim}); got {z.shape}")
  return z, errors


def badly_inverted(config, errors: np.ndarray) -> tuple[np.ndarray, float]:
  """Which inversions to leave out, and the error threshold that decided it."""
  if config.max_inversion_error:
    threshold = float(config.max_inversion_error)
  else:
    q1, q3 = np.percentile(errors, [25, 75]) if errors.size else (0.0, 0.0)
    threshold = float(q3 + 3 * (q3 - q1))
  return ~(errors <= threshold), threshold


def image_digest(image: np.ndarray) -> bytes:
  """A digest of one image's float32 pixels: equal exactly when `invert` sees equal targets."""
  image = np.ascontiguousarray(image, np.float32)
  return hashlib.blake2b(repr(image.shape).encode() + image.tobytes(), digest_size=16).digest()


class RunLatents:
  """The latents of a run's image sets, each distinct image inverted once.

  With an encoder, each call encodes its images. Without one, a call inverts
  only the images no earlier call (or `remember`) has seen, by their pixels'
  digest, each distinct image once, and gives every image the latent and pixel
  error its one inversion found; an image that is both explained and in an
  attribute table is inverted once. The new images of a call are inverted
  together in the order given, with the run's options, so where no image
  appears twice the calls invert exactly what separate `latents_of` calls would.

  Attributes:
    inverted: how many images were inverted so far.
  """

  def __init__(self, config, parts: _sources.GeneratorParts, contract: Contract, progress, log):
    self._config, self._parts, self._contract = config, parts, contract
    self._progress, self._log = progress, log
    self._found: dict[bytes, tuple[np.ndarray, np.floating]] = {}
    self.inverted = 0

  def remember(self, images: np.ndarray, z: np.ndarray, errors: np.ndarray) -> None:
    """Takes latents found beforehand, with their pixel errors, as these images' inversions."""
    for image, latent, error in zip(images, z, errors, strict=True):
      self._found.setdefault(image_digest(image), (latent, error))

  def __call__(self, images: np.ndarray, what: str):
    """(z (n, d), errors (n,) or None for an encoder) of `images` (n, H, W, C)."""
    if self._parts.encode is not None:
      return latents_of(self._config, self._parts, self._contract, images, what, self._progress,
                        self._log)
    keys = [image_digest(image) for image in images]
    new = {}  # digest -> row of its first occurrence among the unseen
    for row, key in enumerate(keys):
      if key not in self._found:
        new.setdefault(key, row)
    if len(new) < len(keys):
      self._log(f"{len(keys) - len(new)} of {len(keys)} {what} take the latent of an image "
                "inverted once for the run")
    if new:
      rows = np.fromiter(new.values(), np.int64, len(new))
      z, errors = latents_of(self._config, self._parts, self._contract, images[rows], what,
                             self._progress, self._log)
      self.inverted += len(rows)
      # Latents found by inversion come with their errors.
      for key, latent, error in zip(new, z, errors, strict=True):  # pyright: ignore[reportArgumentType]
        self._found[key] = (latent, error)
    if not keys:
      return (np.zeros((0, self._contract.latent_dim), np.float32), np.zeros((0,), np.float32))
    z, errors = zip(*(self._found[key] for key in keys), strict=True)
    return np.stack(z), np.asarray(errors)


def table_latents(config, latents: RunLatents, table: AttributeTable):
  """(latents, labels, how many were dropped) of a table; badly inverted images are dropped."""
  if table.latents is not None:
    return table.latents, table.values, 0
  # A table has latents or images.
  z, errors = latents(table.images, f"images of {table.name}")  # pyright: ignore[reportArgumentType]
  if errors is None:
    return z, table.values, 0
  bad, _ = badly_inverted(config, errors)
  return z[~bad], table.values[~bad], int(bad.sum())
