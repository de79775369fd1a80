"""The quickstart notebook runs top to bottom and reaches the moons."""

import pathlib
import re

import nbformat
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).parent.parent / "experiments" / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    first, last = (float(v) for v in text.split("loss ")[1].split("\n")[0].split(" -> "))
    assert last < first
    w2 = float(re.search(r"^dopri5\s+NFE\s+\d+\s+W2 ([\d.]+)", text, flags=re.M).group(1))
    assert w2 < 0.6  # samples on the moons (N(0, I) itself is ~2.3 away)
    assert (tmp_path / "quickstart.png").stat().st_size > 10_000
