"""Is an attribute's global attribution more than a probe's noise? Probes refitted.

`psi_a` depends on two random things: the explained examples, and the probe
`g_a`, fitted on a finite attribute table. Resampling the examples alone
(`global_attributions`' default interval) holds the probe fixed, and a probe
fitted to labels that carry no information still has a direction, along
which the counterfactuals move by some amount: such an attribute gets an
interval that excludes zero as readily as a real one. Two refits measure
the probe's part:

* **A permutation null per attribute.** The attribute's labels are permuted
  over the table's latents (one permutation of the rows per replicate,
  shared by every attribute), the probe is refitted exactly as the real one
  was (same C, class weights, standardisation), and `psi` is recomputed on
  the same counterfactuals. The replicates are `psi`'s distribution for an
  attribute with the same base rate that the latents do not encode; the
  two-sided p-value is `(1 + #{|psi_null| >= |psi|}) / (R + 1)`, exact for
  that null at any sample size. Unlike TCAV's test against random concepts
  pooled over one distribution, each attribute has its own null, at its own
  base rate and class weights.
* **A bootstrap that refits.** Each replicate resamples the table's rows
  (refitting every probe on them) and the explained examples together, so
  its percentile interval covers both sources of variation.

Both are batches of the same fit, `_probes._fit_all`, over (replicate,
attribute) rows: about `R * A` single probe fits, one compiled program.

What neither covers: the generator and the classifier are held fixed (a
retrained model is another explanation), as is the attack's path; the
p-value tests "the latents do not encode this attribute's labels"
(permutation), so an attribute the latents encode well but that has nothing
to do with the decision can still be significant when the probe's estimation
error happens to align with the counterfactuals' movement; its interval,
not its p-value, says how large that can be.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfajax import _probes
from cfajax._progress import progress_bar


class ProbeRefits(NamedTuple):
  """`psi` recomputed with refitted probes.

  Attributes:
    null: (R, A) `psi` of probes fitted to permuted labels, on the same
      counterfactuals; None if not computed.
    bootstrap: (B, A) `psi` of probes fitted to a resample of the table's rows,
      averaged over a resample of the counterfactuals; None if not computed.
  """

  null: np.ndarray | None
  bootstrap: np.ndarray | None


# Elements of (examples x probes) logits computed at once.
_CHUNK_ELEMENTS = 2**24


@jax.jit
def _signed_changes(coef, intercept, mean, scale, z, z_cf, sign, weights):
  """(R,) weighted means over examples of `sign * (g(z_cf) - g(z))` for R probes.

  coef (R, d), intercept (R,); z, z_cf (m, d); sign (m,); weights (R, m) per
  replicate (each row sums to one).
  """
  def proba(latents):
    return jax.nn.sigmoid(((latents - mean) / scale) @ coef.T + intercept)  # (m, R)

  change = (proba(z_cf) - proba(z)) * sign[:, None]
  return jnp.sum(weights.T * change, axis=0)


def _psi_of_fits(result, problem, z, z_cf, sign, example_weights, num_attributes):
  """(R, A) psi for fitted rows ordered (replicate, attribute)."""
  dtype = problem.x.dtype
  coef = result.coef
  intercept = result.intercept - coef @ jnp.asarray(problem.center, dtype)
  mean, scale = jnp.asarray(problem.mean, dtype), jnp.asarray(problem.scale, dtype)
  rows = coef.shape[0]
  per_chunk = max(1, _CHUNK_ELEMENTS // max(1, z.shape[0]))
  out = []
  for start in range(0, rows, per_chunk):
    stop = min(rows, start + per_chunk)
    # Row r is replicate r // A's probe: one weight row per replicate, or one for all.
    replicate = np.arange(start, stop) // num_attributes
    weights = example_weights[np.minimum(replicate, len(example_weights) - 1)]
    out.append(np.asarray(_signed_changes(
        coef[start:stop], intercept[start:stop], mean, scale, jnp.asarray(z, dtype),
        jnp.asarray(z_cf, dtype), jnp.asarray(sign, dtype),
        jnp.asarray(weights, dtype))))
  return np.concatenate(out).reshape(-1, num_attributes).astype(np.float64)


def _fit_rows(problem, labels, weights, penalties, tol, max_iter, progress, what):
  """Fits (rows, n) label and weight rows in slices, advancing `progress`."""
  dtype = problem.x.dtype
  rows = labels.shape[0]
  # Slices of a fixed size share one compilation; the last is padded.
  size = min(rows, 256)
  parts = []
  with progress_bar(progress, total=rows, desc=what, unit="probe", leave=False) as bar:
    for start in range(0, rows, size):
      stop = min(rows, start + size)
      pad = size - (stop - start)
      # The closures below are called within this iteration, so they see this iteration's values.
      take = lambda a: np.concatenate([a[start:stop], np.repeat(a[stop - 1:stop], pad, 0)])  # noqa: B023
      result = _probes._fit_all(
          problem.x, jnp.asarray(take(labels), dtype), jnp.asarray(take(weights), dtype),
          jnp.asarray(take(penalties), dtype), jnp.asarray(tol, dtype),
          jnp.asarray(max_iter, jnp.int32), batch_size=1 if jax.default_backend() == "cpu"
          else size)
      parts.append(jax.tree_util.tree_map(lambda a: a[:stop - start], result))  # noqa: B023
      if bar is not None:
        bar.update(stop - start)
  return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)


def probe_refits(
    z_fit,
    attributes,
    z,
    z_cf,
    original_prob,
    *,
    success=None,
    num_permutations: int = 200,
    num_bootstrap: int = 0,
    seed: int = 0,
    C: float = 1.0,
    class_weight: str | None = None,
    standardize: bool = False,
    max_iter: int = _probes.DEFAULT_MAX_ITER,
    tol: float = _probes.DEFAULT_TOL,
    progress: bool = False,
) -> ProbeRefits:
  """`psi` under a permutation null per attribute, and bootstrap replicates that refit.

  The probe options must be those the real probes were fitted with
  (`fit_probes`), so that the null's probes are fitted exactly as they were.

  Args:
    z_fit: (n, d) latents of the attribute table the probes were fitted on.
    attributes: (n, A) its labels in {0, 1}.
    z, z_cf: (m, d) latents of the explained examples and of their
      counterfactuals.
    original_prob: (m,) the classifier's positive-side probability at each
      original (the sign of each example's attribution, as in
      `global_attributions`).
    success: (m,) bool, the counterfactuals that enter psi; default all.
    num_permutations: R, permutations of the labels (0: no null).
    num_bootstrap: B, joint resamples of the table and the examples (0: none).
    seed: seed of the permutations and resamples.
    C, class_weight, standardize, max_iter, tol: the probes' options.
    progress: show a progress bar over the refits.

  Returns:
    `ProbeRefits` with (R, A) `null` and (B, A) `bootstrap` (None where 0).
    A replicate whose resample holds one class of an attribute gets NaN there.

  Raises:
    ValueError: on shapes that do not match, or counts that are negative.
  """
  z_fit = np.asarray(z_fit)
  y = _probes.check_attributes(attributes, z_fit.shape[0])
  z, z_cf = np.asarray(z), np.asarray(z_cf)
  if z.shape != z_cf.shape or z.ndim != 2 or z.shape[1] != z_fit.shape[1]:
    raise ValueError(f"z and z_cf must both be (m, {z_fit.shape[1]}) latents; got {z.shape} and "
                     f"{z_cf.shape}")
  prob = np.asarray(original_prob, np.float64)
  used = np.ones(len(z), bool) if success is None else np.asarray(success, bool)
  if prob.shape != (len(z),) or used.shape != (len(z),):
    raise ValueError(f"original_prob and success must be ({len(z)},); got {prob.shape} and "
                     f"{used.shape}")
  for name, count in (("num_permutations", num_permutations), ("num_bootstrap", num_bootstrap)):
    if int(count) != count or count < 0:
      raise ValueError(f"{name} must be a non-negative integer; got {count}")
  z, z_cf, sign = z[used], z_cf[used], np.where(prob[used] < 0.5, 1.0, -1.0)
  m, n, num_attributes = len(z), len(z_fit), y.shape[1]
  if m == 0:
    raise ValueError("no counterfactual enters psi (success is all False)")

  problem = _probes.fit_problem(z_fit, standardize)
  rng = np.random.default_rng(seed)
  uniform = np.full((1, m), 1.0 / m)
  null = bootstrap = None
  if num_permutations:
    labels, weights, penalties = [], [], []
    for _ in range(int(num_permutations)):
      permuted = y[rng.permutation(n)]
      weight, penalty = _probes.normalized_weights(permuted, class_weight, C)
      labels.append(permuted.T)
      weights.append(weight.T)
      penalties.append(penalty)
    result = _fit_rows(problem, np.concatenate(labels), np.concatenate(weights),
                       np.concatenate(penalties), tol, max_iter, progress, "permutation null")
    null = _psi_of_fits(result, problem, z, z_cf, sign, uniform, num_attributes)
  if num_bootstrap:
    labels, weights, penalties, example_weights, degenerate = [], [], [], [], []
    for _ in range(int(num_bootstrap)):
      counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
      positives = counts @ y
      one_class = (positives == 0) | (positives == n)
      # A one-class resample of an attribute cannot be fitted: fit it on the
      # full table (any finite fit) and mark it NaN.
      fit_counts = np.where(one_class[None, :], 1.0, counts[:, None])
      weight = np.empty_like(y)
      penalty = np.empty(num_attributes)
      for a in range(num_attributes):
        w, p = _probes.normalized_weights(y[:, a:a + 1], class_weight, C, fit_counts[:, a])
        weight[:, a], penalty[a] = w[:, 0], p[0]
      labels.append(y.T)
      weights.append(weight.T)
      penalties.append(penalty)
      degenerate.append(one_class)
      example_weights.append(np.bincount(rng.integers(0, m, m), minlength=m) / m)
    result = _fit_rows(problem, np.concatenate(labels), np.concatenate(weights),
                       np.concatenate(penalties), tol, max_iter, progress, "bootstrap refits")
    bootstrap = _psi_of_fits(result, problem, z, z_cf, sign, np.stack(example_weights),
                             num_attributes)
    bootstrap[np.stack(degenerate)] = np.nan
  return ProbeRefits(null=null, bootstrap=bootstrap)


def permutation_p_values(psi: np.ndarray, null: np.ndarray) -> np.ndarray:
  """(A,) two-sided p-values `(1 + #{|null| >= |psi|}) / (R + 1)` per attribute.

  Args:
    psi: (A,) observed global attributions.
    null: (R, A) their values under the null.
  """
  psi, null = np.asarray(psi, np.float64), np.asarray(null, np.float64)
  exceed = np.sum(np.abs(null) >= np.abs(psi)[None, :], axis=0)
  return (1.0 + exceed) / (1.0 + null.shape[0])


def holm(p_values: np.ndarray) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values (control the family-wise error rate).

  The i-th smallest of A p-values becomes `max_{j <= i} min(1, (A - j + 1) p_(j))`;
  an attribute is significant at level alpha when its adjusted p-value is <= alpha.
  """
  p = np.asarray(p_values, np.float64)
  order = np.argsort(p, kind="stable")
  factors = len(p) - np.arange(len(p))
  adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * factors))
  out = np.empty_like(p)
  out[order] = adjusted
  return out
