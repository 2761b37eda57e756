"""Time `cfajax.fit_probes` against scikit-learn on the same probes.

Run: PYTHONPATH=. python benchmarks/fit_probes_bench.py [--n 10000] [--d 64] [--attributes 40]

Fits A logistic-regression probes on (n, d) latents with cfajax (float32
L-BFGS, jitted) and with scikit-learn's `LogisticRegression` (float64 lbfgs,
one fit per attribute, tol=1e-6: the same objective scale as ours, whose
tol=1e-6 bounds the 2-norm rather than the max-norm of the gradient). Reports
cfajax's first call (compilation included) apart from its steady state, for
attributes fitted one at a time and side by side under vmap, and the largest
difference between the two libraries' probabilities.

Measured on 2 idle CPU cores (benchmarks/RESULTS.md, "Probes against
scikit-learn"): cfajax 0.062 s steady state for all 40 probes (1.5 s first
call), scikit-learn 3.1 s; probabilities agree to 2.1e-5.
"""

import argparse
import time

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression

import cfajax
import cfajax._probes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10000)
  parser.add_argument("--d", type=int, default=64)
  parser.add_argument("--attributes", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  z = rng.normal(size=(args.n, args.d)).astype(np.float32)
  logits = z @ rng.normal(size=(args.d, args.attributes)) / np.sqrt(args.d) * 3
  attributes = (logits + rng.logistic(size=logits.shape) > 0).astype(np.int32)

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), float32; "
        f"{args.attributes} probes on {args.n} x {args.d} latents")
  default = cfajax._probes.default_attribute_batch_size(args.attributes, args.n, args.d)
  for batch in sorted({1, 4, args.attributes} | {default}):
    start = time.perf_counter()
    probes = cfajax.fit_probes(z, attributes, attribute_batch_size=batch)
    jax.block_until_ready(probes.coef)
    first = time.perf_counter() - start
    steady = []
    for repeat in range(args.repeats):
      start = time.perf_counter()
      probes = cfajax.fit_probes(  # new values, same program
          z, attributes, C=1.0 + 1e-3 * repeat, attribute_batch_size=batch)
      jax.block_until_ready(probes.coef)
      steady.append(time.perf_counter() - start)
    print(f"cfajax.fit_probes, {batch} attribute(s) per vmapped loop"
          f"{' (default here)' if batch == default else ''}: first call {first:.2f} s "
          f"(with compilation), steady state median {np.median(steady):.3f} s "
          f"(min {min(steady):.3f}); {int(probes.iterations.max())} iterations at most, "
          f"all converged: {bool(probes.converged.all())}")
  probes = cfajax.fit_probes(z, attributes)

  # scikit-learn fits float32 inputs in float32 (and then stops early); give it float64.
  z64 = z.astype(np.float64)
  start = time.perf_counter()
  reference = [LogisticRegression(tol=1e-6, max_iter=1000).fit(z64, attributes[:, a])
               for a in range(args.attributes)]
  sklearn_time = time.perf_counter() - start
  ours = np.asarray(probes.predict_proba(z))
  theirs = np.stack([r.predict_proba(z64)[:, 1] for r in reference], axis=1)

  print(f"scikit-learn LogisticRegression x {args.attributes}: {sklearn_time:.2f} s")
  print(f"max |proba difference|: {np.abs(ours - theirs).max():.1e}")


if __name__ == "__main__":
  main()
