"""The field's counterfactual metrics that need no downloaded weights: MNAC and COUT.

MNAC (mean number of attributes changed; Rodríguez et al. 2021) counts the
attributes, other than the one explained, that an independent attribute
classifier says a counterfactual changed: fewer is a more targeted edit.
COUT (counterfactual transition; Khorram & Fuxin 2022) moves from x to x' a
few pixels at a time, the most changed first, and averages how far the
classifier has moved from the source class to the target along the way: 1 when
the first pixels already carry the whole decision, 0 or below when the change
only works as a whole or not at all. Both are exported by `cfajax.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cfajax._batching import apply_batched


def _pair(x, counterfactuals) -> tuple[np.ndarray, np.ndarray]:
  x, cf = np.asarray(x, np.float32), np.asarray(counterfactuals, np.float32)
  if x.ndim != 4 or x.shape != cf.shape:
    raise ValueError(f"images and counterfactuals must both be (n, H, W, C) of one shape; got "
                     f"{x.shape} and {cf.shape}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(cf))):
    raise ValueError("images and counterfactuals must be finite; found NaN or infinity")
  return x, cf


def _judged(success, n: int) -> np.ndarray:
  judged = np.ones(n, bool) if success is None else np.asarray(success, bool)
  if judged.shape != (n,):
    raise ValueError(f"success must be (n,) = ({n},) bools; got shape {judged.shape}")
  return judged


def mnac(attributes: Callable, images, counterfactuals, *, exclude=(), names=None,
         success=None, batch_size: int = 512) -> dict[str, Any]:
  """Mean number of attributes changed between images and their counterfactuals.

  Args:
    attributes: images (B, H, W, C) -> (B, A) logits of independent binary
      attribute classifiers (an attribute is present where its logit is > 0),
      e.g. an oracle with a sigmoid head per attribute.
    images, counterfactuals: (n, H, W, C) each, row for row.
    exclude: indices (or, with `names`, names) of attributes not counted:
      the ones the counterfactuals are meant to change.
    names: (A,) the attributes' names, for `exclude` and the per-attribute rates.
    success: optional (n,) bool; only these pairs are counted.

  Returns:
    `{"mnac": mean count over the counted pairs, "count": pairs counted,
    "per_example": (n,) counts, "change_rate": {attribute: fraction of the
    counted pairs where it changed}}` (excluded attributes left out).
  """
  x, cf = _pair(images, counterfactuals)
  judged = _judged(success, len(x))
  before = apply_batched(attributes, x, batch_size)
  after = apply_batched(attributes, cf, batch_size)
  if before.ndim != 2:
    raise ValueError(f"attributes must map images to (B, A) logits; got shape {before.shape}")
  a = before.shape[1]
  names = tuple(str(i) for i in range(a)) if names is None else tuple(names)
  if len(names) != a:
    raise ValueError(f"names must name the {a} attributes; got {len(names)}")
  dropped = {names.index(e) if isinstance(e, str) else int(e) for e in exclude
             if not isinstance(e, str) or e in names}
  unknown = [e for e in exclude if isinstance(e, str) and e not in names]
  if unknown or not all(0 <= i < a for i in dropped):
    raise ValueError(f"exclude names attributes that do not exist: {list(exclude)} (the "
                     f"attributes are {list(names)})")
  kept = [i for i in range(a) if i not in dropped]
  changed = ((before > 0) != (after > 0))[:, kept]
  counts = changed.sum(axis=1)
  n = int(judged.sum())
  return {"mnac": float(counts[judged].mean()) if n else float("nan"), "count": n,
          "per_example": counts,
          "change_rate": {names[i]: float(changed[judged, j].mean()) if n else float("nan")
                          for j, i in enumerate(kept)}}


def _two_class_score(logits: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """p(target) - p(source) per row, from (B, K) logits or (B, 1) sigmoid logits."""
  if logits.shape[-1] == 1:
    p = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    p_target = np.where(target == 1, p, 1 - p)
    return 2 * p_target - 1
  z = logits.astype(np.float64)
  z = np.exp(z - z.max(axis=1, keepdims=True))
  p = z / z.sum(axis=1, keepdims=True)
  rows = np.arange(len(p))
  return p[rows, target] - p[rows, source]


def cout(classify: Callable, images, counterfactuals, source, target, *, steps: int = 20,
         success=None, batch_size: int = 512) -> dict[str, Any]:
  """Counterfactual transition: how early the pixels changed most carry the decision.

  For each pair, the pixels (all channels of a position together) are ordered
  by how much the counterfactual changed them, |x' - x| summed over channels,
  most first; the images on the way put the first k/steps of them from x'
  into x, k = 0..steps. Along the way the score s = p(target) - p(source)
  goes from s(x) to s(x'); COUT is its area over the fraction moved (the
  trapezoid rule), in [-1, 1].

  Args:
    classify: images -> (B, K) logits, or (B, 1) logits of a sigmoid.
    images, counterfactuals: (n, H, W, C) each, row for row.
    source, target: () or (n,) classes (for a sigmoid, 0 or 1).
    steps: the positions moved per image on the way, in equal parts.
    success: optional (n,) bool; only these pairs are counted.

  Returns:
    `{"cout": mean over the counted pairs, "count": pairs counted,
    "per_example": (n,) values, "curve": (steps + 1,) the mean score at each
    fraction moved}`.
  """
  x, cf = _pair(images, counterfactuals)
  n, h, w, _ = x.shape
  if not (isinstance(steps, int) and 1 <= steps <= h * w):
    raise ValueError(f"steps must be an integer in [1, {h * w}] (the image's positions); got "
                     f"{steps!r}")
  judged = _judged(success, n)
  source = np.broadcast_to(np.asarray(source, np.int64), (n,))
  target = np.broadcast_to(np.asarray(target, np.int64), (n,))
  # Rank each position by its change; ties keep raster order, so the path is deterministic.
  change = np.abs(cf - x).sum(axis=-1).reshape(n, -1)
  rank = np.empty_like(change, np.int64)
  rank[np.arange(n)[:, None], np.argsort(-change, axis=1, kind="stable")] = np.arange(h * w)
  scores = np.empty((n, steps + 1))
  for k in range(steps + 1):
    moved = (rank < round(k * h * w / steps)).reshape(n, h, w, 1)
    scores[:, k] = _two_class_score(apply_batched(classify, np.where(moved, cf, x), batch_size),
                                    source, target)
  per_example = (scores[:, :-1] + scores[:, 1:]).sum(axis=1) / (2 * steps)
  count = int(judged.sum())
  return {"cout": float(per_example[judged].mean()) if count else float("nan"), "count": count,
          "per_example": per_example,
          "curve": scores[judged].mean(axis=0) if count else np.full(steps + 1, np.nan)}
