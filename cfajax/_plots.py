"""Figures a person reads faster than tables: counterfactual grids and attribution bars."""

from __future__ import annotations

import os

import numpy as np

from cfajax._status import Status


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
                        counterfactual_prob, status, *, count=8, seed=0, title="",
                        positive="the positive class", image_attack=False):
  """Saves a grid: originals, their reconstructions G(z), counterfactuals G(z'), and G(z') - G(z).

  For an attack on the images themselves (`image_attack`: data-free or
  pixel), the counterfactuals are x' and the last row is x' - x; G(z) is
  shown as what the attributions' encoder makes of x.

  Columns are drawn from the attacks that reached their target; only when
  there are fewer of those than `count` are failed attacks shown, labelled in
  red with why they stopped, and never as counterfactuals.

  Args:
    path: the PNG to write.
    originals, reconstructions, counterfactuals: (n, H, W, C) in [0, 1].
    original_prob, counterfactual_prob: (n,) positive-class probability of the
      original image and of the counterfactual.
    status: (n,) `cfajax.Status` codes of the attacks.
    count: columns shown.
    seed: which examples are drawn.

  Returns:
    `[(index, label)]` of the columns shown; label "" for a counterfactual,
    else the failed attack's status name.
  """
  plt = _pyplot()
  status = np.asarray(status)
  success = status == Status.REACHED
  rng = np.random.default_rng(seed)
  reached, failed = np.flatnonzero(success), np.flatnonzero(~success)
  chosen = reached[rng.permutation(reached.size)[:count]]
  chosen = np.sort(np.concatenate(
      [chosen, failed[rng.permutation(failed.size)[:count - chosen.size]]]))
  columns = [(int(i), "" if success[i] else Status(int(status[i])).name) for i in chosen]
  columns_shown = max(1, len(columns))
  start, edited = ("x", "x'") if image_attack else ("G(z)", "G(z')")
  difference = (counterfactuals - (originals if image_attack else reconstructions)).mean(axis=-1)
  finite = [i for i in chosen if success[i] and np.all(np.isfinite(difference[i]))]
  scale = max(1e-6, float(np.abs(difference[finite]).max())) if finite else 1.0
  rows = ("original x", "G(z)", f"counterfactual {edited}", f"{edited} - {start}")
  fig, axes = plt.subplots(4, columns_shown, figsize=(1.4 * columns_shown + 2.2, 6.2),
                           squeeze=False)
  image = None
  for column, (i, failure) in enumerate(columns):
    _show(axes[0, column], originals[i])
    axes[0, column].set_title(f"p={original_prob[i]:.2f}", fontsize=8)
    _show(axes[1, column], reconstructions[i])
    for row in (2, 3):
      axes[row, column].set_xticks([])
      axes[row, column].set_yticks([])
    if failure:
      # No counterfactual: say why, and show nothing that could pass for one.
      for row in (2, 3):
        axes[row, column].set_facecolor("#f4f4f4")
      axes[2, column].set_title(f"not reached\n{failure}", fontsize=7, color="#b2182b")
      continue
    _show(axes[2, column], counterfactuals[i])
    axes[2, column].set_title(f"p'={counterfactual_prob[i]:.2f}", fontsize=8)
    image = axes[3, column].imshow(difference[i], cmap="RdBu_r", vmin=-scale, vmax=scale)
  for row, label in enumerate(rows):
    axes[row, 0].set_ylabel(label, fontsize=8)
  if image is not None:
    bar = fig.colorbar(image, ax=list(axes[3]), fraction=0.04, pad=0.02)
    bar.set_label(f"{edited} - {start}", fontsize=7)
    bar.ax.tick_params(labelsize=6)
  failed_shown = sum(1 for _, failure in columns if failure)
  note = (f"; {failed_shown} failed attack(s) shown, marked 'not reached'"
          if failed_shown else "")
  fig.suptitle(f"{title}\np: probability of {positive}; red: brighter in {edited}" + note,
               fontsize=9)
  _save(fig, path)
  plt.close(fig)
  return columns


def global_attribution_bars(path, attributions, *, top=12, title="",
                            positive="the positive class"):
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
  significant = attributions.significant
  fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(order) + 1.6))
  colors = np.where(psi >= 0, "#b2182b", "#2166ac")
  # Attributes whose psi probes fitted to permuted labels reach as often: pale, hatched.
  noise = (np.zeros(len(order), bool) if significant is None
           else ~np.asarray(significant)[order])
  bars = ax.barh(np.arange(len(order)), psi, xerr=np.stack([psi - low, high - psi]),
                 color=colors, capsize=3, ecolor="black")
  for bar, pale in zip(bars, noise, strict=True):
    if pale:
      bar.set_alpha(0.35)
      bar.set_hatch("//")
  auc = attributions.probe_auc
  labels = [name if auc is None or not np.isfinite(auc[i]) else f"{name} (AUC {auc[i]:.2f})"
            for name, i in zip(names, order, strict=True)]
  ax.set_yticks(np.arange(len(order)), labels)
  ax.axvline(0, color="black", linewidth=0.8)
  ax.set_xlabel("global attribution psi (mean change of probe probability toward "
                f"{positive})\n{attributions.confidence:.0%} interval over "
                f"{attributions.interval}"
                + ("; pale, hatched: not distinguishable from probes fitted to permuted "
                   f"labels (Holm-adjusted p > {attributions.alpha})"
                   if significant is not None else ""), fontsize=7)
  used = getattr(attributions, "num_used", None)
  ax.set_title(f"{title}" + (f"  (n={used} counterfactuals)" if used is not None else ""),
               fontsize=9)
  _save(fig, path)
  plt.close(fig)
