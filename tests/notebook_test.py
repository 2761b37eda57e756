"""The Colab notebook runs headless on CPU, on the embedded digits, so it cannot rot."""

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "experiments" / "colab_tpu.ipynb"
CI_PARAMETERS = """# Parameters (set by tests/notebook_test.py)
DATASET = "digits"
INSTALL = False
CFAJAX_SOURCE = "cfajax"
OUT = "runs/colab-4v9"
FAST = True
TIMED_LATENTS = 128
DIFFUSERS_REPO = ''"""


def test_colab_notebook_runs_headless(tmp_path, monkeypatch):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs one cell tagged 'parameters'"
  names = lambda source: {line.split("=")[0].strip() for line in source.splitlines()
                          if "=" in line and not line.startswith("#")}
  assert names(tagged[0].source) == names(CI_PARAMETERS)
  tagged[0].source = CI_PARAMETERS
  # The kernel is this interpreter, whatever `python` is on the PATH.
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell's traceback, on any error

  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "preinstalled and untouched: jax" in text
  assert "backend: cpu" in text
  assert "class 4 vs 9 on digits" in text and "top global attributions" in text
  assert "latent-steps/s" in text
  assert "DIFFUSERS_REPO is empty" in text  # a hub download cannot run in CI
  images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
  assert len(images) == 2
  assert (tmp_path / "runs" / "colab-4v9" / "summary.json").is_file()
