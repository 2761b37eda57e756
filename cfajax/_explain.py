"""The dataset-wide explanation: models, probes, attacks and attributions, resumable.

`explain(config)` runs every stage for one dataset and writes to `config.out`:

  models/vae, models/classifier   checkpoints (trained first when absent)
  run.json                        the options this folder belongs to, and digests of
                                  the models and examples its chunks came from
  chunks/attack-00000.npz ...     finished attack chunks (for resuming)
  examples.npz                    per example: index, z, z', steps, status, p, p', phi
  summary.json                    psi with intervals and ranks, flip rate, steps, timings
  counterfactuals.png, global_attributions.png

Every option is checked before any work. An interrupted run (even killed with
SIGKILL) resumes from its last finished chunk; a chunk is reused only if it was
computed from the same latents, targets, attack options and model weights
(`_runfolder`). Options that change no result (`RESUMABLE_OPTIONS`) may differ
between the runs of one folder; the others refuse a resume, naming what
changed, unless `restart=True`. One process writes a folder at a time. Across
processes (`jax.distributed`), each process attacks every `process_count`-th
chunk and the results are gathered before psi is computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from cfajax import _checkpoint
from cfajax import _checks
from cfajax import _data
from cfajax import _descriptors
from cfajax import _hashing
from cfajax import _loop
from cfajax import _plots
from cfajax import _recipes
from cfajax import _runfolder
from cfajax._attack import counterfactual_attack
from cfajax._attributions import global_attributions
from cfajax._attributions import local_attributions
from cfajax._batching import apply_batched
from cfajax._loop import Status
from cfajax._probes import fit_probes

# Options that change no chunk, model or selected example: they may differ
# between the runs of one output folder. (pool_size changes only the
# summation order inside batched products; vae and classifier paths count by
# their weights' digests, data_dir by the latents it leads to.)
RESUMABLE_OPTIONS = ("out", "data_dir", "vae", "classifier", "pool_size", "chunk_size",
                     "exclude_attributes", "max_attribute_correlation", "probe_c",
                     "probe_class_weight", "probe_standardize", "num_bootstrap",
                     "num_figure_examples")
# Options a model trained into out/models was trained with.
TRAINING_OPTIONS = ("dataset", "image_size", "target_attribute", "latent_dim", "vae_widths",
                    "classifier_widths", "vae_epochs", "classifier_epochs", "train_batch_size",
                    "seed")


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
  """Everything that defines a dataset-wide explanation.

  Attributes:
    dataset: "digits" (scikit-learn's, embedded), "mnist" or "celeba".
    out: the output folder; rerunning with the same folder resumes.
    data_dir: where MNIST IDX files or the CelebA layout live (else
      `$CFAJAX_DATA_DIR`, else tensorflow-datasets).
    classes: for a multi-class classifier, the pair (a, b) explained: examples
      predicted a are attacked toward b and vice versa; b is the positive class.
    target_attribute: for CelebA, the attribute the binary classifier predicts.
    exclude_attributes, max_attribute_correlation: for CelebA, attributes left
      out of the probes besides the target: those named, and near-duplicates
      of the target, whose labels correlate with it beyond this |r| on the
      auxiliary set (see `select_probe_attributes`).
    explain_split: which examples are explained: "train", "test" or "all".
    image_size: CelebA images are center-cropped and resized to this size.
    latent_dim, vae_widths, classifier_widths, vae_epochs, classifier_epochs,
      train_batch_size: for models trained when no checkpoint exists (0 or
      empty: the dataset's recipe, as `cfajax train` uses).
    vae, classifier: checkpoint paths to use instead of `out/models/...`.
    threshold, step_size, max_steps, objective, optimizer, learning_rate,
    precision, pool_size: the attack's options (`optimizer` is "ascent" for
      plain gradient ascent or "adam").
    chunk_size: examples per resumable chunk.
    probe_c, probe_class_weight, probe_standardize: probe regularisation.
    num_bootstrap: bootstrap resamples for psi's confidence interval.
    num_figure_examples: counterfactuals shown in the figure.
    seed: for training, splits and the bootstrap.
  """

  dataset: str = "digits"
  out: str = "runs/explain-digits"
  data_dir: str | None = None
  classes: tuple[int, int] = (4, 9)
  target_attribute: str = "Young"
  exclude_attributes: tuple[str, ...] = ()
  max_attribute_correlation: float = 0.75
  explain_split: str = "all"
  image_size: int = 64
  latent_dim: int = 0  # 0: the dataset's recipe (`cfajax._recipes`)
  vae_widths: tuple[int, ...] = ()  # (): the recipe's
  classifier_widths: tuple[int, ...] = ()
  vae_epochs: int = 0
  classifier_epochs: int = 0
  train_batch_size: int = 0
  vae: str | None = None
  classifier: str | None = None
  threshold: float = 0.5
  step_size: float = 0.1
  max_steps: int = 500
  objective: str = "logit"
  optimizer: str = "ascent"
  learning_rate: float = 0.05
  precision: str = "float32"
  pool_size: int = 4096
  chunk_size: int = 8192
  probe_c: float = 1.0
  probe_class_weight: str | None = "balanced"
  probe_standardize: bool = True
  num_bootstrap: int = 1000
  num_figure_examples: int = 8
  seed: int = 0

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ExplainConfig":
    _check_option_names(values)
    values = dict(values)
    for name in ("classes", "vae_widths", "classifier_widths", "exclude_attributes"):
      if name in values:
        values[name] = tuple(values[name])
    return cls(**values)


def _check_option_names(values) -> None:
  known = [f.name for f in dataclasses.fields(ExplainConfig)]
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f"unknown explain options {unknown}; the options are {known}")


def _int_tuple(name: str, value, *, length: int | None = None, low: int = 0) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)):
    raise ValueError(f"{name} must be a tuple of integers; got {type(value).__name__} "
                     f"{value!r}")
  if length is not None and len(value) != length:
    raise ValueError(f"{name} must hold {length} integers; got {tuple(value)}")
  return tuple(_checks.integer(f"{name}[{i}]", v, low=low) for i, v in enumerate(value))


def _optional_path(name: str, value) -> None:
  if value is not None and not isinstance(value, (str, os.PathLike)):
    raise ValueError(f"{name} must be a path or None; got {type(value).__name__} {value!r}")


def _check_config(config: ExplainConfig) -> None:
  """Checks every option's type and range, and the named checkpoints, before any work.

  Raises:
    ValueError: an option of the wrong type or out of range, classes the
      classifier does not have, a target attribute CelebA does not have, or
      checkpoints that do not fit the dataset.
    FileNotFoundError: a named checkpoint does not exist.
  """
  c = config
  _checks.choice("dataset", c.dataset, tuple(_recipes.RECIPES))
  if not isinstance(c.out, (str, os.PathLike)) or not str(c.out):
    raise ValueError(f"out must be a folder path; got {c.out!r}")
  for name in ("data_dir", "vae", "classifier"):
    _optional_path(name, getattr(c, name))
  classes = _int_tuple("classes", c.classes, length=2)
  if classes[0] == classes[1]:
    raise ValueError(f"classes must be two different classes, e.g. (4, 9); got {classes}")
  celeba = _data.CELEBA_ATTRIBUTE_NAMES
  if not isinstance(c.target_attribute, str) or (c.dataset == "celeba"
                                                 and c.target_attribute not in celeba):
    raise ValueError(f"target_attribute must be one of CelebA's attributes {list(celeba)}; "
                     f"got {c.target_attribute!r}")
  if not isinstance(c.exclude_attributes, (tuple, list)) or not all(
      isinstance(name, str) and (c.dataset != "celeba" or name in celeba)
      for name in c.exclude_attributes):
    raise ValueError(f"exclude_attributes must be CelebA attribute names {list(celeba)}; got "
                     f"{c.exclude_attributes!r}")
  _checks.number("max_attribute_correlation", c.max_attribute_correlation, low=0.0, high=1.0,
                 low_open=True)
  _checks.choice("explain_split", c.explain_split, ("train", "test", "all"))
  _checks.integer("image_size", c.image_size, low=4, high=4096)
  _checks.integer("latent_dim", c.latent_dim, low=0)
  _int_tuple("vae_widths", c.vae_widths, low=1)
  _int_tuple("classifier_widths", c.classifier_widths, low=1)
  for name in ("vae_epochs", "classifier_epochs", "train_batch_size"):
    _checks.integer(name, getattr(c, name), low=0)
  _checks.number("threshold", c.threshold, low=0.0, high=1.0, low_open=True, high_open=True)
  _checks.number("step_size", c.step_size, low=0.0, low_open=True)
  _checks.integer("max_steps", c.max_steps, low=0)
  _checks.choice("objective", c.objective, _loop.OBJECTIVES)
  _checks.choice("optimizer", c.optimizer, ("ascent", "adam"))
  _checks.number("learning_rate", c.learning_rate, low=0.0, low_open=True)
  _checks.choice("precision", c.precision, ("float32", "bfloat16"))
  pool_size = _checks.integer("pool_size", c.pool_size, low=1)
  if pool_size < jax.local_device_count():
    raise ValueError(f"pool_size ({pool_size}) must be at least the number of local devices "
                     f"({jax.local_device_count()}) the attack's pool is split over")
  _checks.integer("chunk_size", c.chunk_size, low=1)
  _checks.number("probe_c", c.probe_c, low=0.0, low_open=True)
  if c.probe_class_weight not in (None, "balanced"):
    raise ValueError(f"probe_class_weight must be None or 'balanced'; got {c.probe_class_weight!r}")
  if not isinstance(c.probe_standardize, (bool, np.bool_)):
    raise ValueError(f"probe_standardize must be True or False; got {c.probe_standardize!r}")
  _checks.integer("num_bootstrap", c.num_bootstrap, low=0)
  _checks.integer("num_figure_examples", c.num_figure_examples, low=0)
  _checks.integer("seed", c.seed, low=0)
  _check_named_models(c)


def _checkpoint_config(path: str, kind: str) -> dict[str, Any]:
  info = _checkpoint.read_checkpoint_info(path)
  if info["kind"] != kind:
    raise ValueError(f"{path} holds a {info['kind']}, not a {kind}")
  return info["config"]


def _check_named_models(config: ExplainConfig) -> None:
  """Checks the checkpoints that will be used (named, or already in out/models) fit the run."""
  shape = list(_recipes.image_shape(config.dataset, config.image_size))
  vae = config.vae or os.path.join(config.out, "models", "vae")
  classifier = config.classifier or os.path.join(config.out, "models", "classifier")
  for kind, path, named in (("vae", vae, bool(config.vae)),
                            ("classifier", classifier, bool(config.classifier))):
    if not named and not os.path.exists(path):
      continue  # trained by the recipe, which fits the dataset
    model = _checkpoint_config(path, kind)
    if list(model.get("image_shape", [])) != shape:
      raise ValueError(f"the {kind} at {path} takes images of shape {model.get('image_shape')}; "
                       f"{config.dataset} images are {shape}")
  if os.path.exists(classifier):
    model = _checkpoint_config(classifier, "classifier")
    names, count = tuple(model.get("output_names", ())), model.get("num_outputs")
  else:  # the recipe's classifier
    recipe_config = _recipes.classifier_config(
        config.dataset, shape, attributes=(config.target_attribute,)
        if config.dataset == "celeba" else None)
    names, count = recipe_config.output_names, recipe_config.num_outputs
  if config.dataset == "celeba":
    if config.target_attribute not in names:
      raise ValueError(f"the classifier at {classifier} predicts {list(names)}, not the CelebA "
                       f"attribute {config.target_attribute!r}")
  elif count == 1:
    pass  # a binary classifier: classes do not apply
  elif max(config.classes) >= count:
    raise ValueError(f"classes {tuple(config.classes)} do not exist in the classifier"
                     f"{' at ' + classifier if os.path.exists(classifier) else ''}, which has "
                     f"{count} classes (0 to {count - 1})")


# -- stages ---------------------------------------------------------------------


def _explained(config: ExplainConfig, train, test):
  """The examples to explain: one split, or both (train first)."""
  if config.explain_split == "train":
    return train
  if config.explain_split == "test":
    return test
  join = lambda a, b: None if a is None or b is None else np.concatenate([a, b])
  base = train.name.split("[")[0].split("/")[0]
  return dataclasses.replace(
      train, images=np.concatenate([train.images, test.images]),
      labels=join(train.labels, test.labels), attributes=join(train.attributes, test.attributes),
      ids=join(train.ids, test.ids), name=f"{base} (train and test)")


class _Task:
  """Maps a classifier's logits to the explained decision and each example's target.

  A one-logit classifier is binary: p = sigmoid(logit). A multi-class
  classifier is explained on the pair (a, b): p = p_b / (p_a + p_b), and only
  examples predicted a or b take part.
  """

  def __init__(self, num_logits: int, classes: tuple[int, int]):
    self.binary = num_logits == 1
    self.classes = classes
    if not self.binary and max(classes) >= num_logits:
      raise ValueError(f"classes {classes} do not exist in a classifier with {num_logits} logits")

  def positive_prob(self, logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    if self.binary:
      return 1 / (1 + np.exp(-logits[:, 0]))
    a, b = self.classes
    return 1 / (1 + np.exp(logits[:, a] - logits[:, b]))

  def selected(self, logits: np.ndarray) -> np.ndarray:
    if self.binary:
      return np.ones(len(logits), bool)
    return np.isin(np.argmax(logits, axis=1), self.classes)

  def target(self, logits: np.ndarray) -> np.ndarray:
    """Flip the decision: the other side of p = 0.5, or the other class of the pair."""
    positive = self.positive_prob(logits) >= 0.5
    if self.binary:
      return np.where(positive, 0, 1).astype(np.int32)
    a, b = self.classes
    return np.where(positive, a, b).astype(np.int32)

  def describe(self, attribute: str) -> str:
    if self.binary:
      return f"{attribute} (binary classifier)"
    return f"class {self.classes[0]} vs {self.classes[1]}"


def select_probe_attributes(names, attributes, explained, *, exclude=(),
                            max_correlation: float = 0.75):
  """Which labelled attributes get probes when `explained` ones are classified.

  A probe for the classified attribute itself, or for a near-duplicate of it,
  would "explain" the decision by restating it. Left out are the `explained`
  attributes, those in `exclude`, and every attribute whose labels correlate
  with an explained one beyond `max_correlation` in absolute value (Pearson's
  r of the {0, 1} labels, e.g. CelebA's Wearing_Lipstick with Male, r = -0.79
  on the first 10,000 faces).

  Args:
    names: the A attribute names.
    attributes: (n, A) labels in {0, 1}.
    explained: names of the classified attributes.
    exclude: further names to leave out.
    max_correlation: the |r| above which an attribute is a near-duplicate.

  Returns:
    `(keep, excluded)`: the kept column indices, and `{name: reason}` for the
    rest.

  Raises:
    ValueError: a name in `explained` or `exclude` is not in `names`.
  """
  names = list(names)
  unknown = [n for n in (*explained, *exclude) if n not in names]
  if unknown:
    raise ValueError(f"unknown attributes {unknown}; the dataset has {names}")
  labels = np.asarray(attributes, np.float64)
  excluded = {n: "explained" for n in explained}
  excluded.update({n: "excluded" for n in exclude if n not in excluded})
  centred = labels - labels.mean(axis=0)
  norms = np.sqrt((centred ** 2).sum(axis=0))
  for name in explained:
    i = names.index(name)
    with np.errstate(invalid="ignore", divide="ignore"):
      r = centred.T @ centred[:, i] / (norms * norms[i])
    for j, value in enumerate(r):
      if names[j] not in excluded and np.isfinite(value) and abs(value) > max_correlation:
        excluded[names[j]] = f"near-duplicate of {name} (r = {value:+.2f})"
  keep = [j for j, n in enumerate(names) if n not in excluded]
  return keep, excluded


def _attribute_table(config: ExplainConfig, datasets):
  """Binary attributes for probes: CelebA's labels, or digit descriptors.

  Args:
    datasets: the auxiliary (training) set first, then any others.

  Returns:
    `(names, [attributes for each of datasets], extra)`, attributes (n, A) in {0, 1}.
  """
  if config.dataset == "celeba":
    first = datasets[0]
    keep, excluded = select_probe_attributes(
        first.attribute_names, first.attributes, (config.target_attribute,),
        exclude=config.exclude_attributes, max_correlation=config.max_attribute_correlation)
    names = tuple(first.attribute_names[i] for i in keep)
    return names, [d.attributes[:, keep] for d in datasets], {"excluded_attributes": excluded}
  values = [_descriptors.digit_descriptors(d.images) for d in datasets]
  # Medians of the auxiliary (training) set binarise every set the same way.
  _, thresholds = _descriptors.binarize_descriptors(values[0])
  names = _descriptors.DESCRIPTOR_ATTRIBUTE_NAMES
  tables = [_descriptors.binarize_descriptors(v, thresholds)[0] for v in values]
  return names, tables, {"descriptor_thresholds": dict(zip(names, thresholds.tolist()))}


def _attack_options(config: ExplainConfig) -> dict[str, Any]:
  """The attack's options that change results (pool_size changes none)."""
  options = dict(threshold=config.threshold, max_steps=config.max_steps,
                 objective=config.objective, precision=config.precision)
  if config.optimizer == "adam":
    options.update(optimizer="adam", step_size=config.learning_rate)
  else:
    options["step_size"] = config.step_size
  return options


def _attack_chunks(config, decode, classify, z, target, models_digest, progress, log):
  """Attacks `z` chunk by chunk, reusing the verified chunks on disk; returns rows for all."""
  n = len(z)
  process, processes = jax.process_index(), jax.process_count()
  rows = {"z_cf": np.zeros_like(z), "steps": np.zeros(n, np.int32),
          "status": np.zeros(n, np.int32), "initial_prob": np.zeros(n, np.float32),
          "final_prob": np.zeros(n, np.float32)}
  mine = np.zeros(n, bool)
  options = _attack_options(config)
  attack_digest = _hashing.digest_json(options)
  resumed, recomputed = 0, {}
  for k, start in enumerate(range(0, n, config.chunk_size)):
    if k % processes != process:
      continue
    stop = min(start + config.chunk_size, n)
    mine[start:stop] = True
    key = _runfolder.ChunkKey(start, stop, _hashing.digest_arrays(z[start:stop], target[start:stop]),
                              attack_digest, models_digest)
    path = _runfolder.chunk_path(config.out, k)
    saved, reason = _runfolder.load_chunk(path, key)
    if saved is not None:
      for name in _runfolder.CHUNK_FIELDS:
        rows[name][start:stop] = saved[name]
      resumed += stop - start
      if progress is not None:
        progress.update(stop - start)
      continue
    if reason is not None:
      recomputed[reason] = recomputed.get(reason, 0) + 1
    result = counterfactual_attack(decode, classify, z[start:stop], target[start:stop],
                                   batch_size=config.pool_size, progress=progress, **options)
    chunk = {"z_cf": np.asarray(result.z), "steps": np.asarray(result.steps),
             "status": np.asarray(result.status),
             "initial_prob": np.asarray(result.initial_prob),
             "final_prob": np.asarray(result.final_prob)}
    _runfolder.save_chunk(path, key, chunk)
    for name in _runfolder.CHUNK_FIELDS:
      rows[name][start:stop] = chunk[name]
  if recomputed:
    log("recomputed saved chunks that no longer fit this run: " + ", ".join(
        f"{count} {reason}" for reason, count in sorted(recomputed.items())))
  if processes > 1:
    rows = _gather_rows(rows, mine)
  return rows, resumed


def _gather_rows(rows: dict[str, np.ndarray], mine: np.ndarray) -> dict[str, np.ndarray]:
  """Combines each process's rows (zero elsewhere) into full arrays on every process."""
  from jax.experimental import multihost_utils
  out = {}
  for name, value in rows.items():
    masked = np.where(mine.reshape((-1,) + (1,) * (value.ndim - 1)), value, 0)
    out[name] = np.asarray(multihost_utils.process_allgather(masked)).sum(axis=0).astype(value.dtype)
  return out


def _probe_report(probes, a_train, a_test) -> dict[str, dict[str, float]]:
  """Per attribute: held-out accuracy and AUC, base rate, and whether the fit converged."""
  clean = lambda v: None if not np.isfinite(v) else round(float(v), 4)
  return {name: {"val_accuracy": clean(probes.val_accuracy[a]), "val_auc": clean(probes.val_auc[a]),
                 "train_positive_rate": clean(np.mean(a_train[:, a])),
                 "test_positive_rate": clean(np.mean(a_test[:, a])),
                 "converged": bool(probes.converged[a])}
          for a, name in enumerate(probes.names)}


def _versions() -> dict[str, str]:
  import importlib.metadata as metadata
  versions = {"python": platform.python_version()}
  for package in ("cfajax", "jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn"):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      pass
  return versions


def _step_stats(steps: np.ndarray) -> dict[str, float]:
  if steps.size == 0:
    return {}
  return {"mean": float(np.mean(steps)), "median": float(np.median(steps)),
          "p90": float(np.percentile(steps, 90)), "max": int(np.max(steps))}


def _restore_or_train(kind, path, named, config, train, test, progress, log):
  """Loads the checkpoint at `path`; trains one by the recipe and saves it there if none exists."""
  if os.path.exists(path):
    return _checkpoint.load_model(path), {"checkpoint": path, "trained_now": False}
  if named:
    raise FileNotFoundError(f"no {kind} checkpoint at {path}")
  log(f"training the {kind} ({path} does not exist yet)")
  options = dict(seed=config.seed, batch_size=config.train_batch_size or None, progress=progress)
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


def _restore_or_train_models(config: ExplainConfig, train, test, progress, log):
  """Restores the VAE and the classifier, training and saving any that is absent."""
  vae, vae_info = _restore_or_train(
      "VAE", config.vae or os.path.join(config.out, "models", "vae"), bool(config.vae), config,
      train, test, progress, log)
  classifier, classifier_info = _restore_or_train(
      "classifier", config.classifier or os.path.join(config.out, "models", "classifier"),
      bool(config.classifier), config, train, test, progress, log)
  vae_info["weights_sha256"] = _checkpoint.weights_digest(vae)
  classifier_info["weights_sha256"] = _checkpoint.weights_digest(classifier)
  if config.dataset == "celeba":
    classifier = select_output(classifier, config.target_attribute)
  return vae, classifier, {"vae": vae_info, "classifier": classifier_info}


class _OneOutput(nnx.Module):
  """One sigmoid head of a multi-attribute classifier, as a (B, 1) classifier."""

  def __init__(self, classifier, column: int):
    self.classifier = classifier
    self.column = column

  def __call__(self, x):
    return self.classifier(x)[:, self.column:self.column + 1]


def select_output(classifier, attribute: str):
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
  return classifier if len(names) == 1 else _OneOutput(classifier, names.index(attribute))


def _open_folder(config: ExplainConfig, restart: bool, leader: bool, log) -> dict | None:
  """Checks the folder's earlier run against this one; clears it for a restart.

  Returns:
    The earlier run's record, or None (no earlier run, or restarted).

  Raises:
    ValueError: the earlier run used other options that change results, or
      its run.json is unreadable, and `restart` is False.
  """
  try:
    previous = _runfolder.read_run(config.out)
  except ValueError:
    if not restart:
      raise
    previous = {"config": {}}
  if previous is None:
    return None
  new = config.to_dict()
  defining = [f.name for f in dataclasses.fields(ExplainConfig)
              if f.name not in RESUMABLE_OPTIONS]
  changes = _runfolder.option_changes(previous["config"], new, defining)
  if changes and not restart:
    raise ValueError(
        f"{config.out} holds a run with other options that change its results ("
        + "; ".join(changes) + "). Restart it (restart=True, or --restart) to discard those "
        "results, or use another output folder")
  if restart:
    retrain = bool(_runfolder.option_changes(previous["config"], new, TRAINING_OPTIONS))
    if leader:
      _runfolder.clear(config.out, models=retrain)
    log(f"restarting {config.out}: earlier results discarded"
        + (", and its models, trained with other options" if retrain else ""))
    return None
  free = _runfolder.option_changes(previous["config"], new, RESUMABLE_OPTIONS)
  if free:
    log("resuming with options that change no saved result: " + "; ".join(free))
  return previous


def _sync(name: str) -> None:
  """Waits for every process (a no-op for one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _note_model_changes(previous: dict | None, models: dict, log) -> None:
  if not previous:
    return
  for kind, info in models.items():
    before = previous.get("models", {}).get(kind, {}).get("weights_sha256")
    if before and before != info["weights_sha256"]:
      log(f"the {kind}'s weights ({info['checkpoint']}) differ from those this folder's "
          "saved chunks were computed with: those chunks are recomputed")


def explain(config: ExplainConfig | None = None, *, progress: bool = True, log=print,
            restart: bool = False, **options) -> dict[str, Any]:
  """Explains a classifier over a whole dataset; writes results to `config.out`.

  Every option is checked before anything is loaded, trained or written.
  Running again with the same `out` resumes: saved chunks computed from the
  same latents, targets, attack options and model weights are reused, others
  recomputed. Options in `RESUMABLE_OPTIONS` may change between runs; a
  change of any other refuses the resume unless `restart`.

  Args:
    config: the run's configuration (default: the embedded digits run).
    progress: show progress bars.
    log: where one-line status messages go (`print`; `None` for silence).
    restart: discard the results already in `config.out` (and the models
      trained there, if an option they were trained with changed).
    **options: fields of `ExplainConfig` overriding `config`'s.

  Returns:
    The summary that is also written to `summary.json`.

  Raises:
    ValueError: an invalid option, or an output folder that holds a run with
      other result-changing options (or an unreadable run.json).
    FileNotFoundError: a checkpoint or data folder that was named but is
      missing.
    RuntimeError: another process is writing to `config.out`.
  """
  _check_option_names(options)
  config = dataclasses.replace(config or ExplainConfig(), **options)
  _check_config(config)
  log = log or (lambda message: None)
  leader = jax.process_index() == 0
  os.makedirs(config.out, exist_ok=True)
  lock = _runfolder.FolderLock(config.out) if leader else contextlib.nullcontext()
  with lock:
    previous = _open_folder(config, restart, leader, log)
    _sync("cfajax-explain-open")
    summary = _explain(config, previous, progress, leader, log)
    _sync("cfajax-explain-done")
    if leader:
      removed = _runfolder.remove_leftovers(config.out, -(-summary["num_examples"] // config.chunk_size))
      if removed:
        log(f"removed {len(removed)} leftover file(s) of earlier runs: {', '.join(removed[:3])}"
            + (", ..." if len(removed) > 3 else ""))
  return summary


def _explain(config: ExplainConfig, previous, progress: bool, leader: bool, log):
  """The stages of `explain`, in a folder already checked and locked."""
  timings = {}
  clock = time.perf_counter()

  def lap(stage):
    nonlocal clock
    now = time.perf_counter()
    timings[stage] = round(now - clock, 3)
    clock = now

  train, test = _recipes.load_train_test(config.dataset, config.data_dir,
                                         image_size=config.image_size,
                                         progress=progress and leader, log=log)
  if config.dataset == "celeba" and config.target_attribute not in train.attribute_names:
    raise ValueError(f"{train.name} has no attribute {config.target_attribute!r}; it has "
                     f"{list(train.attribute_names)}")
  data = _explained(config, train, test)
  lap("load_data")
  record = {"config": config.to_dict(), **{k: previous[k] for k in ("models", "examples")
                                           if previous and k in previous}}
  if leader:
    _runfolder.write_run(config.out, record)  # valid options only: a rerun is never blocked

  vae, classifier, model_info = _restore_or_train_models(config, train, test, progress and leader, log)
  _note_model_changes(previous, model_info, log)
  lap("models")

  logits = apply_batched(classifier, data.images)
  task = _Task(logits.shape[1], config.classes)
  selected = np.flatnonzero(task.selected(logits))
  if selected.size == 0:
    raise ValueError(f"no example of {data.name} is predicted as one of {config.classes}")
  logits = logits[selected]
  images = data.images[selected]
  original_prob = task.positive_prob(logits)
  target = task.target(logits)
  z = apply_batched(vae.encode, images)
  z_train = apply_batched(vae.encode, train.images)
  z_test = apply_batched(vae.encode, test.images)
  record["models"] = {k: {"checkpoint": v["checkpoint"], "weights_sha256": v["weights_sha256"]}
                      for k, v in model_info.items()}
  record["examples"] = {"count": int(len(z)),
                        "sha256": _hashing.digest_arrays(selected, z, target)}
  if leader:
    _runfolder.write_run(config.out, record)
  lap("encode")

  names, (a_train, a_test), attribute_info = _attribute_table(config, [train, test])
  probes = fit_probes(z_train, a_train, C=config.probe_c, names=names,
                      class_weight=config.probe_class_weight,
                      standardize=config.probe_standardize, validation=(z_test, a_test))
  lap("probes")

  bar = None
  if progress and leader:
    from tqdm.auto import tqdm
    bar = tqdm(total=len(z), desc="counterfactuals", unit="example")
  models_digest = _hashing.digest_json(
      [record["models"]["vae"]["weights_sha256"], record["models"]["classifier"]["weights_sha256"],
       config.target_attribute if config.dataset == "celeba" else None])
  try:
    rows, resumed = _attack_chunks(config, vae.decode, classifier, z, target, models_digest,
                                   bar, log)
  finally:
    if bar is not None:
      bar.close()
  lap("attack")

  z_cf = rows["z_cf"]
  success = rows["status"] == Status.REACHED
  cf_images = apply_batched(vae.decode, z_cf)
  recon = apply_batched(vae.decode, z)
  cf_prob = task.positive_prob(apply_batched(classifier, cf_images))
  # A non-finite latent has no counterfactual, whatever a model makes of its
  # NaN image (XLA's max, in a ReLU or a max pool, can turn NaN into 0).
  cf_prob[~np.all(np.isfinite(z_cf), axis=1)] = np.nan
  phi = np.asarray(local_attributions(probes, z, z_cf))
  psi = None
  if success.any():
    psi = global_attributions(phi, original_prob, success=success, names=names,
                              num_bootstrap=config.num_bootstrap, seed=config.seed)
  else:
    log(f"warning: none of the {len(z)} attacks reached the target; no global attributions "
        "(try more --max-steps, a larger --step-size, or check the models)")
  lap("attributions")

  # A counterfactual that went non-finite has no decision: it flips nothing.
  flipped = np.isfinite(cf_prob) & ((cf_prob >= 0.5) != (original_prob >= 0.5))
  summary = {
      "task": task.describe(config.target_attribute),
      "dataset": data.name,
      "num_examples": int(len(z)),
      "num_resumed": int(resumed),
      "flip_rate": float(np.mean(success)),
      "decision_flipped": float(np.mean(flipped)),
      "status_counts": {s.name: int(np.sum(rows["status"] == s)) for s in Status},
      "steps": _step_stats(rows["steps"][success]),
      "global_attributions": None if psi is None else psi.to_dict(),
      "probes": _probe_report(probes, a_train, a_test),
      "reconstruction_agreement": float(np.mean(
          (task.positive_prob(apply_batched(classifier, recon)) >= 0.5) == (original_prob >= 0.5))),
      "models": model_info,
      **attribute_info,
      "timings_s": timings,
      "devices": [str(d) for d in jax.local_devices()],
      "process_count": jax.process_count(),
      "versions": _versions(),
      "config": config.to_dict(),
  }
  if leader:
    _runfolder.save_npz(os.path.join(config.out, "examples.npz"),
                        index=selected,
                        ids=(data.ids[selected] if data.ids is not None else selected),
                        z=z, z_cf=z_cf, steps=rows["steps"], status=rows["status"],
                        target=target, original_prob=original_prob.astype(np.float32),
                        counterfactual_prob=cf_prob.astype(np.float32),
                        phi=phi.astype(np.float32), attribute_names=np.array(names))
    _plots.counterfactual_grid(
        os.path.join(config.out, "counterfactuals.png"), images, recon, cf_images,
        original_prob, cf_prob, rows["status"], count=config.num_figure_examples,
        seed=config.seed, title=summary["task"])
    if psi is not None:
      _plots.global_attribution_bars(
          os.path.join(config.out, "global_attributions.png"), psi, title=summary["task"])
    lap("write")
    summary["timings_s"] = timings
    _runfolder.save_json(os.path.join(config.out, "summary.json"), summary)
  return summary
