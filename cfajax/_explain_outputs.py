"""What an explanation writes: summary.json (psi, its intervals and p-values, the warnings,
the models, the timings), examples.npz and the figures."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax
import numpy as np

from cfajax import _plots
from cfajax import _runfolder
from cfajax._batching import apply_batched
from cfajax._explain_config import applicable_options
from cfajax._explain_stages import _Attributions
from cfajax._explain_stages import _Counterfactuals
from cfajax._explain_stages import _Examples
from cfajax._explain_stages import _Fitted
from cfajax._explain_stages import _Models
from cfajax._explain_stages import _Report
from cfajax._status import Status


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
