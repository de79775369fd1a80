"""The `fm-jax` command: the Gaussian demo's numbers and its errors on bad input."""

import json

import pytest

from fm_jax import cli, solvers


def test_gaussian_demo_reports_small_errors_and_counted_nfe(tmp_path, capsys):
    out = tmp_path / "gaussian.json"
    rows = cli.main(["gaussian", "--num", "500", "--dim", "3", "--steps", "8", "--json", str(out)])
    assert rows == 0
    table = json.loads(out.read_text())["rows"]
    by_name = {(r["solver"], r["mode"]): r for r in table}
    # Every solver at fixed steps; the adaptive ones (an error estimate) also at a tolerance, Euler not.
    adaptive = [name for name in solvers.ODE_SOLVERS if solvers.is_adaptive(name)]
    assert len(by_name) == len(solvers.ODE_SOLVERS) + len(adaptive) and ("euler", "tol=1e-05") not in by_name
    assert by_name[("euler", "steps=8")]["nfe"] == 8
    assert by_name[("dopri5", "steps=8")]["nfe"] == 1 + 6 * 8
    assert by_name[("dopri5", "steps=8")]["rms_error"] < 1e-5
    assert by_name[("euler", "steps=8")]["rms_error"] > 10 * by_name[("heun", "steps=8")]["rms_error"]
    assert by_name[("tsit5", "tol=1e-05")]["rms_error"] < 1e-3
    printed = capsys.readouterr().out
    assert "dopri8" in printed and "NFE" in printed


def test_gaussian_demo_on_another_path_away_from_its_singular_end(tmp_path):
    out = tmp_path / "g.json"
    cli.main(["gaussian", "--path", "cosine", "--t1", "0.999", "--num", "200", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert all(r["rms_error"] < 1e-3 for r in rows if r["mode"].startswith("tol"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--path", "rectified"], "Unknown path 'rectified'"),
        (["--path", "icfm", "--path-params", "sigmax=1"], "no parameter"),
        (["--path-params", "sigma"], "name=value"),
        (["--t0", "0.5", "--t1", "0.5"], "t0 < t1"),
        (["--path", "linearvp", "--num", "10"], "not finite at t = 1.0"),
    ],
)
def test_gaussian_demo_bad_input(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["gaussian", *argv])
