"""Models named by `package.module:factory` strings, found in the working directory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfajax import _sources

FACTORY = '''
def build():
  return "built from the working directory"


def fail():
  raise RuntimeError("the factory in the working directory ran")
'''


def test_an_import_string_finds_its_module_in_the_working_directory(tmp_path, monkeypatch):
  # sys.path as a console script has it: its own folder first, no working directory.
  (tmp_path / "cwd_factory_module.py").write_text(FACTORY)
  monkeypatch.chdir(tmp_path)
  without_cwd = [p for p in sys.path if os.path.abspath(p or os.curdir) != str(tmp_path)]
  monkeypatch.setattr(sys, "path", without_cwd)
  monkeypatch.delitem(sys.modules, "cwd_factory_module", raising=False)
  assert _sources.load_model_spec("cwd_factory_module:build", "classifier") == \
      "built from the working directory"
  assert sys.path == without_cwd  # put back as it was


def console_script() -> Path:
  script = Path(sys.executable).parent / "cfajax"
  return script if script.exists() else Path(shutil.which("cfajax") or "cfajax")


def test_the_console_script_imports_a_factory_from_the_working_directory(tmp_path):
  script = console_script()
  if not script.exists():
    pytest.skip("the cfajax console script is not installed")
  (tmp_path / "user_model.py").write_text(FACTORY)
  # Valid images and attributes, so that whatever explain reads first, it reaches the factory.
  (tmp_path / "images").mkdir()
  rows = ["file,bright"]
  for i in range(4):
    Image.fromarray(np.full((8, 8), 60 * i, np.uint8), "L").save(tmp_path / "images" / f"{i}.png")
    rows.append(f"{i}.png,{i % 2}")
  (tmp_path / "images" / "attributes.csv").write_text("\n".join(rows) + "\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  # The factory's own error proves that its module was imported from the working directory.
  result = subprocess.run(
      [str(script), "explain", "--images", "images", "--attributes", "images/attributes.csv",
       "--classifier", "user_model:fail", "--generator", "user_model:fail", "--out", "run",
       "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert ("classifier 'user_model:fail': the factory failed (RuntimeError: the factory in the "
          "working directory ran)") in result.stderr
