"""The dataset-wide explanation: encode, fit probes, attack every example, attribute.

`explain` explains any classifier with any generator over any images: a
classifier is a JAX callable (or a cfajax checkpoint, or `module:factory`),
a generator anything with `decode` (and `encode`, else latents are found by
`invert`), images an array, a folder of image files or a tfds name, and the
probes learn from an `AttributeTable` (or an attribute CSV). The datasets
cfajax knows by name (digits, MNIST, CelebA) are presets that supply these
(`_presets.py`). It writes to `config.out`:

  models/vae, models/classifier   a preset's checkpoints (trained when absent)
  run.json                        the options this folder belongs to, and digests of
                                  the models and examples its chunks came from
  chunks/attack-00000.npz ...     finished attack chunks (for resuming)
  examples.npz                    per example: index, ids (and split, train or test, for a
                                  preset's both splits), label, z, z', steps, status, p, p', phi
                                  (and counterfactual_images for the data-free and pixel
                                  attacks, whose x' is not decode(z'))
  summary.json                    psi with intervals and ranks, flip rate, steps, timings
  counterfactuals.png, global_attributions.png

Every option is checked, and every model checked against the images, before
any work. An interrupted run (even killed with SIGKILL) resumes from its last
finished chunk; a chunk is reused only if it was computed from the same
latents, targets, attack options and models (`_runfolder`). Options that
change no result (`RESUMABLE_OPTIONS`) may differ between the runs of one
folder; the others refuse a resume, naming what changed, unless
`restart=True`. One process writes a folder at a time. Across processes
(`jax.distributed`), each process attacks every `process_count`-th chunk.

`_explain` runs the stages, each a function of what it reads:
`_read_models` (sources and digests), `_select_examples` (the pair's
examples and their latents), `_fit_probes`, `_run_attack` (resumable chunks
of the `attacks` value), `_attribute` (phi, and psi with its null),
`_summary` and `_write_outputs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from typing import Any
from typing import NamedTuple

import jax
import numpy as np

from cfajax import _hashing
from cfajax import _inputs
from cfajax import _plots
from cfajax import _presets
from cfajax import _runfolder
from cfajax import _sources
from cfajax import attacks
from cfajax._attributions import global_attributions
from cfajax._attributions import local_attributions
from cfajax._batching import apply_batched
from cfajax._explain_config import RESUMABLE_OPTIONS
from cfajax._explain_config import TRAINING_OPTIONS
from cfajax._explain_config import ExplainConfig
from cfajax._explain_config import applicable_options
from cfajax._explain_config import check_config
from cfajax._explain_config import check_option_names
from cfajax._explain_config import with_quick_defaults
from cfajax._probes import fit_probes
from cfajax._progress import progress_bar
from cfajax._significance import probe_refits
from cfajax._status import Status
from cfajax._task import DecisionTask
from cfajax._task import check_logits

# -- the run folder ----------------------------------------------------------------


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
  old = ExplainConfig.from_dict(previous["config"]).to_dict() if previous["config"] else {}
  defining = [f.name for f in dataclasses.fields(ExplainConfig)
              if f.name not in RESUMABLE_OPTIONS]
  changes = _runfolder.option_changes(old, new, defining)
  if changes and not restart:
    raise ValueError(
        f"{config.out} holds a run with other options that change its results ("
        + "; ".join(changes) + "). Restart it (restart=True, or --restart) to discard those "
        "results, or use another output folder")
  if restart:
    retrain = bool(_runfolder.option_changes(old, new, TRAINING_OPTIONS))
    if leader:
      _runfolder.clear(config.out, models=retrain)
    log(f"restarting {config.out}: earlier results discarded"
        + (", and its models, trained with other options" if retrain else ""))
    return None
  free = _runfolder.option_changes(old, new, RESUMABLE_OPTIONS)
  if free:
    log("resuming with options that change no saved result: " + "; ".join(free))
  return previous


def _sync(name: str) -> None:
  """Waits for every process (a no-op for one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# -- the user's inputs ---------------------------------------------------------------


# -- the inputs ------------------------------------------------------------------------


def _split_inputs(config: ExplainConfig | None, objects: dict[str, Any],
                  options: dict[str, Any]):
  """Strings (paths, import strings) become options; anything else stays an object."""
  if "vae" in options:
    options["generator"] = options.pop("vae")
  for name in _inputs.OBJECT_INPUTS:
    value = objects.get(name)
    if value is None and name in options:
      value = options.pop(name)
    if isinstance(value, (str, os.PathLike)):
      options[name] = os.fspath(value)
      objects[name] = None
    else:
      objects[name] = value
  check_option_names(options)
  config = dataclasses.replace(config or ExplainConfig(), **options)
  custom = objects["images"] is not None or config.images is not None
  if custom and config.dataset is not None:
    raise ValueError(f"dataset={config.dataset!r} is a preset that brings its own images; pass "
                     "images or a preset, not both")
  if not custom and config.dataset is None:
    config = dataclasses.replace(config, dataset="digits")
  if config.out is None:
    config = dataclasses.replace(
        config, out=f"runs/explain-{config.dataset}" if config.dataset else "runs/explain")
  if custom:
    for name in ("classifier", "generator", "attributes"):
      if objects[name] is None and getattr(config, name) is None:
        raise ValueError(f"explaining images of your own needs a {name} too (a preset brings "
                         "its own; see the README's 'Your own classifier')")
  return config, objects


# -- the explanation -----------------------------------------------------------------


class _Decision(NamedTuple):
  """The classifier's outputs on every image, and the examples whose decision is explained."""

  logits: np.ndarray  # (n, K) on every image
  task: DecisionTask
  selected: np.ndarray  # (m,) rows predicted on one side of the decision


def _decision(config: ExplainConfig, inputs, num_logits: int) -> _Decision:
  """Runs the classifier over the images and checks what it says, before any writing.

  Raises:
    ValueError: outputs that are not logits (`check_logits`), classes the
      classifier does not have, or classes that no image is predicted as.
  """
  logits = apply_batched(inputs.classifier, inputs.data.images)
  check_logits(logits, config.threshold)
  task = DecisionTask(num_logits, config.classes, name=inputs.decision)
  selected = np.flatnonzero(task.selected(logits))
  if selected.size == 0:
    predicted = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
    common = ", ".join(f"{c} ({predicted[c]})" for c in np.argsort(-predicted)[:3] if predicted[c])
    raise ValueError(f"no image of {inputs.data.name} is predicted as one of the classes "
                     f"{tuple(config.classes)}; the classifier predicts mostly {common}: choose "
                     "--classes among those")
  return _Decision(logits, task, selected)


# Below this share of real images at the threshold, a run warns that the
# attack's targets are out of the classifier's range.
MIN_REAL_AT_THRESHOLD = 0.05
# Fewer explained examples than this, and the summary says psi is weak.
MIN_EXAMPLES = 30


def _probe_report(probes, a_train, a_test) -> dict[str, dict[str, Any]]:
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


# Below this share of reconstructions decided as the images are, a run warns.
MIN_RECONSTRUCTION_AGREEMENT = 0.8
# At or above this share of examples on one side of the decision, a run warns.
MAX_ONE_SIDE = 0.95


def _warn_if_one_sided(task: DecisionTask, logits: np.ndarray, log) -> None:
  """Warns (through `log`) when the classifier puts (nearly) every example on one side."""
  positive = task.positive_prob(logits) >= 0.5
  share = float(np.mean(positive)) if len(positive) else 0.5
  side = max(share, 1 - share)
  if len(positive) >= 20 and side >= MAX_ONE_SIDE:
    which = task.side_name(share >= 0.5)
    log(f"the classifier puts {side:.1%} of the {len(positive)} examples on one side "
        f"({which}): ψ then describes almost only one direction of the decision; a classifier "
        "trained too briefly often does this")


def _note_model_changes(previous: dict | None, models: dict, log) -> None:
  if not previous:
    return
  for kind, info in models.items():
    before = previous.get("models", {}).get(kind, {}).get("digest")
    if before and before != info["digest"]:
      log(f"the {kind} ({info['source']}) differs from the one this folder's saved chunks were "
          "computed with: those chunks are recomputed")


def explain(config: ExplainConfig | None = None, *, classifier=None, generator=None,
            images=None, attributes=None, attribute_validation=None, latents=None,
            attack: attacks.Attack | None = None, progress: bool = True, log=print,
            restart: bool = False, **options) -> dict[str, Any]:
  """Explains a classifier's decisions over a whole set of images; writes to `config.out`.

  With no inputs, the preset `config.dataset` (default digits) supplies them.
  Otherwise give images, a classifier, a generator and attributes:

      cfajax.explain(images=x, classifier=model, generator=vae,
                     attributes=cfajax.AttributeTable(names, labels, images=x_aux),
                     classes=(3, 8), out="runs/mine")

  Every option is checked, and the models checked against the images, before
  anything is trained, encoded or written. Running again with the same `out`
  resumes: saved chunks computed from the same latents, targets, attack
  options and models are reused, others recomputed. Options in
  `RESUMABLE_OPTIONS` may change between runs; a change of any other refuses
  the resume unless `restart`.

  Args:
    config: the run's options (default `ExplainConfig()`).
    classifier: images (B, H, W, C) -> logits (B, K): a JAX callable (an
      `nnx.Module`, `jax.tree_util.Partial(linen_model.apply, params)`, an
      Equinox module, a function), a cfajax checkpoint folder or a
      `module:factory` string. K == 1 is a binary classifier; for K >= 2 the
      pair `classes` is explained.
    generator: anything with `decode` (latents -> images) and, if it has one,
      `encode` (images -> latents; else latents are found by `invert`); or a
      bare decode callable; or a checkpoint folder or `module:factory`.
    images: the images to explain: an (n, H, W, C) array, an `ImageDataset`,
      a folder of image files, or "tfds:NAME[:SPLIT]".
    attributes: an `AttributeTable` (labels for images or latents) or the
      path of an attribute CSV; the probes are fitted on it.
    attribute_validation: a table the probes are checked on (default: a
      held-out `probe_validation_fraction` of `attributes`).
    latents: the images' latents, found beforehand: an (n, d) array, one row
      per image, or the `InversionResult` of `cfajax.invert` on them (its
      pixel errors then leave out badly inverted images, as when the
      pipeline inverts). Used instead of the generator's encode or an
      inversion, e.g. to invert once for several decisions on the same images.
    attack: what makes each counterfactual: a `cfajax.attacks.LatentAttack`
      (the default, with `config`'s attack options), `PixelAttack` or
      `DataFreeAttack`; it sets `config`'s attack fields, the form in which
      run.json records it. A name ("pixel") is the config field, with the
      attack's options in `config`.
    progress: show progress bars.
    log: where one-line status messages go (`print`; `None` for silence).
    restart: discard the results already in `out` (and a preset's models
      trained there, if an option they were trained with changed).
    **options: fields of `ExplainConfig` overriding `config`'s.

  Returns:
    The summary that is also written to `summary.json`.

  Raises:
    ValueError: an invalid option or input, models that do not fit the
      images, or an output folder that holds a run with other
      result-changing options (or an unreadable run.json).
    FileNotFoundError: a checkpoint, image folder, attribute file or data
      folder that was named but is missing.
    RuntimeError: another process is writing to `out`.
  """
  objects = dict(classifier=classifier, generator=generator, images=images,
                 attributes=attributes)
  options = dict(options)
  if isinstance(attack, str):  # the config field's form: a name, with the other fields' options
    options["attack"], attack = attack, None
  config, objects = _split_inputs(config, objects, options)
  if attack is not None:
    if not isinstance(attack, tuple(attacks.ATTACKS.values())):
      raise ValueError(f"attack must be a cfajax.attacks value (LatentAttack, PixelAttack or "
                       f"DataFreeAttack) or one's name; got {type(attack).__name__}")
    attack.check()
    config = dataclasses.replace(config, **attack.config_fields())
  check_config(config)
  config = with_quick_defaults(config)
  log = log or (lambda message: None)
  leader = jax.process_index() == 0
  inputs = None
  if config.dataset is None:  # the user's inputs: read and checked before anything is written
    inputs = _inputs.custom_inputs(config, objects, attribute_validation, progress and leader)
    contract = _inputs.check_contract(config, inputs, _sources.generator_parts(inputs.generator))
    if latents is not None:
      latents = _inputs.given_latents(latents, len(inputs.data.images), contract.latent_dim)
  elif latents is not None:
    raise ValueError(f"latents are for images you pass; the preset {config.dataset!r} encodes "
                     "its own")
  objects["latents"] = latents
  decision = None
  if inputs is not None:
    decision = _decision(config, inputs, contract.num_logits)
  # _split_inputs set out.
  os.makedirs(config.out, exist_ok=True)  # pyright: ignore[reportArgumentType]
  lock = _runfolder.FolderLock(config.out) if leader else contextlib.nullcontext()
  with lock:
    previous = _open_folder(config, restart, leader, log)
    _sync("cfajax-explain-open")
    record = {"config": config.to_dict(), **{k: previous[k] for k in ("models", "examples")
                                             if previous and k in previous}}
    if leader:
      _runfolder.write_run(config.out, record)  # valid options only: a rerun is never blocked
    summary = _explain(config, inputs, decision, objects, record, previous, progress, leader,
                       log)
    _sync("cfajax-explain-done")
    if leader:
      chunks = -(-summary["num_examples"] // summary["chunk_size"])
      removed = _runfolder.remove_leftovers(config.out, chunks)
      if removed:
        log(f"removed {len(removed)} leftover file(s) of earlier runs: {', '.join(removed[:3])}"
            + (", ..." if len(removed) > 3 else ""))
  return summary


class _Report:
  """What a run says as it goes: warnings (kept for the summary) and the time of each stage."""

  def __init__(self, log):
    self.log, self.warnings, self.timings = log, [], {}
    self._clock = time.perf_counter()

  def warn(self, message: str) -> None:
    self.warnings.append(message)
    self.log(f"warning: {message}")

  def lap(self, stage: str) -> None:
    now = time.perf_counter()
    self.timings[stage] = round(now - self._clock, 3)
    self._clock = now


class _Models(NamedTuple):
  """The generator's parts, their contract with the images, and each model's source and digest."""

  parts: _sources.GeneratorParts
  contract: Any
  info: dict[str, dict[str, Any]]


def _read_models(config, inputs, previous, log) -> _Models:
  parts = _sources.generator_parts(inputs.generator)
  contract = _inputs.check_contract(config, inputs, parts)
  info = {
      "generator": {**inputs.info.get("generator", {}), "digest": _sources.callable_digest(
          parts.decode, jax.ShapeDtypeStruct((2, contract.latent_dim), np.float32))},
      "classifier": {**inputs.info.get("classifier", {}), "digest": _sources.callable_digest(
          inputs.classifier, jax.ShapeDtypeStruct((2, *contract.image_shape), np.float32))}}
  for model in info.values():
    model.setdefault("source", model.get("checkpoint", "given"))
  _note_model_changes(previous, info, log)
  return _Models(parts, contract, info)


class _Examples(NamedTuple):
  """The examples explained, their latents and what the classifier says of them."""

  selected: np.ndarray  # (m,) rows of the dataset
  z: np.ndarray  # (m, d)
  images: np.ndarray  # (m, H, W, C)
  logits: np.ndarray  # (m, K)
  target: np.ndarray  # (m,) the attack's targets
  original_prob: np.ndarray  # (m,) probability of the positive side
  inverted: bool  # whether the latents came from an inversion
  inversion: dict | None  # its report
  candidates: int  # images predicted on one side of the decision
  outside: int  # images predicted outside the pair
  real_at_threshold: float | None  # share of real images at the threshold themselves


def _select_examples(config, attack, inputs, models: _Models, decision: _Decision,
                     given_latents, run_latents, report: _Report) -> _Examples:
  """The examples on either side of the decision, with their latents; badly inverted
  images left out."""
  data = inputs.data
  logits, task, selected = decision
  candidates = int(selected.size)
  outside = int(len(data.images) - candidates)
  if outside:  # a preset's dataset holds every class; a folder of the user's, the pair
    (report.warn if config.dataset is None else report.log)(
        f"{outside} of {len(data.images)} images are predicted as neither class of "
        f"{tuple(config.classes)} and are not explained")
  _warn_if_one_sided(task, logits[selected], report.warn)
  if config.limit:
    selected = selected[task.subset(logits[selected], config.limit, config.seed)]
  if given_latents is None:
    z, errors = run_latents(data.images[selected], "images to explain")
  else:
    z, errors = given_latents
    z, errors = z[selected], None if errors is None else errors[selected]
    if errors is not None:  # the tables' images among them are not inverted again
      run_latents.remember(data.images[selected], z, errors)
  inversion = None
  if errors is not None:
    bad, threshold = _inputs.badly_inverted(config, errors)
    inversion = {"images": int(len(errors)), "left_out": int(bad.sum()),
                 "max_error": threshold, "median_error": float(np.median(errors)),
                 "left_out_indices": selected[bad].tolist()[:100]}
    if bad.any():
      report.warn(f"left out {int(bad.sum())} of {len(errors)} images that the generator "
                  f"reproduces badly (pixel MSE > {threshold:.4g})")
    selected, z = selected[~bad], z[~bad]
  logits = logits[selected]
  real_at_threshold = None
  if len(z):
    own = task.own_class_prob(logits)
    real_at_threshold = float(np.mean(own >= config.threshold))
    if real_at_threshold < MIN_REAL_AT_THRESHOLD and not attack.edits_images:
      report.warn(
          f"the classifier gives only {real_at_threshold:.1%} of the real images it explains "
          f"their own class with probability >= {config.threshold}: its logits are flat, and "
          "counterfactuals through a generator, whose images it rates like real ones, "
          "will rarely reach the threshold ("
          + (f"--threshold {np.floor(np.median(own) * 100) / 100:.2f}, the median image's, "
             if np.median(own) > 0.5 else "")
          + "a classifier trained longer, or logits not scaled down, would)")
  return _Examples(selected, z, data.images[selected], logits, task.target(logits),
                   task.positive_prob(logits), errors is not None, inversion, candidates,
                   outside, real_at_threshold)


class _Fitted(NamedTuple):
  """The probes, and the attribute tables' latents they were fitted and checked on."""

  probes: Any
  names: tuple[str, ...]
  z_fit: np.ndarray
  a_fit: np.ndarray
  a_check: np.ndarray
  source: dict[str, Any]  # the summary's "attribute_source"


def _fit_probes(config, inputs, run_latents) -> _Fitted:
  fit_table, check_table = inputs.attributes, inputs.validation
  if check_table is None:
    fit_table, check_table = fit_table.split(config.probe_validation_fraction, seed=config.seed)
  z_fit, a_fit, dropped_fit = _inputs.table_latents(config, run_latents, fit_table)
  z_check, a_check, dropped_check = _inputs.table_latents(config, run_latents, check_table)
  names = fit_table.names
  probes = fit_probes(z_fit, a_fit, C=config.probe_c, names=names,
                      class_weight=config.probe_class_weight,
                      standardize=config.probe_standardize, validation=(z_check, a_check))
  source = {"fit": fit_table.name, "check": check_table.name,
            "left_out_inversions": dropped_fit + dropped_check}
  return _Fitted(probes, names, z_fit, a_fit, a_check, source)


class _Counterfactuals(NamedTuple):
  """The attack's rows (`z_cf`, `steps`, `status`, ...) and what they are as images and latents."""

  rows: dict[str, np.ndarray]
  resumed: int  # examples whose chunk was reused
  chunk_size: int
  z_cf: np.ndarray  # (m, d) the counterfactuals' latents
  images: np.ndarray  # (m, H, W, C) the counterfactuals
  prob: np.ndarray  # (m,) their positive-side probability; NaN where non-finite
  success: np.ndarray  # (m,) bool, reached the target


def _run_attack(config, attack, inputs, task: DecisionTask, models: _Models, ex: _Examples,
                bars, log) -> _Counterfactuals:
  """Runs the attack in resumable chunks; the counterfactuals' images and latents."""
  parts, contract = models.parts, models.contract
  chunk_size = _runfolder.chunk_size_for(len(ex.z), config.chunk_size)
  digests = [models.info["generator"]["digest"], models.info["classifier"]["digest"]]
  attack_models = {}
  for role, source in attack.model_sources().items():  # e.g. the data-free attack's manifold
    attack_models[role] = _sources.load_model_spec(source, role)
    models.info[role] = {"source": source, "digest": _sources.callable_digest(
        attack_models[role], jax.ShapeDtypeStruct((2, *contract.image_shape), np.float32))}
    digests.append(models.info[role]["digest"])
  run_chunk = attack.runner(attacks.AttackModels(parts.decode, inputs.classifier,
                                                 contract.image_shape, attack_models),
                            config.pool_size)
  with progress_bar(bars, total=len(ex.z), desc="counterfactuals", unit="example") as bar:
    rows, resumed = _runfolder.attack_in_chunks(
        config.out, run_chunk, attack.starts(ex.z, ex.images), ex.target, chunk_size=chunk_size,
        attack_digest=_hashing.digest_json({"attack": attack.name, **attack.options()}),
        models_digest=_hashing.digest_json(digests), progress=bar, log=log)
  if not attack.edits_images:
    z_cf = rows["z_cf"]
    cf_images = apply_batched(parts.decode, z_cf)
  else:
    cf_images = rows["z_cf"].reshape(ex.images.shape)
    # A failed, non-finite counterfactual is measured as its original (phi 0;
    # psi counts successes only): neither encoder nor inversion takes NaN.
    finite = np.all(np.isfinite(rows["z_cf"]), axis=1)
    measured = np.where(finite[:, None, None, None], cf_images, ex.images)
    z_cf, _ = _inputs.latents_of(config, parts, contract, measured, "counterfactuals", bars,
                                 log)
  cf_prob = task.positive_prob(apply_batched(inputs.classifier, cf_images))
  # A non-finite latent or image has no counterfactual, whatever a model makes of
  # its NaN image (XLA's max, in a ReLU or a max pool, can turn NaN into 0).
  cf_prob[~np.all(np.isfinite(rows["z_cf"]), axis=1)] = np.nan
  return _Counterfactuals(rows, resumed, chunk_size, z_cf, cf_images, cf_prob,
                          rows["status"] == Status.REACHED)


class _Attributions(NamedTuple):
  phi: np.ndarray  # (m, A) local attributions
  psi: Any  # GlobalAttributions, or None when no attack reached its target
  at_target: np.ndarray  # (m,) bool, attacks that started at the target


def _attribute(config, ex: _Examples, fitted: _Fitted, cf: _Counterfactuals, bars,
               report: _Report) -> _Attributions:
  """Local attributions of every counterfactual; psi over those that count, with its null."""
  phi = np.asarray(local_attributions(fitted.probes, ex.z, cf.z_cf))
  # Attacks that start at the target: G(z) is already past the threshold, so z' = z, phi = 0.
  at_target = cf.success & (cf.rows["steps"] == 0)
  used = cf.success & ~at_target if config.exclude_started_at_target else cf.success
  if at_target.any():
    share = float(np.mean(at_target))
    effect = ("left out of psi (exclude_started_at_target)" if config.exclude_started_at_target
              else "counted in psi with phi = 0, which pulls psi toward 0 by that share "
              "(exclude_started_at_target leaves them out)")
    message = (f"{int(at_target.sum())} of {len(ex.z)} attacks ({share:.1%}) started at the "
               f"target: the generator's reconstruction G(z) is already past the threshold; "
               f"{effect}")
    (report.warn if share >= 0.05 else report.log)(message)
  if not used.any():
    report.warn(f"none of the {len(ex.z)} attacks reached the target; no global attributions "
                "(try more --max-steps, a lower --threshold, or check the models)")
    return _Attributions(phi, None, at_target)
  refits = None
  if config.num_permutations or (config.probe_bootstrap and config.num_bootstrap):
    refits = probe_refits(
        fitted.z_fit, fitted.a_fit, ex.z, cf.z_cf, ex.original_prob, success=used,
        num_permutations=config.num_permutations,
        num_bootstrap=config.num_bootstrap if config.probe_bootstrap else 0,
        seed=config.seed, C=config.probe_c, class_weight=config.probe_class_weight,
        standardize=config.probe_standardize, progress=bars)
  psi = global_attributions(phi, ex.original_prob, success=used, names=fitted.names,
                            num_bootstrap=config.num_bootstrap, seed=config.seed,
                            refits=refits, probe_auc=np.asarray(fitted.probes.val_auc))
  if psi.num_used < MIN_EXAMPLES:
    report.warn(f"psi averages only {psi.num_used} counterfactuals (fewer than {MIN_EXAMPLES}): "
                "its intervals and p-values are rough, and a handful of images decide the "
                "ranking")
  noise = [] if psi.significant is None else [
      fitted.names[a] for a in psi.ranking[:5] if not psi.significant[a]]
  if noise:
    report.log(f"not distinguishable from probes fitted to permuted labels (Holm-adjusted p > "
               f"{psi.alpha}): {', '.join(noise)} among the top five")
  return _Attributions(phi, psi, at_target)


def _explain(config, inputs, decision, objects, record, previous, progress, leader, log):
  """The stages of `explain`, in a folder already checked and locked.

  `inputs` are the user's, already read, and `decision` the classifier's
  outputs on them; both None for a preset's."""
  report = _Report(log)
  attack = attacks.from_config(config)
  bars = progress and leader
  if inputs is None:
    inputs = _presets.preset_inputs(config, classifier=objects["classifier"],
                                    generator=objects["generator"],
                                    attributes=objects["attributes"], progress=bars, log=log)
  models = _read_models(config, inputs, previous, log)
  report.lap("inputs")

  if decision is None:
    decision = _decision(config, inputs, models.contract.num_logits)
  run_latents = _inputs.RunLatents(config, models.parts, models.contract, bars, log)
  ex = _select_examples(config, attack, inputs, models, decision, objects["latents"],
                        run_latents, report)
  record["models"] = {k: {"source": v["source"], "digest": v["digest"]}
                      for k, v in models.info.items()}
  record["examples"] = {"count": int(len(ex.z)),
                        "sha256": _hashing.digest_arrays(ex.selected, ex.z, ex.target)}
  if leader:
    _runfolder.write_run(config.out, record)
  report.lap("encode")

  fitted = _fit_probes(config, inputs, run_latents)
  report.lap("probes")
  cf = _run_attack(config, attack, inputs, decision.task, models, ex, bars, log)
  report.lap("attack")
  attributed = _attribute(config, ex, fitted, cf, bars, report)
  report.lap("attributions")

  recon = apply_batched(models.parts.decode, ex.z)
  summary = _summary(config, attack, inputs, decision.task, models, objects, ex, fitted, cf,
                     attributed, recon, report)
  if leader:
    _write_outputs(config, attack, inputs, decision.task, ex, fitted, cf, attributed, recon,
                   summary)
    report.lap("write")
    summary["timings_s"] = report.timings
    _runfolder.save_json(os.path.join(config.out, "summary.json"), summary)
  return summary


def _summary(config, attack, inputs, task, models: _Models, objects, ex: _Examples,
             fitted: _Fitted, cf: _Counterfactuals, attributed: _Attributions, recon,
             report: _Report) -> dict[str, Any]:
  """summary.json: what was explained, how the attack went, psi, and the run's provenance."""
  flipped = np.isfinite(cf.prob) & ((cf.prob >= 0.5) != (ex.original_prob >= 0.5))
  decisions = (task.positive_prob(apply_batched(inputs.classifier, recon)) >= 0.5)
  n = len(ex.z)
  agreement = float(np.mean(decisions == (ex.original_prob >= 0.5))) if n else None
  if agreement is not None and agreement < MIN_RECONSTRUCTION_AGREEMENT:
    report.warn(f"the classifier decides {1 - agreement:.0%} of the generator's reconstructions "
                "G(z) otherwise than the images themselves: counterfactuals start from G(z), "
                "so the generator, not only the attack, changes those decisions (a better "
                "generator, or more training, would help)")
  psi = attributed.psi
  return {
      "task": task.describe(),
      "positive_side": task.positive_side(),
      "dataset": inputs.data.name,
      "num_examples": int(n),
      "num_candidates": ex.candidates,
      "chunk_size": cf.chunk_size,
      "num_resumed": int(cf.resumed),
      "num_outside_pair": ex.outside,
      "num_started_at_target": int(attributed.at_target.sum()),
      "started_at_target_excluded": bool(config.exclude_started_at_target),
      "real_at_threshold": ex.real_at_threshold,
      "warnings": report.warnings,
      "flip_rate": float(np.mean(cf.success)) if n else 0.0,
      "decision_flipped": float(np.mean(flipped)) if n else 0.0,
      "status_counts": {s.name: int(np.sum(cf.rows["status"] == s)) for s in Status},
      "steps": _step_stats(cf.rows["steps"][cf.success]),
      "global_attributions": None if psi is None else psi.to_dict(),
      "probes": _probe_report(fitted.probes, fitted.a_fit, fitted.a_check),
      "attribute_source": fitted.source,
      "reconstruction_agreement": agreement,
      "inversion": ex.inversion,
      "latents": ("given" if objects["latents"] is not None
                  else "encoded" if models.parts.encode is not None else "inverted"),
      "attack": attack.name,
      **({} if not attack.edits_images else {"attribution_measurement": (
          "phi = g(E(x')) - g(E(x)): the counterfactual images, made without the generator, "
          "and the originals encoded by it, for measurement only")}),
      "models": models.info,
      **{k: v for k, v in inputs.info.items() if k not in ("generator", "classifier")},
      "timings_s": report.timings,
      "devices": [str(d) for d in jax.local_devices()],
      "process_count": jax.process_count(),
      "versions": _versions(),
      "config": applicable_options(config, binary=task.binary, inverted=ex.inverted),
  }


def _write_outputs(config, attack, inputs, task, ex: _Examples, fitted: _Fitted,
                   cf: _Counterfactuals, attributed: _Attributions, recon, summary) -> None:
  """examples.npz and the two figures."""
  data, selected = inputs.data, ex.selected
  extra = {}
  if data.files is not None:
    extra["files"] = data.files[selected]
  if data.labels is not None:
    extra["label"] = data.labels[selected]
  if inputs.split is not None:
    extra["split"] = inputs.split[selected]
  if attack.edits_images:  # not decode(z_cf): the images themselves
    extra["counterfactual_images"] = cf.images.astype(np.float32)
  _runfolder.save_npz(os.path.join(config.out, "examples.npz"),
                      index=selected,
                      ids=(data.ids[selected] if data.ids is not None else selected),
                      z=ex.z, z_cf=cf.z_cf, steps=cf.rows["steps"], status=cf.rows["status"],
                      target=ex.target, original_prob=ex.original_prob.astype(np.float32),
                      counterfactual_prob=cf.prob.astype(np.float32),
                      phi=attributed.phi.astype(np.float32),
                      attribute_names=np.array(fitted.names), **extra)
  _plots.counterfactual_grid(
      os.path.join(config.out, "counterfactuals.png"), ex.images, recon, cf.images,
      ex.original_prob, cf.prob, cf.rows["status"], count=config.num_figure_examples,
      seed=config.seed, title=summary["task"], positive=task.side_name(True),
      image_attack=attack.edits_images)
  if attributed.psi is not None:
    _plots.global_attribution_bars(
        os.path.join(config.out, "global_attributions.png"), attributed.psi,
        title=summary["task"], positive=task.side_name(True))
