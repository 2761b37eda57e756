"""The explanation's stages, each a function of what it reads: the models and their digests,
the examples and their latents, the probes, the attack in resumable chunks, the attributions."""

from __future__ import annotations

import time
from typing import Any
from typing import NamedTuple

import jax
import numpy as np

from cfajax import _hashing
from cfajax import _inputs
from cfajax import _runfolder
from cfajax import _sources
from cfajax import attacks
from cfajax._attributions import global_attributions
from cfajax._attributions import local_attributions
from cfajax._batching import apply_batched
from cfajax._explain_config import ExplainConfig
from cfajax._probes import fit_probes
from cfajax._progress import progress_bar
from cfajax._significance import probe_refits
from cfajax._status import Status
from cfajax._task import DecisionTask
from cfajax._task import check_logits


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
  check_logits(logits, config.attack.threshold)
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
    real_at_threshold = float(np.mean(own >= config.attack.threshold))
    if real_at_threshold < MIN_REAL_AT_THRESHOLD and not attack.edits_images:
      report.warn(
          f"the classifier gives only {real_at_threshold:.1%} of the real images it explains "
          f"their own class with probability >= {config.attack.threshold}: its logits are "
          "flat, and counterfactuals through a generator, whose images it rates like real ones, "
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


def _limited(table, limit: int, seed: int):
  """At most `limit` rows of an attribute table, a seeded random subset in table order."""
  if len(table) <= limit:
    return table
  rows = np.sort(np.random.default_rng(seed).permutation(len(table))[:limit])
  return table.subset(rows, f"{table.name} [{limit} of {len(table)}]")


def _fit_probes(config, inputs, run_latents) -> _Fitted:
  fit_table, check_table = inputs.attributes, inputs.validation
  if check_table is None:
    fit_table, check_table = fit_table.split(config.probe_validation_fraction, seed=config.seed)
  if config.probe_examples:
    fit_table, check_table = (_limited(t, config.probe_examples, config.seed)
                              for t in (fit_table, check_table))
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
        attack_digest=attack.digest(),
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
