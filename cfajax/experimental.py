"""The pieces below the public API that experiments and benchmarks build on.

`experiments/` and `benchmarks/` import these from here, not from private
modules: this is their contract with the library. Unlike the names of
`cfajax` itself, these may change between versions without deprecation;
each one's docstring is its module's.

Data and recipes
  load_train_test(dataset, data_dir=None, ...) -> (train, test)   a preset's split
  train_model(kind, dataset, train, test, *, oracle=False, epochs=None, ...)
    -> (model, history, info)   a preset's recipe, as `cfajax train` runs it
  with_attribute_labels(dataset, attribute) -> dataset labelled by one binary attribute
  descriptor_tables(*datasets) -> (tables, thresholds)   binarised image descriptors

The explanation's steps
  inversion_options(config, latent_dim) -> dict   `invert`'s options for a run
  badly_inverted(config, errors) -> (mask, threshold)   the images a run leaves out
  DecisionTask(num_logits, classes)   the pair a run explains, and its targets
  default_attribute_batch_size(num_attributes, n, d) -> int   `fit_probes`'s default

The attack's loop, one step at a time (for throughput measurements)
  AttackConfig, make_hyper(threshold, step_size, max_steps, grad_tol, dtype)
  init_state(config, hyper, z, target), attack_step(decode, classify, config, hyper, states)
  cast_model(model, precision), target_scores(logits, target) -> (log_odds, log_prob)
  PLAIN_ASCENT   the paper's update as a step rule

Batching
  apply_batched(fn, x, batch_size=...) -> np.ndarray;  as_pure_callable(model)
"""

from __future__ import annotations

from cfajax._attack import make_hyper
from cfajax._attribute_tables import descriptor_tables
from cfajax._batching import apply_batched
from cfajax._callables import as_pure_callable
from cfajax._inputs import badly_inverted
from cfajax._inputs import inversion_options
from cfajax._loop import AttackConfig
from cfajax._loop import attack_step
from cfajax._loop import cast_model
from cfajax._loop import init_state
from cfajax._loop import target_scores
from cfajax._probes import default_attribute_batch_size
from cfajax._recipes import _with_attribute_labels as with_attribute_labels
from cfajax._recipes import load_train_test
from cfajax._recipes import train_model
from cfajax._steps import PLAIN_ASCENT
from cfajax._task import DecisionTask

__all__ = [
    "AttackConfig",
    "DecisionTask",
    "PLAIN_ASCENT",
    "apply_batched",
    "as_pure_callable",
    "attack_step",
    "badly_inverted",
    "cast_model",
    "default_attribute_batch_size",
    "descriptor_tables",
    "init_state",
    "inversion_options",
    "load_train_test",
    "make_hyper",
    "target_scores",
    "train_model",
    "with_attribute_labels",
]
