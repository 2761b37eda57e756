"""The decision being explained: a binary classifier's, or one pair of a multi-class one's.

A one-logit classifier is binary: p = sigmoid(logit). A multi-class
classifier is explained on the pair (a, b): p = p_b / (p_a + p_b), and only
examples predicted a or b take part. Every example is attacked toward the
other side of the decision.
"""

from __future__ import annotations

import math

import numpy as np

# Rows within this of summing to one, all in [0, 1], are taken for probabilities.
PROBABILITY_TOLERANCE = 1e-3


def check_logits(logits: np.ndarray, threshold: float) -> None:
  """Refuses classifier outputs the attack cannot use, before any work.

  Log-probabilities (log-softmax rows) are accepted: they are logits up to a
  constant per row, which the softmax and the attack's log-odds ignore.

  Raises:
    ValueError: non-finite outputs; outputs that are softmax probabilities
      (every row in [0, 1], summing to 1: as logits they cap the target's
      probability far below any useful threshold); or a one-output
      classifier whose every output lies in [0, 1] (sigmoid probabilities:
      as a logit, p = sigmoid(output) never passes sigmoid(1) = 0.73, and
      every image sits on the positive side).
  """
  logits = np.asarray(logits, np.float64)
  bad = ~np.isfinite(logits)
  if bad.any():
    raise ValueError(f"the classifier gave {int(bad.any(axis=1).sum())} of {len(logits)} images "
                     "NaN or infinite outputs; it must return finite logits")
  if not len(logits):
    return
  unit = np.all((logits >= 0) & (logits <= 1))
  if logits.shape[1] >= 2 and unit and np.all(
      np.abs(logits.sum(axis=1) - 1) <= PROBABILITY_TOLERANCE):
    cap = math.e / (math.e + logits.shape[1] - 1)
    raise ValueError(
        "the classifier's outputs look like probabilities (every row in [0, 1], summing to "
        f"1), but the attack needs logits: read as logits they cap a class's probability at "
        f"{cap:.2f}, below the threshold {threshold}. Pass the logits (drop the final "
        "softmax), or wrap it: lambda x: jnp.log(classifier(x))")
  if logits.shape[1] == 1 and unit:
    raise ValueError(
        "the classifier's one output lies in [0, 1] for every image: it looks like a "
        "sigmoid probability, but the attack needs a logit (read as a logit it puts every "
        f"image on the positive side and p never passes 0.73; threshold {threshold}). Pass "
        "the logit (drop the final sigmoid), or wrap it: lambda x: jnp.log(p) - jnp.log1p(-p) "
        "with p = classifier(x)")


class DecisionTask:
  """Maps a classifier's (n, K) logits to the explained decision and each example's target."""

  def __init__(self, num_logits: int, classes: tuple[int, int], name: str = "the classifier"):
    self.binary = num_logits == 1
    self.classes = tuple(classes)
    self.name = name
    if not self.binary and max(self.classes) >= num_logits:
      raise ValueError(f"classes {self.classes} do not exist in a classifier with {num_logits} "
                       f"logits (classes 0 to {num_logits - 1})")

  def positive_prob(self, logits: np.ndarray) -> np.ndarray:
    """(n,) float64 probability of the positive side: class b of the pair, or p."""
    logits = np.asarray(logits, np.float64)
    if self.binary:
      return 1 / (1 + np.exp(-logits[:, 0]))
    a, b = self.classes
    return 1 / (1 + np.exp(logits[:, a] - logits[:, b]))

  def own_class_prob(self, logits: np.ndarray) -> np.ndarray:
    """(n,) the probability the classifier gives the class it predicts (for a binary
    classifier, the side it predicts): the attack's target probability, measured on
    the images themselves."""
    logits = np.asarray(logits, np.float64)
    if self.binary:
      p = self.positive_prob(logits)
      return np.maximum(p, 1 - p)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted.max(axis=1) / shifted.sum(axis=1)

  def selected(self, logits: np.ndarray) -> np.ndarray:
    """(n,) bool: the examples whose decision is explained."""
    if self.binary:
      return np.ones(len(logits), bool)
    return np.isin(np.argmax(logits, axis=1), self.classes)

  def target(self, logits: np.ndarray) -> np.ndarray:
    """Flip the decision: the other side of p = 0.5, or the other class of the pair."""
    positive = self.positive_prob(logits) >= 0.5
    if self.binary:
      return np.where(positive, 0, 1).astype(np.int32)
    a, b = self.classes
    return np.where(positive, a, b).astype(np.int32)

  def subset(self, logits: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded random `limit` of the rows, each side of
    the decision in its proportion (all rows if there are no more than `limit`)."""
    n = len(logits)
    if limit >= n:
      return np.arange(n)
    positive = self.positive_prob(logits) >= 0.5
    rng = np.random.default_rng(seed)
    rows = [np.flatnonzero(~positive), np.flatnonzero(positive)]
    negatives = min(int(round(limit * len(rows[0]) / n)), len(rows[0]))
    counts = (negatives, limit - negatives)
    return np.sort(np.concatenate([rng.choice(r, k, replace=False)
                                   for r, k in zip(rows, counts, strict=True)]))

  def side_name(self, positive: bool) -> str:
    """The decision's positive or negative side, in words."""
    if self.binary:
      return self.name if positive else f"not {self.name}"
    return f"class {self.classes[1] if positive else self.classes[0]}"

  def describe(self) -> str:
    if self.binary:
      return f"{self.name} (binary classifier)"
    return f"class {self.classes[0]} vs {self.classes[1]}"

  def positive_side(self) -> str:
    """What p measures, in words, for summaries and figures."""
    if self.binary:
      return f"p = probability that {self.name} holds (sigmoid of the logit)"
    a, b = self.classes
    return f"p = p({b}) / (p({a}) + p({b})): class {b} is the positive side"
