"""Local and global attributions of counterfactuals to latent attributes.

With probes `g_a` (the probability of attribute `a` given a latent), a
counterfactual `z -> z'` has the local attribution

    phi_a(z, z') = g_a(z') - g_a(z),

the change the attack made to attribute `a`. Over a dataset, the global
attribution signs each local one by the direction the attack pushed the
classifier,

    psi_a = mean_i s_i phi_a(z_i, z'_i),   s_i = +1 if f(x_i) < 0.5 else -1,

so `psi_a > 0` means that raising attribute `a` raises the classifier's
(positive-class) probability.

Whether a `psi_a` is more than a probe's noise is a separate question, which
resampling the examples cannot answer (`_significance.py`): given probes
refitted under a permutation null, `global_attributions` adds a p-value per
attribute, Holm-adjusted across attributes, and given probes refitted on
bootstrap resamples, an interval that covers the probes' variation too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfajax._probes import Probes
from cfajax._probes import check_names
from cfajax._significance import ProbeRefits
from cfajax._significance import holm
from cfajax._significance import permutation_p_values

# Adjusted p-values at or below this are called significant.
DEFAULT_ALPHA = 0.05


def local_attributions(probes: Probes, z, z_cf) -> jax.Array:
  """Change of every attribute's probe probability from `z` to `z_cf`.

  Args:
    probes: fitted `Probes` for A attributes on d-dimensional latents.
    z: (n, d) latents of the original images.
    z_cf: (n, d) latents of their counterfactuals (e.g. `AttackResult.z`).

  Returns:
    (n, A) `phi = probes.predict_proba(z_cf) - probes.predict_proba(z)`, in [-1, 1].

  Raises:
    ValueError: if `z` and `z_cf` differ in shape or do not have the probes'
      latent dimension.
  """
  z, z_cf = jnp.asarray(z), jnp.asarray(z_cf)
  d = probes.coef.shape[1]
  if z.shape != z_cf.shape:
    raise ValueError(f"z and z_cf must have the same shape; got {z.shape} and {z_cf.shape}")
  if z.ndim != 2 or z.shape[1] != d:
    raise ValueError(f"z must be latents of shape (n, {d}) to match the probes; got {z.shape}")
  return probes.predict_proba(z_cf) - probes.predict_proba(z)


@dataclasses.dataclass(frozen=True)
class GlobalAttributions:
  """Signed mean attribution of each attribute over a dataset, with uncertainty.

  Attributes:
    names: (A,) attribute names.
    psi: (A,) global attributions `mean_i s_i phi_ia` over the counterfactuals used.
    stderr: (A,) standard error of `psi`, `std(s phi, ddof=1) / sqrt(num_used)`
      (NaN when `num_used == 1`).
    ci_low, ci_high: (A,) bootstrap percentile confidence interval of `psi`.
    confidence: coverage of the interval, e.g. 0.95.
    num_bootstrap: bootstrap resamples drawn.
    num_used: counterfactuals that entered `psi` (the successful ones).
    num_failed: counterfactuals left out because the attack failed.
    interval: what the interval resamples: "examples" (the probes held
      fixed), or "examples and probes" (each resample refits the probes on a
      resample of their attribute table).
    p_value: (A,) two-sided permutation p-value of each `psi` against probes
      fitted to permuted labels; NaN without a null.
    p_adjusted: (A,) Holm-adjusted `p_value` across the attributes.
    num_permutations: permutations in the null (0: none).
    alpha: level at which `p_adjusted` is called significant.
    probe_auc: (A,) each probe's held-out ROC AUC (NaN if not measured).
  """

  names: tuple[str, ...]
  psi: np.ndarray
  stderr: np.ndarray
  ci_low: np.ndarray
  ci_high: np.ndarray
  confidence: float
  num_bootstrap: int
  num_used: int
  num_failed: int
  interval: str = "examples"
  p_value: np.ndarray | None = None
  p_adjusted: np.ndarray | None = None
  num_permutations: int = 0
  alpha: float = DEFAULT_ALPHA
  probe_auc: np.ndarray | None = None

  @property
  def ranking(self) -> np.ndarray:
    """(A,) attribute indices by decreasing `|psi|` (ties in column order)."""
    return np.argsort(-np.abs(self.psi), kind="stable")

  @property
  def significant(self) -> np.ndarray | None:
    """(A,) bool, `p_adjusted <= alpha`; None without a null."""
    if self.p_adjusted is None:
      return None
    return self.p_adjusted <= self.alpha

  def top(self, k: int | None = None) -> list[tuple[str, float]]:
    """The `k` attributes of largest `|psi|` as `(name, psi)` pairs, largest first."""
    return [(self.names[a], float(self.psi[a])) for a in self.ranking[:k]]

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (NaN becomes None), attributes in column order."""
    clean = lambda v: None if v is None or not math.isfinite(v) else float(v)
    at = lambda array, a: None if array is None else clean(array[a])
    significant = self.significant
    return {
        "num_used": self.num_used,
        "num_failed": self.num_failed,
        "confidence": self.confidence,
        "num_bootstrap": self.num_bootstrap,
        "interval": self.interval,
        "num_permutations": self.num_permutations,
        "alpha": self.alpha,
        "correction": "holm" if self.p_value is not None else None,
        "ranking": [self.names[a] for a in self.ranking],
        "attributes": {
            name: {
                "psi": clean(self.psi[a]),
                "stderr": clean(self.stderr[a]),
                "ci": [clean(self.ci_low[a]), clean(self.ci_high[a])],
                "p_value": at(self.p_value, a),
                "p_adjusted": at(self.p_adjusted, a),
                "significant": None if significant is None else bool(significant[a]),
                "probe_val_auc": at(self.probe_auc, a),
            }
            for a, name in enumerate(self.names)
        },
    }


def attack_sign(original_prob) -> np.ndarray:
  """(n,) `s = +1` where the original positive-class probability is < 0.5, else -1."""
  return np.where(np.asarray(original_prob) < 0.5, 1.0, -1.0)


def bootstrap_means(values: np.ndarray, num_bootstrap: int, seed: int,
                    chunk: int = 2**22) -> np.ndarray:
  """Means of `num_bootstrap` resamples (with replacement) of the rows of `values`.

  Each resample is a vector of counts over the m rows, so its mean is one row
  of `counts @ values / m`; the counts are drawn in chunks of about `chunk`
  indices to bound memory.

  Args:
    values: (m, A) rows to resample.
    num_bootstrap: B, the number of resamples.
    seed: seed of the resampling.

  Returns:
    (B, A) resample means.
  """
  m = values.shape[0]
  rng = np.random.default_rng(seed)
  per_chunk = max(1, chunk // m)
  means = []
  for start in range(0, num_bootstrap, per_chunk):
    b = min(per_chunk, num_bootstrap - start)
    draws = rng.integers(0, m, size=(b, m))
    counts = np.bincount((draws + m * np.arange(b)[:, None]).ravel(), minlength=b * m)
    means.append(counts.reshape(b, m).astype(np.float64) @ values / m)
  return np.concatenate(means)


def global_attributions(
    phi,
    original_prob,
    *,
    success=None,
    names: Sequence[str] | None = None,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    refits: ProbeRefits | None = None,
    alpha: float = DEFAULT_ALPHA,
    probe_auc=None,
) -> GlobalAttributions:
  """Signed mean of local attributions over the successful counterfactuals.

  `psi_a = mean_i s_i phi_ia` with `s_i = +1` where `original_prob_i < 0.5`
  (the attack pushed the classifier up) and `-1` otherwise (pushed down), over
  the examples whose attack succeeded. `psi_a > 0`: the classifier's
  positive-class probability rises with attribute `a`.

  Multi-class classifiers: pass as `original_prob` the probability of the class
  the explanation is about. For counterfactuals towards class `t`, that is
  `q_t(x)`, and `s = +1` for every image pushed towards `t` (`q_t < 0.5`). For a
  pair of classes `a <-> b` (images of `a` pushed to `b` and vice versa), use
  `p = q_b / (q_a + q_b)`: `s = +1` for images moved towards `b`, `-1` for
  those moved towards `a`, so `psi` reads "towards b". In every case `s = +1`
  exactly when the attack pushes towards the class whose probability is `p`.

  Args:
    phi: (n, A) local attributions (`local_attributions`).
    original_prob: (n,) the classifier's positive-class probability at each
      original image, in [0, 1].
    success: (n,) bool, which attacks reached their target
      (`AttackResult.success`); default all.
    names: A attribute names (e.g. `probes.names`); default `attribute_0`, ...
    num_bootstrap: resamples of the examples for the confidence interval (0 to
      skip it; the interval is then NaN).
    confidence: coverage of the percentile interval, in (0, 1).
    seed: seed of the bootstrap.
    refits: `psi` with refitted probes (`probe_refits`, called with the same
      counterfactuals and success): its `null` gives each attribute a
      permutation p-value, Holm-adjusted across attributes; its `bootstrap`,
      resamples of examples and probes together, replaces the
      examples-only interval (then `num_bootstrap` is its count).
    alpha: level at which an adjusted p-value is called significant.
    probe_auc: (A,) the probes' held-out AUC (`Probes.val_auc`), reported
      beside each attribute.

  Returns:
    A `GlobalAttributions`.

  Raises:
    ValueError: on shapes that do not match, non-finite or out-of-range
      inputs, or when no counterfactual succeeded.

  Example:
    >>> phi = local_attributions(probes, z, result.z)
    >>> psi = global_attributions(phi, p_original, success=result.success, names=probes.names)
    >>> psi.top(3)
  """
  phi = np.asarray(phi, np.float64)
  if phi.ndim != 2:
    raise ValueError(f"phi must have shape (n, A); got shape {phi.shape}")
  n, num_attributes = phi.shape
  prob = np.asarray(original_prob, np.float64)
  if prob.shape != (n,):
    raise ValueError(f"original_prob must have shape ({n},) to match phi {phi.shape}; "
                     f"got {prob.shape}")
  if not np.all((prob >= 0) & (prob <= 1)):
    raise ValueError("original_prob must hold probabilities in [0, 1] (NaN is not allowed)")
  if success is None:
    used = np.ones(n, bool)
  else:
    used = np.asarray(success)
    if used.shape != (n,) or used.dtype != bool:
      raise ValueError(f"success must be a ({n},) bool array; got {used.dtype} {used.shape}")
  names = check_names(names, num_attributes)
  if int(num_bootstrap) != num_bootstrap or num_bootstrap < 0:
    raise ValueError(f"num_bootstrap must be a non-negative integer; got {num_bootstrap}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1); got {confidence}")
  m = int(used.sum())
  if m == 0:
    raise ValueError(f"none of the {n} counterfactuals succeeded; there is nothing to average")
  signed = phi[used] * attack_sign(prob[used])[:, None]
  if not np.all(np.isfinite(signed)):
    raise ValueError("phi holds NaN or inf among the successful counterfactuals")

  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1); got {alpha}")
  refits = refits or ProbeRefits(None, None)
  for name, replicates in refits._asdict().items():
    if replicates is not None and (np.ndim(replicates) != 2
                                   or np.shape(replicates)[1] != num_attributes):
      raise ValueError(f"refits.{name} must be (R, {num_attributes}); got "
                       f"{np.shape(replicates)}")
  if probe_auc is not None:
    probe_auc = np.asarray(probe_auc, np.float64)
    if probe_auc.shape != (num_attributes,):
      raise ValueError(f"probe_auc must be ({num_attributes},); got {probe_auc.shape}")

  psi = signed.mean(axis=0)
  stderr = (signed.std(axis=0, ddof=1) / math.sqrt(m) if m > 1
            else np.full(num_attributes, np.nan))
  tail = 100 * (1 - confidence) / 2
  interval = "examples"
  if refits.bootstrap is not None:
    ci_low, ci_high = np.nanpercentile(refits.bootstrap, [tail, 100 - tail], axis=0)
    num_bootstrap, interval = len(refits.bootstrap), "examples and probes"
  elif num_bootstrap:
    means = bootstrap_means(signed, int(num_bootstrap), seed)
    ci_low, ci_high = np.percentile(means, [tail, 100 - tail], axis=0)
  else:
    ci_low = ci_high = np.full(num_attributes, np.nan)
  p_value = p_adjusted = None
  if refits.null is not None:
    p_value = permutation_p_values(psi, refits.null)
    p_adjusted = holm(p_value)
  return GlobalAttributions(
      names=names, psi=psi, stderr=stderr, ci_low=ci_low, ci_high=ci_high,
      confidence=float(confidence), num_bootstrap=int(num_bootstrap), num_used=m,
      num_failed=n - m, interval=interval, p_value=p_value, p_adjusted=p_adjusted,
      num_permutations=0 if refits.null is None else len(refits.null), alpha=float(alpha),
      probe_auc=probe_auc)
