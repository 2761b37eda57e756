"""Tests of the task logic in `benchmarks/global_explanation.py`."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import global_explanation  # noqa: E402

LOGITS = np.array([
    [5.0, 1.0, 3.0],   # predicted 0, runner-up 2
    [0.0, 4.0, -1.0],  # predicted 1, runner-up 0
    [1.0, 0.0, 2.0],   # predicted 2, runner-up 0
])


def test_pair_task_attacks_each_class_toward_the_other():
  selected, target, prob = global_explanation.choose_targets(LOGITS, "pair", (0, 2))
  np.testing.assert_array_equal(selected, [0, 2])  # row 1 is predicted 1: not explained
  np.testing.assert_array_equal(target, [2, 0])
  # p(2) within the pair (0, 2): 1 / (1 + e^(l0 - l2))
  np.testing.assert_allclose(prob, 1 / (1 + np.exp([5.0 - 3.0, 1.0 - 2.0])))


def test_all_task_attacks_every_row_toward_its_runner_up():
  selected, target, prob = global_explanation.choose_targets(LOGITS, "all", (0, 2))
  np.testing.assert_array_equal(selected, [0, 1, 2])
  np.testing.assert_array_equal(target, [2, 0, 0])
  # the runner-up's probability within (predicted, runner-up) is below 1/2: s = +1 for all
  np.testing.assert_allclose(prob, 1 / (1 + np.exp([2.0, 4.0, 1.0])))
  assert (prob < 0.5).all()
