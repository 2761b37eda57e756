"""The dataset-wide explanation: models, probes, attacks and attributions, resumable.

`explain(config)` runs every stage for one dataset and writes to `config.out`:

  models/vae, models/classifier   checkpoints (trained first when absent)
  run.json                        the configuration this folder belongs to
  chunks/attack-00000.npz ...     finished attack chunks (for resuming)
  examples.npz                    per example: index, z, z', steps, status, p, p', phi
  summary.json                    psi with intervals and ranks, flip rate, steps, timings
  counterfactuals.png, global_attributions.png

An interrupted run (even killed with SIGKILL) resumes from its last finished
chunk: every file is written to a temporary name and renamed into place.
Across processes (`jax.distributed`), each process attacks every
`process_count`-th chunk and the results are gathered before psi is computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
import zipfile
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from cfajax import _checkpoint
from cfajax import _descriptors
from cfajax import _models
from cfajax import _plots
from cfajax import _recipes
from cfajax import _train
from cfajax._attack import counterfactual_attack
from cfajax._attributions import global_attributions
from cfajax._attributions import local_attributions
from cfajax._batching import apply_batched
from cfajax._loop import Status
from cfajax._probes import fit_probes

RUN_FILE = "run.json"
RUN_FORMAT = 1


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
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"unknown explain options: {sorted(unknown)}")
    values = dict(values)
    for name in ("classes", "vae_widths", "classifier_widths", "exclude_attributes"):
      if name in values:
        values[name] = tuple(values[name])
    return cls(**values)


def _check_config(config: ExplainConfig) -> None:
  _recipes.recipe(config.dataset)
  if config.explain_split not in ("train", "test", "all"):
    raise ValueError(f"explain_split must be train, test or all; got {config.explain_split!r}")
  a, b = config.classes
  if a == b:
    raise ValueError(f"classes must be two different classes; got {config.classes}")
  if config.optimizer not in ("ascent", "adam"):
    raise ValueError(f"optimizer must be 'ascent' or 'adam'; got {config.optimizer!r}")
  if config.chunk_size < 1:
    raise ValueError(f"chunk_size must be positive; got {config.chunk_size}")
  if not 0 < config.max_attribute_correlation <= 1:
    raise ValueError("max_attribute_correlation must be in (0, 1]; got "
                     f"{config.max_attribute_correlation}")


# -- atomic files --------------------------------------------------------------


def _atomic_write(path: str, write) -> None:
  """Calls `write(tmp_path)`, then renames into place: no half-written files."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _save_npz(path: str, **arrays) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  _atomic_write(path, write)


def _save_json(path: str, value) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(value, f, indent=2, sort_keys=False)
      f.write("\n")
  _atomic_write(path, write)


def _load_npz(path: str) -> dict[str, np.ndarray] | None:
  """Reads a chunk; a missing or unreadable file means 'not done'."""
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return None


def _fingerprint(config: ExplainConfig, num_examples: int) -> str:
  """What a chunk file must match to be reused: the config and the data size."""
  values = config.to_dict()
  values.pop("out")
  text = json.dumps([RUN_FORMAT, values, num_examples], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _attack_chunks(config, decode, classify, z, target, fingerprint, progress):
  """Attacks `z` chunk by chunk, reusing chunks already on disk; returns rows for all."""
  chunk_dir = os.path.join(config.out, "chunks")
  os.makedirs(chunk_dir, exist_ok=True)
  n = len(z)
  process, processes = jax.process_index(), jax.process_count()
  fields = ("z_cf", "steps", "status", "initial_prob", "final_prob")
  rows = {"z_cf": np.zeros_like(z), "steps": np.zeros(n, np.int32),
          "status": np.zeros(n, np.int32), "initial_prob": np.zeros(n, np.float32),
          "final_prob": np.zeros(n, np.float32)}
  mine = np.zeros(n, bool)
  options = dict(threshold=config.threshold, max_steps=config.max_steps,
                 objective=config.objective, precision=config.precision,
                 batch_size=config.pool_size)
  if config.optimizer == "adam":
    options["optimizer"] = optax.adam(config.learning_rate)
  else:
    options["step_size"] = config.step_size
  resumed = 0
  for k, start in enumerate(range(0, n, config.chunk_size)):
    if k % processes != process:
      continue
    stop = min(start + config.chunk_size, n)
    mine[start:stop] = True
    path = os.path.join(chunk_dir, f"attack-{k:05d}.npz")
    saved = _load_npz(path)
    if saved is not None and str(saved.get("fingerprint")) == fingerprint:
      for name in fields:
        rows[name][start:stop] = saved[name]
      resumed += stop - start
      if progress is not None:
        progress.update(stop - start)
      continue
    result = counterfactual_attack(decode, classify, z[start:stop], target[start:stop],
                                   progress=progress, **options)
    chunk = {"z_cf": np.asarray(result.z), "steps": np.asarray(result.steps),
             "status": np.asarray(result.status),
             "initial_prob": np.asarray(result.initial_prob),
             "final_prob": np.asarray(result.final_prob)}
    _save_npz(path, fingerprint=np.array(fingerprint), **chunk)
    for name in fields:
      rows[name][start:stop] = chunk[name]
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


def _restore_or_train(kind, path, named, build, train_fn, log):
  """Loads the checkpoint at `path`; trains and saves a model there if none exists."""
  if os.path.exists(path):
    return _checkpoint.load_model(path), {"checkpoint": path, "trained_now": False}
  if named:
    raise FileNotFoundError(f"no {kind} checkpoint at {path}")
  model = build()
  log(f"training the {kind} ({path} does not exist yet)")
  model, history = train_fn(model)
  _checkpoint.save_model(path, model, metrics=history)
  return model, {"checkpoint": path, "trained_now": True, "final_epoch": history[-1]}


def _restore_or_train_models(config: ExplainConfig, train, test, progress, log):
  """Restores the VAE and the classifier, training and saving any that is absent."""
  recipe = _recipes.recipe(config.dataset)
  vae_config = _recipes.vae_config(config.dataset, train.image_shape,
                                   latent_dim=config.latent_dim, widths=config.vae_widths)
  attributes = (config.target_attribute,) if config.dataset == "celeba" else None
  classifier_config = _recipes.classifier_config(
      config.dataset, train.image_shape, attributes=attributes, widths=config.classifier_widths)
  options = dict(batch_size=config.train_batch_size or recipe.batch_size, seed=config.seed,
                 progress=progress)
  vae, vae_info = _restore_or_train(
      "VAE", config.vae or os.path.join(config.out, "models", "vae"), bool(config.vae),
      lambda: _models.build_model("vae", vae_config, seed=config.seed),
      lambda model: _train.train_vae(model, train, test,
                                     epochs=config.vae_epochs or recipe.vae_epochs, **options),
      log)
  classifier, classifier_info = _restore_or_train(
      "classifier", config.classifier or os.path.join(config.out, "models", "classifier"),
      bool(config.classifier),
      lambda: _models.build_model("classifier", classifier_config, seed=config.seed + 1),
      lambda model: _train.train_classifier(
          model, train, test, epochs=config.classifier_epochs or recipe.classifier_epochs,
          **options),
      log)
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


def explain(config: ExplainConfig | None = None, *, progress: bool = True, log=print,
            **options) -> dict[str, Any]:
  """Explains a classifier over a whole dataset; writes results to `config.out`.

  Args:
    config: the run's configuration (default: the embedded digits run).
    progress: show progress bars.
    log: where one-line status messages go (`print`; `None` for silence).
    **options: fields of `ExplainConfig` overriding `config`'s.

  Returns:
    The summary that is also written to `summary.json`.

  Raises:
    ValueError: for an invalid configuration, or an output folder that holds
      a run with another configuration.
    FileNotFoundError: for a checkpoint or data folder that was named but is
      missing.
  """

  config = dataclasses.replace(config or ExplainConfig(), **options)
  _check_config(config)
  log = log or (lambda message: None)
  leader = jax.process_index() == 0
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
  data = _explained(config, train, test)
  lap("load_data")
  os.makedirs(config.out, exist_ok=True)
  fingerprint = _fingerprint(config, len(data))
  run_path = os.path.join(config.out, RUN_FILE)
  if os.path.exists(run_path):
    with open(run_path) as f:
      previous = json.load(f)
    if previous.get("fingerprint") != fingerprint:
      raise ValueError(
          f"{config.out} holds a run with another configuration or dataset "
          f"(fingerprint {previous.get('fingerprint')}, this run {fingerprint}); "
          "use a new --out folder or delete that one")
  elif leader:
    _save_json(run_path, {"fingerprint": fingerprint, "config": config.to_dict(),
                          "num_examples": len(data)})

  vae, classifier, model_info = _restore_or_train_models(config, train, test, progress and leader, log)
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
  try:
    rows, resumed = _attack_chunks(config, vae.decode, classifier, z, target, fingerprint, bar)
  finally:
    if bar is not None:
      bar.close()
  lap("attack")

  z_cf = rows["z_cf"]
  success = rows["status"] == 0
  cf_images = apply_batched(vae.decode, z_cf)
  recon = apply_batched(vae.decode, z)
  cf_prob = task.positive_prob(apply_batched(classifier, cf_images))
  phi = np.asarray(local_attributions(probes, z, z_cf))
  psi = None
  if success.any():
    psi = global_attributions(phi, original_prob, success=success, names=names,
                              num_bootstrap=config.num_bootstrap, seed=config.seed)
  else:
    log(f"warning: none of the {len(z)} attacks reached the target; no global attributions "
        "(try more --max-steps, a larger --step-size, or check the models)")
  lap("attributions")

  summary = {
      "task": task.describe(config.target_attribute),
      "dataset": data.name,
      "num_examples": int(len(z)),
      "num_resumed": int(resumed),
      "flip_rate": float(np.mean(success)),
      "decision_flipped": float(np.mean((cf_prob >= 0.5) != (original_prob >= 0.5))),
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
    _save_npz(os.path.join(config.out, "examples.npz"),
              index=selected, ids=(data.ids[selected] if data.ids is not None else selected),
              z=z, z_cf=z_cf, steps=rows["steps"], status=rows["status"], target=target,
              original_prob=original_prob.astype(np.float32),
              counterfactual_prob=cf_prob.astype(np.float32), phi=phi.astype(np.float32),
              attribute_names=np.array(names))
    _plots.counterfactual_grid(
        os.path.join(config.out, "counterfactuals.png"), images, recon, cf_images,
        original_prob, cf_prob, success, count=config.num_figure_examples, seed=config.seed,
        title=summary["task"])
    if psi is not None:
      _plots.global_attribution_bars(
          os.path.join(config.out, "global_attributions.png"), psi, title=summary["task"])
    lap("write")
    summary["timings_s"] = timings
    _save_json(os.path.join(config.out, "summary.json"), summary)
  return summary
