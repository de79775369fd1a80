"""The 2D table script end to end on a tiny budget, in two worker processes: every cell filled, FM n/a on a non-Gaussian source."""

import importlib
import json
import pathlib
import re

import pytest

EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


def test_table_script_runs_and_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    # Importable by name, as the spawned worker processes re-import it.
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    module = importlib.import_module("toy2d_table")
    out = tmp_path / "toy2d.json"
    module.main(
        [
            "--methods",
            "icfm",
            "fm",
            "--tasks",
            "moons:8gaussians",
            "normal:moons",
            "--steps",
            "100",
            "--workers",
            "2",
            "--seeds",
            "1",
            "--num",
            "200",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    # Three cells (FM has none on moons -> 8gaussians), counted on one bar as the workers finish them.
    assert "toy2d table: 3 cells (icfm, fm on moons:8gaussians, normal:moons, 1 seed(s))" in err
    assert re.search(r"toy2d table[^\r\n]*3/3", err)
    table = json.loads(out.read_text())["table"]
    assert table["moons:8gaussians"]["fm"] is None
    cell = table["normal:moons"]["fm"]
    assert set(cell) == {"w2_dopri5", "w2_euler:100", "w2_euler:10", "w2_euler:2", "nfe", "npe", "steps_per_s"}
    assert cell["steps_per_s"]["mean"] > 0 and cell["nfe"]["mean"] > 0
    md = (tmp_path / "toy2d.md").read_text()
    assert "| fm | n/a" in md and "normal → moons" in md


class CountingInception:
    """Stands in for the Inception FID in the table scripts' tests (the real one is tested in
    test_fid_weights and test_inception_fid): its "FID" is the samples' mean pixel + 100, and
    it counts the reference statistics it is asked for."""

    def __init__(self):
        self.references = []

    def reference(self, name, split, images, progress=False):
        self.references.append((name, split, len(images)))
        return None

    def __call__(self, images, reference):
        return float(images.mean()) + 100.0


def test_images_table_trains_evaluates_and_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent.parent / "experiments"))
    module = importlib.import_module("images_table")
    inception = CountingInception()
    monkeypatch.setattr(module.common, "inception", lambda: inception)
    out = tmp_path / "images.json"
    args = [
        "--datasets",
        "digits",
        "--methods",
        "fm",
        "--steps",
        "2",
        "--batch",
        "8",
        "--num",
        "8",
        "--preset",
        "tiny",
        "--solvers",
        "euler:2",
        "euler:1",
        "--fid-solvers",
        "euler:1",
        "--divergence",
        "exact",
        "--data-dir",
        str(tmp_path / "tfds"),
        "--out",
        str(out),
        "--grids",
        str(tmp_path / "grids"),
        "--keep",
        str(tmp_path / "runs"),
    ]
    module.main(args)
    err = capsys.readouterr().err
    assert "images table: 1 cells (fm on digits)" in err and re.search(r"images table[^\r\n]*1/1", err)
    assert "Inception FID with euler:1" in err
    assert (tmp_path / "grids" / "digits_fm.png").is_file()
    cell = json.loads(out.read_text())["table"]["digits"]["fm"]
    assert cell["nfe"] == 2 and cell["bits_per_dim"] > 0 and cell["fd_euler:2"] > 0 and cell["steps_per_s"] > 0
    # The FID of the FID solver only, against the digits' training split (1,497 images).
    assert inception.references == [("digits", "train", 1497)] and 99.0 < cell["fid_euler:1"] < 101.0
    assert "fid_euler:2" not in cell
    md = out.with_suffix(".md").read_text()
    assert "| FID Euler-1 | FD Euler-2 | FD Euler-1 |" in md
    assert (
        f"| digits | fm | {cell['bits_per_dim']:.3f} ± {cell['bits_per_dim_se']:.3f} | 2 | {cell['fid_euler:1']:.1f} |"
        in md
    )
    # Run again with --keep: the measured cell is read back, nothing trains or is measured again.
    monkeypatch.setattr(module.common, "train_rate", None)
    module.main(args)
    assert "digits fm measured before" in capsys.readouterr().out
    assert json.loads(out.read_text())["table"]["digits"]["fm"] == cell and len(inception.references) == 1
    with pytest.raises(SystemExit):
        module.main(args + ["--fid-solvers", "dopri5"])
    assert "--fid-solvers dopri5 not among --solvers euler:2 euler:1" in capsys.readouterr().err


def test_distill_table_trains_teachers_and_students_and_states_the_claims(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    out = tmp_path / "distill.json"
    args = [
        "--tasks",
        "normal:moons",
        "--steps",
        "50",
        "--num",
        "200",
        "--num-nll",
        "100",
        "--etas",
        "0.1",
        "--flow-layers",
        "2",
        "--out",
        str(out),
        "--plots",
        str(tmp_path / "plots"),
        "--keep",
        str(tmp_path / "runs"),
    ]
    table = importlib.import_module("distill_table").main(args)
    err = capsys.readouterr().err
    assert "distillation table: 6 models (6 per task and seed" in err and re.search(r"distill table[^\r\n]*6/6", err)
    rows = json.loads(out.read_text())["table"]["normal:moons"]
    assert list(rows) == ["icfm", "otcfm", "fastode", "reflow", "flow (eta=0.1)", "nfm (eta=0.1)"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        f"normal_moons_0_{name}.png"
        for name in ["icfm", "otcfm", "fastode", "reflow", "flow__eta_0.1_", "nfm__eta_0.1_"]
    )
    assert rows["flow (eta=0.1)"]["nfe"]["mean"] == 2 and rows["nfm (eta=0.1)"]["w2_euler:1"]["mean"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| reflow |" in md
    # Each claim's printed verdict is the one the table's numbers give.
    mean = lambda name, column: rows[name][column]["mean"]
    learned = ["fastode", "reflow", "nfm (eta=0.1)"]
    verdicts = {
        "- Learned and distilled couplings straighten trajectories": all(
            mean(n, "curvature") < mean("icfm", "curvature") for n in learned
        ),
        "- They win at few NFE against independent pairs": all(
            mean(n, f"w2_euler:{k}") < mean("icfm", f"w2_euler:{k}") for n in learned for k in (1, 2)
        ),
        "- ... and against minibatch OT pairs": all(
            mean(n, f"w2_euler:{k}") < mean("otcfm", f"w2_euler:{k}") for n in learned for k in (1, 2)
        ),
        "- The NFM student beats its teacher flow": mean("nfm (eta=0.1)", "w2_dopri5")
        < mean("flow (eta=0.1)", "w2_dopri5"),
    }
    for claim, holds in verdicts.items():
        (line,) = [line for line in md.splitlines() if line.startswith(claim)]
        assert line.endswith(": holds on every task" if holds else ": does not hold on normal:moons"), line
    # Run again with --keep after losing one model's measurements: the others are reused as they
    # were, and the lost one is measured again from its finished run.
    lost = tmp_path / "runs" / "normal_moons" / "seed0" / "fastode" / "distill_cell.json"
    lost.unlink()
    again = importlib.import_module("distill_table").main(args)
    assert lost.is_file()
    for name in rows:
        for column in ("w2_euler:1", "w2_dopri5", "nfe"):
            if name != "fastode":
                assert again["normal:moons"][name][column] == table["normal:moons"][name][column]
    assert again["normal:moons"]["fastode"]["w2_euler:1"]["mean"] == pytest.approx(
        table["normal:moons"]["fastode"]["w2_euler:1"]["mean"], rel=1e-4
    )


def test_distill_claims_name_the_tasks_where_they_fail(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    module = importlib.import_module("distill_table")

    def rows(nfm_w2_dopri5):
        cell = lambda w2, curvature: {
            "w2_euler:1": {"mean": w2},
            "w2_euler:2": {"mean": w2},
            "w2_dopri5": {"mean": w2},
            "curvature": {"mean": curvature},
        }
        # The learned couplings: straighter than I-CFM and OT-CFM, better than I-CFM at few
        # NFE, worse than OT-CFM there.
        return {
            "icfm": cell(2.0, 1.0),
            "otcfm": cell(0.5, 0.5),
            "fastode": cell(1.0, 0.1),
            "reflow": cell(1.0, 0.1),
            "flow (eta=0.1)": cell(0.8, float("nan")),
            "nfm (eta=0.1)": cell(1.0, 0.1) | {"w2_dopri5": {"mean": nfm_w2_dopri5}},
        }

    # The student beats its teacher flow (W2 0.8 with Dopri5) on a:b, not on c:d.
    lines = module.claims({"a:b": rows(0.7), "c:d": rows(0.9)})
    assert [line.rsplit(": ", 1)[1] for line in lines[:4]] == [
        "holds on every task",
        "holds on every task",
        "does not hold on a:b, c:d",
        "does not hold on c:d",
    ]
    assert lines[4].startswith("- Effect of eta on a → b: nfm (eta=0.1): W2 Euler-1 1.000, Dopri5 0.700")


def test_distill_claims_on_images_are_judged_by_fd_or_by_fid(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    module = importlib.import_module("distill_table")
    # fast-ode beats I-CFM at few NFE by the pixel FD and loses to it by the Inception FID.
    cell = lambda fd, fid: (
        {f"{q}_{s}": {"mean": v} for q, v in (("fd", fd), ("fid", fid)) for s in ("euler:1", "euler:2", "dopri5")}
        | {"curvature": {"mean": 0.1}}
    )
    rows = {"icfm": cell(2.0, 50.0), "otcfm": cell(1.0, 40.0), "fastode": cell(1.5, 60.0)}
    by_fd, by_fid = module.claims({"tfds:digits": rows}), module.claims({"tfds:digits": rows}, "fid")
    assert (
        by_fd[1]
        == "- They win at few NFE against independent pairs (FD at Euler NFE 1 and 2 below I-CFM's, every one): holds on every task"
    )
    assert by_fid[1].startswith("- They win at few NFE against independent pairs (FID at") and by_fid[1].endswith(
        "does not hold on tfds:digits"
    )
