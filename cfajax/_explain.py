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

`_explain` runs the stages (`_explain_stages`), each a function of what it
reads: `_read_models` (sources and digests), `_select_examples` (the pair's
examples and their latents), `_fit_probes`, `_run_attack` (resumable chunks
of the `attacks` value) and `_attribute` (phi, and psi with its null); then
`_explain_outputs` writes `summary.json`, `examples.npz` and the figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax

from cfajax import _hashing
from cfajax import _inputs
from cfajax import _presets
from cfajax import _runfolder
from cfajax import _sources
from cfajax import attacks
from cfajax._batching import apply_batched
from cfajax._explain_checks import check_config
from cfajax._explain_config import RESUMABLE_OPTIONS
from cfajax._explain_config import TRAINING_OPTIONS
from cfajax._explain_config import ExplainConfig
from cfajax._explain_config import check_option_names
from cfajax._explain_config import with_quick_defaults
from cfajax._explain_outputs import _summary
from cfajax._explain_outputs import _write_outputs
from cfajax._explain_stages import _attribute
from cfajax._explain_stages import _decision
from cfajax._explain_stages import _fit_probes
from cfajax._explain_stages import _read_models
from cfajax._explain_stages import _Report
from cfajax._explain_stages import _run_attack
from cfajax._explain_stages import _select_examples


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
  new = _comparable(config)
  old = _comparable(ExplainConfig.from_dict(previous["config"])) if previous["config"] else {}
  defining = [name for name in new if name not in RESUMABLE_OPTIONS]
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


def _comparable(config: ExplainConfig) -> dict[str, Any]:
  """`config`'s options with the attack's as `attack.<option>`: each compared on its own."""
  values = config.to_dict()
  attack = values.pop("attack")
  return {**values, **{f"attack.{name}": value for name, value in attack.items()}}


def _sync(name: str) -> None:
  """Waits for every process (a no-op for one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


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
    attack: what makes each counterfactual, with its options: a
      `cfajax.attacks` value, `LatentAttack(...)` (the default),
      `PixelAttack(...)` or `DataFreeAttack(...)`; it replaces `config`'s
      attack. (A name, "pixel", with the options as keywords of their own,
      is the form before values: accepted with a DeprecationWarning.)
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
  if attack is not None:
    options["attack"] = attack if isinstance(attack, str) else attacks.check_value(attack)
  config, objects = _split_inputs(config, objects, options)
  check_config(config, generator_given=objects["generator"] is not None)
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


def _explain(config, inputs, decision, objects, record, previous, progress, leader, log):
  """The stages of `explain`, in a folder already checked and locked.

  `inputs` are the user's, already read, and `decision` the classifier's
  outputs on them; both None for a preset's."""
  report = _Report(log)
  attack = config.attack
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
