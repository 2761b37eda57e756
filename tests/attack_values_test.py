"""The attack values' written forms: run.json's, the command line's, and the form before values."""

import dataclasses
import warnings

import pytest

import cfajax
from cfajax import _hashing
from cfajax import attacks

VALUES = [attacks.LatentAttack(), attacks.LatentAttack(optimizer="adam", step_size=0.02),
          attacks.PixelAttack(threshold=0.7, max_steps=40),
          attacks.DataFreeAttack(prior="pixels", tv_weight=0.5, manifold="runs/duq", seed=3)]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{v.name}")
def test_each_written_form_reads_back_as_the_same_value(value):
  assert attacks.from_dict(value.to_dict()) == value
  assert attacks.from_flat({**attacks.flat(value), "seed": getattr(value, "seed", 0)}) == value
  config = cfajax.ExplainConfig(out="x", attack=value)
  assert cfajax.ExplainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{v.name}")
def test_the_digest_is_the_one_chunks_were_written_with(value):
  # Chunks written before the values carry this digest of the name and options; a value's
  # digest must be the same string for those chunks to resume.
  assert value.digest() == _hashing.digest_json({"attack": value.name, **value.options()})
  assert dataclasses.replace(value, max_steps=value.max_steps + 1).digest() != value.digest()


def test_the_command_lines_defaults_are_the_options_defaults_before_values():
  # The flat options and defaults ExplainConfig had as fields of its own, as run.json and the
  # command line wrote them: the flags keep their names and defaults.
  before = {"attack": "latent", "threshold": 0.9, "step_size": 0.1, "max_steps": 500,
            "objective": "logit", "optimizer": "trust-region", "learning_rate": 0.05,
            "precision": "float32", "manifold": None, "data_free_prior": "implicit",
            "data_free_progressive": True, "tv_weight": 0.05, "l2_weight": 0.0,
            "proximity_weight": 10.0, "manifold_weight": 0.003}
  assert attacks.flat_defaults() == before
  assert attacks.from_flat(before) == attacks.LatentAttack()
  adam = attacks.from_flat({**before, "optimizer": "adam"})
  assert adam == attacks.LatentAttack(optimizer="adam", step_size=0.05)


def test_a_run_json_from_before_values_reads_as_its_attack_value():
  old = {"out": "x", "attack": "data-free", "threshold": 0.8, "data_free_prior": "pixels",
         "tv_weight": 0.2, "max_steps": 50, "seed": 4, "optimizer": "trust-region",
         "step_size": 0.1, "learning_rate": 0.05}
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # reading a file written then is no deprecated use
    config = cfajax.ExplainConfig.from_dict(old)
  assert config.attack == attacks.DataFreeAttack(threshold=0.8, prior="pixels", tv_weight=0.2,
                                                 max_steps=50, seed=4)
  assert config.seed == 4


def test_the_flat_keywords_still_work_with_a_deprecation_warning():
  with pytest.warns(DeprecationWarning, match=r"\(attack='pixel', threshold\).*PixelAttack"):
    config = cfajax.ExplainConfig(out="x", attack="pixel", threshold=0.7)
  assert config.attack == attacks.PixelAttack(threshold=0.7)
  with pytest.warns(DeprecationWarning, match=r"\(max_steps\)"):
    changed = dataclasses.replace(config, max_steps=9)
  assert changed.attack == attacks.PixelAttack(threshold=0.7, max_steps=9)
  with pytest.raises(ValueError, match="manifold is a model of the data-free attack"):
    cfajax.ExplainConfig(out="x", manifold="runs/duq")


@pytest.mark.parametrize("values, match", [
    ({"name": "dip"}, "attack name must be one of"),
    ({"name": "latent", "tv_weight": 0.1}, r"unknown options \['tv_weight'\] of the latent"),
])
def test_a_damaged_attack_record_is_refused_naming_what_is_wrong(values, match):
  with pytest.raises(ValueError, match=match):
    attacks.from_dict(values)
