"""Presets of the explanation: the datasets cfajax knows by name, as ordinary inputs.

A preset (digits, MNIST, CelebA) supplies what a user would otherwise hand
to `explain`: the images to explain, a generator and a classifier (restored
from `out/models`, or trained there by the dataset's recipe), and attribute
tables for the probes (CelebA's labels, or the digits' morphometric
descriptors). Whatever the user passes instead (a classifier, a generator, an
attribute table) replaces the preset's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from cfajax import _checkpoint
from cfajax import _models
from cfajax import _recipes
from cfajax import _sources
from cfajax._attribute_tables import AttributeTable
from cfajax._attribute_tables import descriptor_tables
from cfajax._attribute_tables import select_probe_attributes
from cfajax._inputs import Inputs
from cfajax._inputs import edited_generator

PRESETS = tuple(_recipes.RECIPES)
CELEBA_IMAGE_SIZE = 64


def image_size(config) -> int:
  return config.image_size or CELEBA_IMAGE_SIZE


def explained_split(config, train, test):
  """`(data, split)`: the examples to explain, one split or both (train first), and for
  both the split of each row (their ids count from 0 in each), else None."""
  if config.explain_split == "train":
    return train, None
  if config.explain_split == "test":
    return test, None
  join = lambda a, b: None if a is None or b is None else np.concatenate([a, b])
  base = train.name.split("[")[0].split("/")[0]
  both = dataclasses.replace(
      train, images=np.concatenate([train.images, test.images]),
      labels=join(train.labels, test.labels), attributes=join(train.attributes, test.attributes),
      ids=join(train.ids, test.ids), files=join(train.files, test.files),
      name=f"{base} (train and test)")
  return both, np.array(["train"] * len(train) + ["test"] * len(test))


def _restore_or_train(kind, path, config, train, test, progress, log):
  """Loads the checkpoint at `path`; trains one by the recipe and saves it there if none exists."""
  if os.path.exists(path):
    return _checkpoint.load_model(path), {"checkpoint": path, "trained_now": False}
  log(f"training the {kind} ({path} does not exist yet)")
  options: dict[str, Any] = dict(seed=config.seed, batch_size=config.train_batch_size or None,
                                 progress=progress)
  if kind == "VAE":
    model, history, info = _recipes.train_model(
        "vae", config.dataset, train, test, epochs=config.vae_epochs or None,
        latent_dim=config.latent_dim or None, widths=config.vae_widths or None, **options)
  else:
    model, history, info = _recipes.train_model(
        "classifier", config.dataset, train, test, epochs=config.classifier_epochs or None,
        widths=config.classifier_widths or None,
        attributes=(config.target_attribute,) if config.dataset == "celeba" else None, **options)
  _checkpoint.save_model(path, model, metrics={"history": history, "dataset": config.dataset,
                                               **info})
  return model, {"checkpoint": path, "trained_now": True, "final_epoch": history[-1]}


def preset_inputs(config, *, classifier=None, generator=None, attributes=None,
                  progress: bool = True, log=print) -> Inputs:
  """The inputs of `config.dataset`'s preset, with any part the user gave kept.

  Args:
    config: the run's `ExplainConfig` (a preset in `dataset`).
    classifier, generator: models given by the user (objects), or None for
      the preset's: `config.classifier` / `config.generator` checkpoints, else
      `out/models/...`, trained by the recipe if absent.
    attributes: a table given by the user, or None for the preset's.
  """
  train, test = _recipes.load_train_test(config.dataset, config.data_dir,
                                         image_size=image_size(config), progress=progress,
                                         log=log)
  if config.dataset == "celeba" and config.target_attribute not in train.attribute_names:
    raise ValueError(f"{train.name} has no attribute {config.target_attribute!r}; it has "
                     f"{list(train.attribute_names)}")
  info = {}
  models = {}
  for kind, given, spec, folder in (("VAE", generator, config.generator, "vae"),
                                    ("classifier", classifier, config.classifier, "classifier")):
    if given is not None:
      models[kind], info[kind] = given, {"source": "given"}
    elif spec:
      models[kind] = _sources.load_model_spec(spec, kind)
      info[kind] = {"checkpoint": spec, "trained_now": False}
    else:
      models[kind], info[kind] = _restore_or_train(
          kind, os.path.join(config.out, "models", folder), config, train, test, progress, log)
    if isinstance(models[kind], (_models.ConvVAE, _models.ConvGAN, _models.Classifier,
                                 _models.DiffusionGenerator)):
      info[kind]["weights_sha256"] = _checkpoint.weights_digest(models[kind])
  models["VAE"] = edited_generator(config, models["VAE"], info["VAE"])
  model = models["classifier"]
  decision = "the classifier"
  if config.dataset == "celeba":
    decision = config.target_attribute
    if isinstance(model, _models.Classifier):
      model = _models.select_output(model, config.target_attribute)

  if attributes is not None:
    table, validation, extra = attributes, None, {}
  elif config.dataset == "celeba":
    keep, excluded = select_probe_attributes(
        train.attribute_names, train.attributes, (config.target_attribute,),
        exclude=config.exclude_attributes, max_correlation=config.max_attribute_correlation)
    table = AttributeTable.from_dataset(train).columns(keep)
    validation = AttributeTable.from_dataset(test).columns(keep)
    extra = {"excluded_attributes": excluded}
  else:
    (table, validation), thresholds = descriptor_tables(train, test)
    extra = {"descriptor_thresholds": thresholds}
  info = {"generator": info["VAE"], "classifier": info["classifier"], **extra}
  data, split = explained_split(config, train, test)
  return Inputs(classifier=model, generator=models["VAE"], data=data, attributes=table,
                validation=validation, decision=decision, info=info, split=split)


GENERATOR_KINDS = ("vae", "gan", "diffusion")


def checkpoint_config(path: str, kind: str) -> dict[str, Any]:
  """The config of the checkpoint at `path`, which must hold a `kind` ("generator": any)."""
  info = _checkpoint.read_checkpoint_info(path)
  kinds = GENERATOR_KINDS if kind in ("vae", "generator") else (kind,)
  if info["kind"] not in kinds:
    raise ValueError(f"{path} holds a {info['kind']}, not a {' or a '.join(kinds)}")
  return {**info["config"], "kind": info["kind"]}


def check_edit(config, generator: dict[str, Any] | None) -> None:
  """Checks a run's diffusion edit options against its generator's checkpoint config (None:
  the VAE a preset trains)."""
  if not (config.ddim_steps or config.edit_depth):
    return
  if generator is None or generator.get("kind") != "diffusion":
    kind = "a VAE trained by the preset" if generator is None else f"a {generator['kind']}"
    raise ValueError(f"ddim_steps and edit_depth set a diffusion generator's edit; the "
                     f"generator is {kind}")
  timesteps = generator["schedule"].get("num_train_timesteps", 1000)
  if config.ddim_steps > timesteps:
    raise ValueError(f"ddim_steps must be at most the diffusion model's {timesteps} training "
                     f"timesteps; got {config.ddim_steps}")


def _image_shape(model: dict[str, Any]):
  """A checkpoint config's image shape (a diffusion model's is its UNet's)."""
  return model.get("image_shape", model.get("unet", {}).get("image_shape", []))


def check_checkpoints(config, generator_given: bool = False) -> None:
  """Checks the checkpoints a preset will use (named, or already in out/models) fit it;
  `generator_given`: the user passed a generator object, checked once it is read."""
  assert config.dataset is not None and config.out is not None  # a preset's, checked already
  shape = list(_recipes.image_shape(config.dataset, image_size(config)))
  paths = {}
  for kind, spec, folder in (("vae", config.generator, "vae"),
                             ("classifier", config.classifier, "classifier")):
    if spec is not None and _sources.is_import_string(spec):
      continue  # a user's model, checked against the images once it is built
    path = spec or os.path.join(config.out, "models", folder)
    if spec is None and not os.path.exists(path):
      continue  # trained by the recipe, which fits the dataset
    model = checkpoint_config(path, kind)
    if list(_image_shape(model)) != shape:
      raise ValueError(f"the {kind} at {path} takes images of shape {_image_shape(model)}; "
                       f"{config.dataset} images are {shape}")
    paths[kind] = path
    if kind == "vae" and not generator_given:
      check_edit(config, model)
  if "vae" not in paths and not generator_given and not (
      config.generator is not None and _sources.is_import_string(config.generator)):
    check_edit(config, None)
  if "classifier" in paths:
    model = checkpoint_config(paths["classifier"], "classifier")
    names, count, where = tuple(model.get("output_names", ())), model.get("num_outputs"), \
        f" at {paths['classifier']}"
  elif config.classifier is not None:
    return
  else:  # the recipe's classifier
    recipe_config = _recipes.classifier_config(
        config.dataset, shape, attributes=(config.target_attribute,)
        if config.dataset == "celeba" else None)
    names, count, where = recipe_config.output_names, recipe_config.num_outputs, ""
  if config.dataset == "celeba":
    if config.target_attribute not in names:
      raise ValueError(f"the classifier{where} predicts {list(names)}, not the CelebA "
                       f"attribute {config.target_attribute!r}")
  # A classifier's checkpoint config always has num_outputs.
  elif count != 1 and max(config.classes) >= count:  # pyright: ignore[reportOperatorIssue]
    raise ValueError(f"classes {tuple(config.classes)} do not exist in the classifier{where}, "
                     f"which has {count} classes (0 to {count - 1})")  # pyright: ignore[reportOptionalOperand]
