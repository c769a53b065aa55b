"""docs/tutorial.ipynb runs end to end in a Jupyter kernel: its quick version (the parameters
cell reads AIGC_TUTORIAL_QUICK=1), so every step runs in about a minute; a cell that raises
fails the test. Marked ``notebook``: ``python -m pytest -m "not notebook"`` skips it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def read_notebook():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_the_committed_tutorial_has_no_outputs_and_one_parameters_cell():
    notebook = read_notebook()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and "AIGC_TUTORIAL_QUICK" in tagged[0].source


@pytest.mark.notebook
def test_the_tutorial_runs_every_cell(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = read_notebook()
    # The kernel is a child process: it inherits this environment (and the private cache of conftest).
    monkeypatch.setenv("AIGC_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError for a cell that raises

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert "quick version" in text and "server stopped" in text
    assert "FID" in text and "BLEU" in text
    assert len(images) == 3  # the GAN's grid, the judge's picture, a digit from the server
    runs = list((tmp_path / "tutorial-runs").iterdir())
    assert len(runs) == 1 and {p.name for p in runs[0].iterdir()} >= {"digits", "gpt", "spell-lora"}
