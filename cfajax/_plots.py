"""Figures a person reads faster than tables: counterfactual grids and attribution bars."""

from __future__ import annotations

import os

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # files only; never needs a display
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp, dpi=120, bbox_inches="tight")
  os.replace(tmp, path)


def _show(ax, image: np.ndarray) -> None:
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(np.clip(image, 0, 1))
  ax.set_xticks([])
  ax.set_yticks([])


def counterfactual_grid(path, originals, reconstructions, counterfactuals, original_prob,
                        counterfactual_prob, success, *, count=8, seed=0, title=""):
  """Saves a grid: originals, their reconstructions G(z), counterfactuals G(z'), and G(z') - G(z).

  Args:
    path: the PNG to write.
    originals, reconstructions, counterfactuals: (n, H, W, C) in [0, 1].
    original_prob, counterfactual_prob: (n,) positive-class probability of the
      original image and of the counterfactual.
    success: (n,) bool; examples are drawn from the successful ones first.
    count: columns shown.
    seed: which examples are drawn.
  """
  plt = _pyplot()
  rng = np.random.default_rng(seed)
  chosen = np.flatnonzero(success)
  if chosen.size < count:
    chosen = np.concatenate([chosen, np.flatnonzero(~success)])
  chosen = np.sort(rng.choice(chosen, size=min(count, chosen.size), replace=False))
  difference = (counterfactuals - reconstructions).mean(axis=-1)
  scale = max(1e-6, float(np.abs(difference[chosen]).max()))
  rows = ("original x", "G(z)", "counterfactual G(z')", "G(z') - G(z)")
  fig, axes = plt.subplots(4, len(chosen), figsize=(1.4 * len(chosen) + 1.2, 6.2), squeeze=False)
  for column, i in enumerate(chosen):
    _show(axes[0, column], originals[i])
    axes[0, column].set_title(f"p={original_prob[i]:.2f}", fontsize=8)
    _show(axes[1, column], reconstructions[i])
    _show(axes[2, column], counterfactuals[i])
    axes[2, column].set_title(f"p'={counterfactual_prob[i]:.2f}", fontsize=8)
    axes[3, column].imshow(difference[i], cmap="RdBu_r", vmin=-scale, vmax=scale)
    axes[3, column].set_xticks([])
    axes[3, column].set_yticks([])
  for row, label in enumerate(rows):
    axes[row, 0].set_ylabel(label, fontsize=8)
  fig.suptitle(f"{title}\np: probability of the positive class; red: brighter in G(z')",
               fontsize=9)
  _save(fig, path)
  plt.close(fig)


def global_attribution_bars(path, attributions, *, top=12, title=""):
  """Saves a bar chart of the attributes with the largest |psi|, with confidence intervals.

  Args:
    path: the PNG to write.
    attributions: a `GlobalAttributions`.
    top: how many attributes to show.
  """
  plt = _pyplot()
  order = np.asarray(attributions.ranking)[:top][::-1]
  psi = np.asarray(attributions.psi)[order]
  low = np.asarray(attributions.ci_low)[order]
  high = np.asarray(attributions.ci_high)[order]
  names = [attributions.names[i] for i in order]
  fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(order) + 1.4))
  colors = np.where(psi >= 0, "#b2182b", "#2166ac")
  ax.barh(np.arange(len(order)), psi, xerr=np.stack([psi - low, high - psi]), color=colors,
          capsize=3, ecolor="black")
  ax.set_yticks(np.arange(len(order)), names)
  ax.axvline(0, color="black", linewidth=0.8)
  ax.set_xlabel("global attribution psi (mean change of probe probability toward the "
                "positive class)", fontsize=8)
  used = getattr(attributions, "num_used", None)
  ax.set_title(f"{title}" + (f"  (n={used} counterfactuals)" if used is not None else ""),
               fontsize=9)
  _save(fig, path)
  plt.close(fig)
