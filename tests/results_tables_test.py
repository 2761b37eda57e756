"""The tables of the RESULTS files are what the scripts' `--report` modes print from the records.

Each table in experiments/RESULTS.md and benchmarks/RESULTS.md that a script
prints sits between markers naming the command:

    <!-- report: experiments/mnist.py --report: misclassified -->
    | ... |
    <!-- /report -->

Here every such command runs in this process (it reads a stored record and
trains nothing), and each marked table must equal the one it prints.
"""

import contextlib
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("experiments/RESULTS.md", "benchmarks/RESULTS.md")
BLOCK = re.compile(r"<!-- report: (?P<command>[^\n]+?): (?P<name>[^:\n]+?) -->\n"
                   r"(?P<table>.*?)\n<!-- /report -->", re.S)


def blocks(text: str) -> dict:
  """{(command, name): table} of the marked tables in `text`."""
  found = {}
  for m in BLOCK.finditer(text):
    key = (m["command"], m["name"])
    assert key not in found, f"{key} is marked twice"
    found[key] = m["table"]
  return found


DOCUMENTED = {(doc, *key): table for doc in DOCS
              for key, table in blocks((ROOT / doc).read_text()).items()}
COMMANDS = sorted({command for _, command, _ in DOCUMENTED})


def run_report(command: str, monkeypatch) -> str:
  """What `python <command>` prints, run in this process from the repository root."""
  script, *argv = shlex.split(command)
  path = ROOT / script
  monkeypatch.chdir(ROOT)
  monkeypatch.syspath_prepend(str(path.parent))
  spec = importlib.util.spec_from_file_location(f"report_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
  spec.loader.exec_module(module)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    module.main(argv)
  return out.getvalue()


def test_the_results_files_mark_their_tables():
  assert len(COMMANDS) >= 1 and len(DOCUMENTED) >= 5
  for doc in DOCS:
    text = (ROOT / doc).read_text()
    # Every opening marker is well formed and closed (a malformed one would go unchecked).
    assert len(blocks(text)) == text.count("<!-- report: ") == text.count("<!-- /report -->"), doc


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_tables_match_the_records(command, monkeypatch):
  printed = blocks(run_report(command, monkeypatch))
  for (doc, doc_command, name), table in DOCUMENTED.items():
    if doc_command != command:
      continue
    assert (command, name) in printed, f"{doc}: `{command}` prints no table {name!r}"
    assert table == printed[(command, name)], (
        f"{doc}, table {name!r} differs from what `{command}` prints from its record")
