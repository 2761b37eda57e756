"""pyproject.toml's lower bounds are the versions the oldest CI configuration tests."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lower_bounds(requirements):
  bounds = {}
  for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement.replace(" ", ""))
    assert match, f"{requirement!r}: each dependency is bounded below only (name>=version)"
    bounds[match.group(1).lower()] = match.group(2)
  return bounds


def test_lower_bounds_are_the_versions_ci_tests():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  extras = project["optional-dependencies"]
  bounds = lower_bounds(project["dependencies"] + extras["test"] + extras["tfds"])
  pins = {}
  for line in (ROOT / ".ci" / "colab-tpu-constraints.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, version = line.split("==")
      pins[name.lower()] = version
  # jaxlib comes with jax; every other pin is a declared dependency's lower bound.
  assert pins.pop("jaxlib") == pins["jax"]
  assert bounds == pins
  assert project["requires-python"] == ">=3.11"  # CI's two Pythons: 3.11 and 3.13


def test_tensorflow_datasets_is_optional():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert not any(d.startswith("tensorflow-datasets") for d in project["dependencies"])
