"""Pieces the experiment scripts share: paths, progressions, figures and tables."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

import cfajax
from cfajax import metrics
from cfajax.experimental import apply_batched

FIGURES = Path(__file__).resolve().parent / "figures"


def hardware() -> str:
  devices = jax.devices()
  kind = devices[0].device_kind if devices else "?"
  return (f"{platform.processor() or platform.machine()}, {len(devices)} "
          f"{devices[0].platform} device(s) ({kind})")


def load_runs(runs: Path):
  """The VAE, classifier and oracle checkpoints under `runs` (see RESULTS.md, "Models")."""
  return tuple(cfajax.load_model(Path(runs) / name) for name in ("vae", "classifier", "oracle"))


class Stopwatch:
  """Wall time per named stage."""

  def __init__(self):
    self.stages = {}
    self._start = time.perf_counter()

  def lap(self, name: str) -> float:
    now = time.perf_counter()
    self.stages[name] = round(now - self._start, 2)
    self._start = now
    return self.stages[name]


def oracle_features(oracle):
  """The penultimate layer of the oracle (through a `select_output` head too)."""
  return getattr(oracle, "classifier", oracle).features


def progression(decode, classify, z, target, fractions, steps, **options) -> np.ndarray:
  """Images along each latent's path: (n, len(fractions), H, W, C).

  Plain ascent has no optimizer state, so k attacks of one step each, each
  starting where the last stopped, walk exactly the path of one attack (the
  target is checked before every step either way). Frame j of latent i is the
  image after round(fractions[j] * steps[i]) updates; `steps` are the full
  attack's counts. One compiled program serves every step.
  """
  z = np.asarray(z, np.float32)
  target = np.asarray(target)
  steps = np.asarray(steps)
  marks = np.rint(np.outer(steps, fractions)).astype(int)  # (n, k)
  frames = np.zeros((len(z), len(fractions), *np.asarray(decode(z[:1])).shape[1:]), np.float32)
  current = z.copy()
  for t in range(int(marks.max()) + 1):
    if t:
      current = np.asarray(cfajax.counterfactual_attack(
          decode, classify, current, target, **{**options, "max_steps": 1}, optimizer="ascent").z)
    rows, columns = np.nonzero(marks == t)
    if len(rows):
      frames[rows, columns] = np.asarray(decode(current[rows]))
  return frames


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _show(ax, image):
  image = np.clip(image, 0, 1)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


def show_map(ax, saliency_map, mask):
  """A saliency map with its ground-truth mask outlined in cyan, without ticks."""
  ax.imshow(saliency_map, cmap="magma")
  ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.6)
  ax.set_xticks([])
  ax.set_yticks([])


def save_figure(fig, name: str, dpi: int = 110) -> None:
  """Saves a figure as experiments/figures/<name> and closes it."""
  FIGURES.mkdir(parents=True, exist_ok=True)
  fig.savefig(FIGURES / name, dpi=dpi)
  _pyplot().close(fig)


def save_small(fig, path, dpi):
  """Saves a figure as a 256-colour PNG: photos stay small in the repository."""
  plt = _pyplot()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  quantize_png(path)


def quantize_png(path):
  """Rewrites a PNG with 256 colours."""
  from PIL import Image
  Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def progression_grid(path, originals, frames, row_labels, column_labels, *, diff=True,
                     title=""):
  """One row per example: the original, the frames of its path, and |x' - G(z)|."""
  plt = _pyplot()
  n, k = frames.shape[:2]
  columns = 1 + k + int(diff)
  fig, axes = plt.subplots(n, columns, figsize=(1.25 * columns, 1.3 * n + 0.4), squeeze=False)
  for i in range(n):
    _show(axes[i, 0], originals[i])
    axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
    for j in range(k):
      _show(axes[i, 1 + j], frames[i, j])
    if diff:
      delta = np.abs(frames[i, -1] - frames[i, 0]).mean(axis=-1)
      axes[i, -1].imshow(delta, cmap="magma", vmin=0, vmax=max(float(delta.max()), 1e-6))
      axes[i, -1].set_xticks([])
      axes[i, -1].set_yticks([])
  labels = ["x"] + list(column_labels) + (["|x' - G(z)|"] if diff else [])
  for j, label in enumerate(labels):
    axes[0, j].set_title(label, fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def compact(report: dict) -> dict:
  """The headline numbers of a `metrics.counterfactual_report`."""
  out = {"n": report["n"], "flip_rate": report["validity"]["flip_rate"],
         "median_steps": report["validity"]["steps"].get("median")}
  prox = report["proximity"]
  for name in ("latent_l2", "pixel_l2", "pixel_l1", "pixel_l2_to_original"):
    if name in prox and prox[name].get("count"):
      out[f"median_{name}"] = prox[name]["median"]
  if "oracle" in report:
    out["oracle_agreement"] = report["oracle"]["agreement"]
  if "realism" in report:
    out["realism_ratio"] = report["realism"]["ratio"]
    out["realism_outliers"] = report["realism"]["outlier_rate"]
  return out


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  def cell(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "—" if v is None else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def percent(value, digits: int = 1) -> str:
  """0.704 -> "70.4%", 1.0 -> "100%": `digits` decimals, a trailing ".0" dropped."""
  if value is None:
    return "—"
  text = f"{100 * value:.{digits}f}"
  if "." in text:
    text = text.rstrip("0").rstrip(".")
  return text + "%"


def signed(value, digits: int = 3) -> str:
  """+0.141, −0.043: a sign always, and the minus sign RESULTS.md prints."""
  return f"{value:+.{digits}f}".replace("-", "−")


def results_table(columns, rows) -> str:
  """A markdown table as RESULTS.md sets it.

  `columns` are header texts; one ending in ":" is right-aligned (the colon is
  not printed). `rows` are sequences of cells already formatted as text.
  """
  header = [c[:-1] if c.endswith(":") else c for c in columns]
  rules = ["---:" if c.endswith(":") else "---" for c in columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rules) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def print_report(command: str, tables: dict) -> None:
  """Prints named tables between the markers that hold them in RESULTS.md.

  `command` is how the tables are printed again (`experiments/mnist.py
  --report`); tests/results_tables_test.py checks that every marked table in
  the RESULTS files is what its command prints from the stored record.
  """
  for name, table in tables.items():
    print(f"<!-- report: {command}: {name} -->\n{table}\n<!-- /report -->\n")


def write_json(path, record) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1, default=float))


def latent_and_pixel(vae, classifier, oracle, images, z, target, *, latent_options,
                     pixel_options, real_images, oracle_target=None, report=True):
  """Latent and pixel attacks on the same images and targets, each with its report.

  Returns `(latent, cf, report), (pixel, pixel_cf, report)`; the reports are
  None when `report` is False.
  """
  latent = cfajax.counterfactual_attack(vae.decode, classifier, z, target, **latent_options,
                                        optimizer="ascent")
  cf = np.asarray(apply(vae.decode, np.asarray(latent.z)))
  pixel = metrics.pixel_attack(classifier, images, target, **pixel_options)
  pixel_cf = metrics.pixel_counterfactuals(pixel, images.shape[1:])
  if not report:
    return (latent, cf, None), (pixel, pixel_cf, None)
  common = {"images": images, "oracle": oracle, "oracle_target": oracle_target,
            "generator": vae, "real_images": real_images}
  latent_report = metrics.counterfactual_report(
      latent, counterfactuals=cf, starts=cfajax.reconstruct(vae, images), z=z, **common)
  pixel_report = metrics.counterfactual_report(
      pixel, counterfactuals=pixel_cf, starts=images, **common)
  return (latent, cf, latent_report), (pixel, pixel_cf, pixel_report)


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # Student t quantiles by degrees of freedom


def interval(values) -> tuple[float, float]:
  """The mean of per-seed values and the half-width of its 95% t-interval (nan for one)."""
  values = np.asarray(values, float)
  if len(values) == 1:
    return float(values[0]), float("nan")
  half = T_975[len(values) - 1] * values.std(ddof=1) / np.sqrt(len(values))
  return float(values.mean()), float(half)


def apply(fn, x, batch_size=1024):
  return apply_batched(fn, x, batch_size)


def psi_agreement(psi_a, psi_b, top=5) -> dict:
  """How far two psi vectors over the same attributes agree.

  top_shared: attributes in both top-`top` lists (by |psi|); rank_correlation:
  Pearson correlation of the |psi| ranks (Spearman's rho on magnitudes);
  signed_correlation: Pearson correlation of psi itself.
  """
  psi_a, psi_b = np.asarray(psi_a), np.asarray(psi_b)
  tops = [set(np.argsort(-np.abs(p))[:top]) for p in (psi_a, psi_b)]
  ranks = [np.argsort(np.argsort(-np.abs(p))) for p in (psi_a, psi_b)]
  return {"top_shared": len(tops[0] & tops[1]),
          "rank_correlation": float(np.corrcoef(ranks[0], ranks[1])[0, 1]),
          "signed_correlation": float(np.corrcoef(psi_a, psi_b)[0, 1])}


def split_half_overlap(phi, original_prob, success, names, seed=0, splits=100, top=5):
  """Top-`top` overlap and rank correlation of psi between two random halves, over `splits`."""
  rng = np.random.default_rng(seed)
  overlaps, correlations = [], []
  n = len(phi)
  for _ in range(splits):
    order = rng.permutation(n)
    halves = [order[:n // 2], order[n // 2:]]
    psis = [cfajax.global_attributions(phi[h], original_prob[h], success=success[h],
                                       names=names, num_bootstrap=0).psi for h in halves]
    agreement = psi_agreement(*psis, top=top)
    overlaps.append(agreement["top_shared"] / top)
    correlations.append(agreement["rank_correlation"])
  return {"top5_overlap_mean": float(np.mean(overlaps)),
          "top5_overlap_min": float(np.min(overlaps)),
          "top5_identical_fraction": float(np.mean(np.asarray(overlaps) == 1.0)),
          "rank_correlation_mean": float(np.mean(correlations))}
