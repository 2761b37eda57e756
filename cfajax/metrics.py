"""Counterfactual quality: validity, proximity, oracle agreement and realism, and the
field's MNAC and COUT (`mnac`, `cout`), FID and LPIPS (`fid`, `lpips`, from the standard
weight files the user supplies).

Every function takes host or device arrays and returns numpy values, so the
same numbers can be computed for a latent-space attack and for the
pixel-space baseline (`pixel_attack`) on the same classifier:

    >>> result = cfajax.counterfactual_attack(vae.decode, clf, z, target=9)
    >>> cf = vae.decode(result.z)
    >>> report = metrics.counterfactual_report(
    ...     result, images=x, starts=vae.decode(z), counterfactuals=cf,
    ...     z=z, oracle=oracle, generator=vae)

A counterfactual "is assigned to its target" by a classifier in the attack's
own sense (`cfajax.Status`): for a softmax classifier, its most probable class
is the target; for a one-logit sigmoid classifier, `p >= 0.5` for target 1
and `p < 0.5` for target 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._attack import counterfactual_attack
from cfajax._batching import apply_batched
from cfajax._batching import map_batches
from cfajax._callables import as_pure_callable
from cfajax._feature_nets import frechet
from cfajax._field_metrics import cout
from cfajax._field_metrics import mnac
from cfajax._inception import fid
from cfajax._inception import inception_features
from cfajax._loop import AttackResult
from cfajax._loop import target_scores
from cfajax._lpips import lpips
from cfajax._status import Status

__all__ = [
    "counterfactual_report",
    "cout",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "inception_features",
    "lpips",
    "mnac",
    "oracle_agreement",
    "pixel_attack",
    "pixel_counterfactuals",
    "proximity",
    "realism",
    "reconstruction_error",
    "target_probability",
    "validity",
]


def _images(name: str, x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be float images (n, H, W, C); got {x.dtype} {x.shape}")
  return x.astype(np.float32, copy=False)


def _same_length(**arrays) -> int:
  lengths = {name: len(a) for name, a in arrays.items() if a is not None}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"expected arrays of one length; got {lengths}")
  return next(iter(lengths.values()))


def _quantiles(values: np.ndarray) -> dict[str, float]:
  if values.size == 0:
    return {"count": 0}
  return {"count": int(values.size), "mean": float(values.mean()),
          "median": float(np.median(values)), "p90": float(np.quantile(values, 0.9)),
          "min": float(values.min()), "max": float(values.max())}


def validity(result: AttackResult) -> dict[str, Any]:
  """Flip rate, why latents stopped, and the distribution of steps.

  Returns:
    `{"n", "flip_rate", "status": {name: count}, "steps": quantiles over the
    successful latents, "steps_all": quantiles over all}`.
  """
  status = np.asarray(result.status)
  steps = np.asarray(result.steps)
  success = status == Status.REACHED
  return {
      "n": int(status.size),
      "flip_rate": float(success.mean()) if status.size else float("nan"),
      "status": {s.name.lower(): int((status == s).sum()) for s in Status},
      "steps": _quantiles(steps[success].astype(np.float64)),
      "steps_all": _quantiles(steps.astype(np.float64)),
  }


def proximity(counterfactuals, starts, images=None, z=None, z_cf=None) -> dict[str, np.ndarray]:
  """Per-example distances of counterfactuals from where they started.

  Args:
    counterfactuals: (n, H, W, C) x' = G(z').
    starts: (n, H, W, C) the images the attack started from: the
      reconstructions G(z) for a latent attack, the originals for a pixel one.
    images: optional (n, H, W, C) originals x.
    z, z_cf: optional (n, d) starting and final latents.

  Returns:
    (n,) arrays: `pixel_l1` (mean absolute change per pixel value) and
    `pixel_l2` (Euclidean norm of the change) from `starts`; the same from
    `images` as `pixel_l1_to_original`/`pixel_l2_to_original`; `latent_l2`.
  """
  cf = _images("counterfactuals", counterfactuals)
  starts = _images("starts", starts)
  if cf.shape != starts.shape:
    raise ValueError(f"counterfactuals {cf.shape} and starts {starts.shape} differ in shape")
  out = {}

  def distances(other, suffix):
    delta = (cf - other).reshape(len(cf), -1)
    out["pixel_l1" + suffix] = np.abs(delta).mean(axis=1)
    out["pixel_l2" + suffix] = np.sqrt((delta.astype(np.float64) ** 2).sum(axis=1))

  distances(starts, "")
  if images is not None:
    images = _images("images", images)
    if images.shape != cf.shape:
      raise ValueError(f"images {images.shape} and counterfactuals {cf.shape} differ in shape")
    distances(images, "_to_original")
  if (z is None) != (z_cf is None):
    raise ValueError("give both z and z_cf, or neither")
  if z is not None:
    z, z_cf = np.asarray(z, np.float64), np.asarray(z_cf, np.float64)
    if z.shape != z_cf.shape or len(z) != len(cf):
      raise ValueError(f"z {z.shape} and z_cf {z_cf.shape} must both be (n={len(cf)}, d)")
    out["latent_l2"] = np.linalg.norm(z_cf - z, axis=1)
  return out


def _probability_of(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
  _, log_prob = jax.vmap(target_scores)(jnp.asarray(logits, jnp.float32), jnp.asarray(target))
  return np.exp(np.asarray(log_prob))


def _targets(target, n: int) -> np.ndarray:
  return np.broadcast_to(np.asarray(target, np.int32), (n,))


def target_probability(classify: Callable, images, target, *,
                       batch_size: int = 512) -> np.ndarray:
  """(n,) probability a classifier gives each image's target, in the attack's sense.

  Args:
    classify: images (B, H, W, C) -> logits (B, K), as for the attack.
    images: (n, H, W, C).
    target: () or (n,) target per image (for `K == 1`: 1 means `p`, 0 means
      `1 - p`).
    batch_size: images per compiled call.
  """
  images = _images("images", images)
  logits = apply_batched(classify, images, batch_size)
  return _probability_of(logits, _targets(target, len(images)))


def oracle_agreement(oracle: Callable, counterfactuals, target, *, success=None,
                     batch_size: int = 512) -> dict[str, Any]:
  """How often an independent classifier also assigns counterfactuals to their target.

  Args:
    oracle: images -> logits (B, K) of a classifier trained independently
      (another architecture or seed, a disjoint split) on the same task.
    counterfactuals: (n, H, W, C).
    target: () or (n,) targets, in the oracle's outputs.
    success: optional (n,) bool; only these counterfactuals are judged.

  Returns:
    `{"agreement": fraction assigned to the target, "count": judged,
    "mean_target_prob": mean oracle probability of the target,
    "per_example": (n,) bool}` (`per_example` covers all n).
  """
  cf = _images("counterfactuals", counterfactuals)
  target = _targets(target, len(cf))
  logits = apply_batched(oracle, cf, batch_size)
  prob = _probability_of(logits, target)
  agrees = prob >= 0.5 if logits.shape[-1] == 1 else np.argmax(logits, axis=-1) == target
  judged = np.ones(len(cf), bool) if success is None else np.asarray(success, bool)
  _same_length(counterfactuals=cf, success=judged)
  count = int(judged.sum())
  return {"agreement": float(agrees[judged].mean()) if count else float("nan"),
          "count": count,
          "mean_target_prob": float(prob[judged].mean()) if count else float("nan"),
          "per_example": agrees}


@jax.jit
def _reconstruction_mse(encode, decode, x):
  return jnp.mean((decode(encode(x)) - x) ** 2, axis=(1, 2, 3))


def reconstruction_error(generator, images, *, batch_size: int = 256) -> np.ndarray:
  """(n,) mean squared error per pixel of `decode(encode(x))` against x.

  An image the generator reproduces about as well as real data lies near its
  manifold; adversarial pixel noise does not, and reconstructs worse.
  """
  images = _images("images", images)
  encode, decode = as_pure_callable(generator.encode), as_pure_callable(generator.decode)
  return map_batches(lambda x: _reconstruction_mse(encode, decode, x), [images], batch_size)


def realism(generator, counterfactuals, real_images, *, success=None,
            batch_size: int = 256) -> dict[str, Any]:
  """The generator's reconstruction error of counterfactuals against real images'.

  Returns:
    `{"cf_error": mean over judged counterfactuals, "real_error": mean over
    real images, "ratio": cf_error / real_error (None if real_error is 0), "outlier_rate":
    fraction of counterfactuals whose error exceeds the 95th percentile of real images',
    "per_example": (n,) errors}`.
  """
  cf_error = reconstruction_error(generator, counterfactuals, batch_size=batch_size)
  real_error = reconstruction_error(generator, real_images, batch_size=batch_size)
  judged = np.ones(len(cf_error), bool) if success is None else np.asarray(success, bool)
  _same_length(counterfactuals=cf_error, success=judged)
  cut = float(np.quantile(real_error, 0.95))
  mean_cf = float(cf_error[judged].mean()) if judged.any() else float("nan")
  mean_real = float(real_error.mean())
  return {"cf_error": mean_cf, "real_error": mean_real,
          "ratio": mean_cf / mean_real if mean_real > 0 else None,
          "outlier_rate": float((cf_error[judged] > cut).mean()) if judged.any() else float("nan"),
          "per_example": cf_error}


@jax.jit
def _flat_features(features, x):
  return features(x).reshape(x.shape[0], -1)


def feature_statistics(features: Callable, images, *,
                       batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """The mean (F,) and covariance (F, F) of `features(images)`, in float64.

  Args:
    features: images (B, H, W, C) -> (B, F) or (B, ...) features (flattened),
      e.g. an independent oracle's penultimate layer (`Classifier.features`).
    images: (n, H, W, C), n >= 2.
  """
  images = _images("images", images)
  if len(images) < 2:
    raise ValueError(f"feature statistics need at least 2 images; got {len(images)}")
  fn = as_pure_callable(features)
  f = map_batches(lambda x: _flat_features(fn, x), [images], batch_size)
  f = np.asarray(f, np.float64)
  if not np.all(np.isfinite(f)):
    raise ValueError("the features of some images are not finite")
  return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(features: Callable, images, reference, *, success=None,
                     batch_size: int = 256) -> dict[str, Any]:
  """The Fréchet distance between two image sets in a network's feature space.

  Each set's features are summarised by a Gaussian (mean m, covariance C), and
  `d = |m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2)`: FID (Heusel et al. 2017)
  when the features are Inception's; here, typically, those of an oracle
  trained in this project (`Classifier.features`), so the number is "Fréchet
  distance in <that network>'s features", not an FID, and comparable only
  between sets of equal size measured with the same network (the estimate is
  biased upward for small sets). Compare against the distance between two
  disjoint sets of real images of the same size, the floor of real data.

  Args:
    features: images -> (B, F) features.
    images: (n, H, W, C), e.g. counterfactuals.
    reference: (m, H, W, C), e.g. held-out real images.
    success: optional (n,) bool; only those images are measured.

  Returns:
    `{"distance": d, "n": images measured, "n_reference": m}`.
  """
  images = _images("images", images)
  if success is not None:
    judged = np.asarray(success, bool)
    _same_length(images=images, success=judged)
    images = images[judged]
  mean_a, cov_a = feature_statistics(features, images, batch_size=batch_size)
  mean_b, cov_b = feature_statistics(features, reference, batch_size=batch_size)
  if mean_a.shape != mean_b.shape:
    raise ValueError(f"the two sets have {mean_a.shape[0]} and {mean_b.shape[0]} features")
  return {"distance": frechet(mean_a, cov_a, mean_b, cov_b), "n": len(images),
          "n_reference": len(_images("reference", reference))}


def pixel_attack(classify: Callable, images, target, **options) -> AttackResult:
  """The same attack run on the pixels: the adversarial baseline.

  The "latent" is the flattened image and the "decoder" reshapes it and clips
  it to [0, 1], so the stop rule, the options and the result are the latent
  attack's. The counterfactual images are `result.z.reshape(images.shape)`
  clipped to [0, 1] (see `pixel_counterfactuals`).

  Args:
    classify: images -> logits, as for `counterfactual_attack`.
    images: (n, H, W, C) float images in [0, 1].
    target: () or (n,) targets.
    **options: `counterfactual_attack`'s options (threshold, step_size,
      max_steps, objective, optimizer, ...).
  """
  images = _images("images", images)
  shape = images.shape[1:]
  decode = jax.tree_util.Partial(_UnflattenClip(shape))
  return counterfactual_attack(decode, classify, images.reshape(len(images), -1), target,
                               **options)


def pixel_counterfactuals(result: AttackResult, image_shape) -> np.ndarray:
  """(n, H, W, C) images of a `pixel_attack` result."""
  return np.clip(np.asarray(result.z).reshape((-1, *image_shape)), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _UnflattenClip:
  """The pixel attack's "decoder": (B, H*W*C) -> (B, H, W, C) clipped to [0, 1]."""

  shape: tuple[int, ...]

  def __call__(self, v):
    return jnp.clip(v.reshape((v.shape[0], *self.shape)), 0.0, 1.0)


def _summary(values: np.ndarray, judged: np.ndarray) -> dict[str, float]:
  return _quantiles(np.asarray(values, np.float64)[judged])


def counterfactual_report(result: AttackResult, *, counterfactuals, starts, images=None,
                          z=None, oracle: Callable | None = None, oracle_target=None,
                          generator=None, real_images=None) -> dict[str, Any]:
  """Every metric of one attack, as a JSON-ready dict.

  Proximity, oracle agreement and realism are computed over the successful
  counterfactuals only.

  Args:
    result: the attack's result (latent or pixel).
    counterfactuals: (n, H, W, C) images of `result.z`.
    starts: (n, H, W, C) the images the attack started from (G(z), or x).
    images: optional originals x.
    z: optional (n, d) starting latents (omit for a pixel attack).
    oracle: optional independent classifier; `oracle_target` its targets
      (default: `result.target`).
    generator: optional generator (encode/decode) for the realism proxy,
      compared against `real_images` (default: `images`).
  """
  n = _same_length(counterfactuals=counterfactuals, starts=starts, images=images,
                   z=z, result=np.asarray(result.steps))
  judged = np.asarray(result.success)
  report: dict[str, Any] = {"validity": validity(result)}
  distances = proximity(counterfactuals, starts, images=images, z=z,
                        z_cf=None if z is None else result.z)
  report["proximity"] = {name: _summary(v, judged) for name, v in distances.items()}
  if oracle is not None:
    agreement = oracle_agreement(
        oracle, counterfactuals, result.target if oracle_target is None else oracle_target,
        success=judged)
    report["oracle"] = {k: v for k, v in agreement.items() if k != "per_example"}
  if generator is not None:
    real = images if real_images is None else real_images
    if real is None:
      raise ValueError("realism needs real_images (or images)")
    measured = realism(generator, counterfactuals, real, success=judged)
    report["realism"] = {k: v for k, v in measured.items() if k != "per_example"}
  report["n"] = n
  return report
