"""The README's Python blocks run as written, in order, from an empty folder."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks():
  with open(README, encoding="utf-8") as f:
    text = f.read()
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_python_blocks():
  assert len(python_blocks()) >= 5


def test_every_python_block_runs_as_written(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  for number, code in enumerate(python_blocks(), 1):
    # A fresh namespace per block: each must define what it uses; files that
    # earlier blocks wrote (trained models) carry over, as for a reader.
    namespace = {"__name__": "__readme__"}
    try:
      exec(compile(code, f"README.md, Python block {number}", "exec"), namespace)
    except Exception as e:  # noqa: BLE001 (say which block failed)
      pytest.fail(f"README Python block {number} failed: {type(e).__name__}: {e}")
