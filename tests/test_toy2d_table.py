"""The 2D table script end to end on a tiny budget: every cell filled, FM n/a on a non-Gaussian source."""

import importlib.util
import json
import pathlib

SCRIPT = pathlib.Path(__file__).parent.parent / "experiments" / "toy2d_table.py"


def test_table_script_runs_and_writes_json_and_markdown(tmp_path):
    spec = importlib.util.spec_from_file_location("toy2d_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "toy2d.json"
    module.main(["--methods", "icfm", "fm", "--tasks", "moons:8gaussians", "normal:moons", "--steps", "100",
                 "--seeds", "1", "--num", "200", "--out", str(out)])
    table = json.loads(out.read_text())["table"]
    assert table["moons:8gaussians"]["fm"] is None
    cell = table["normal:moons"]["fm"]
    assert set(cell) == {"w2_dopri5", "w2_euler:100", "w2_euler:10", "w2_euler:2", "nfe", "npe", "steps_per_s"}
    assert cell["steps_per_s"]["mean"] > 0 and cell["nfe"]["mean"] > 0
    md = (tmp_path / "toy2d.md").read_text()
    assert "| fm | n/a" in md and "normal → moons" in md
