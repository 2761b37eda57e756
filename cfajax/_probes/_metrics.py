"""Probe quality on the host: ROC AUC and held-out accuracy."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from cfajax._probes._solver import Probes


def roc_auc(labels, scores) -> float:
  """Area under the ROC curve from ranks (the Mann-Whitney U statistic).

  AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N), with tied scores
  given their average rank, so a tie between a positive and a negative counts
  one half.

  Args:
    labels: (n,) in {0, 1}.
    scores: (n,) real scores, higher meaning more likely positive.

  Returns:
    The AUC in [0, 1], or NaN if `labels` holds one class only.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return math.nan
  order = np.argsort(scores, kind="stable")
  sorted_scores = scores[order]
  starts = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
  group = np.cumsum(starts) - 1
  bounds = np.r_[np.flatnonzero(starts), scores.size]
  # Ranks bounds[g] + 1 .. bounds[g + 1] share their mean.
  mean_rank = (bounds[:-1] + 1 + bounds[1:]) / 2.0
  ranks = np.empty(scores.size)
  ranks[order] = mean_rank[group]
  return float((ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def probe_metrics(probes: Probes, z, attributes) -> tuple[np.ndarray, np.ndarray]:
  """Accuracy and ROC AUC of each probe on labelled latents.

  Args:
    probes: fitted `Probes`.
    z: (n, d) latents.
    attributes: (n, A) labels in {0, 1}.

  Returns:
    `(accuracy, auc)`, each (A,) float64; AUC is NaN for a one-class attribute.
  """
  logits = np.asarray(probes.predict_logit(jnp.asarray(z)))
  labels = np.asarray(attributes).astype(bool)
  accuracy = np.mean((logits >= 0) == labels, axis=0)
  auc = np.array([roc_auc(labels[:, a], logits[:, a]) for a in range(labels.shape[1])])
  return accuracy, auc
