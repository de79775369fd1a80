"""`fm-jax nll` and `fm-jax sample --diffusion` on a short real I-CFM run, N(0, I) -> 8 Gaussians."""

import json
import math
import shutil

import jax
import numpy as np
import pytest

from fm_jax import cli, data, likelihood, solvers
from fm_jax.train import load_run
from fm_jax.train.nll import held_out_nll

CONFIG = "toy2d"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("icfm") / "run"
    cli.main(
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            "--config.method=icfm",
            "--config.target=8gaussians",
            "--config.num_steps=600",
            "--config.steps_per_call=100",
            "--config.log_every=600",
            "--config.learning_rate=3e-3",
            "--config.mesh.num_devices=1",
        ]
    )
    return workdir


def test_exact_and_hutchinson_agree_within_their_standard_error(trained):
    run = load_run(trained)
    # Paired on the same held-out points: the difference is the probes' error alone.
    x = data.densities("normal", "8gaussians")[1].sample(jax.random.key(7), 800)
    vf = solvers.velocity_field(run.apply, run.params)
    exact = likelihood.log_likelihood(vf, x, solver="tsit5", steps=24).log_prob
    hutch = likelihood.log_likelihood(
        vf, x, divergence="hutchinson", key=jax.random.key(8), solver="tsit5", steps=24
    ).log_prob
    diff = np.asarray(hutch - exact)
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert se > 1e-3  # the probes do make an error
    assert abs(diff.mean()) < 3 * se

    kwargs = dict(num=800, solver=solvers.SolverSpec.parse("tsit5:24"), seed=3)
    exact = held_out_nll(run, divergence="exact", **kwargs)
    hutch = held_out_nll(run, divergence="hutchinson", **kwargs)
    assert hutch["log_likelihood_se"] > exact["log_likelihood_se"]  # the probes add variance
    # The true 8-Gaussians log-density bounds the model's from above in expectation: KL >= 0.
    assert exact["kl"] > -3 * exact["kl_se"] and exact["true_log_likelihood"] == hutch["true_log_likelihood"]
    assert exact["bits_per_dim"] == pytest.approx(-exact["log_likelihood"] / (2 * math.log(2)))


def test_nll_command_writes_the_report_and_the_heat_map(trained, capsys):
    cli.main(
        [
            "nll",
            "--workdir",
            str(trained),
            "--num",
            "400",
            "--grid",
            "0",
            "--divergence",
            "hutchinson",
            "--num-probes",
            "2",
            "--solver",
            "euler:20",
        ]
    )
    hutch = json.loads((trained / "nll.json").read_text())
    assert hutch["divergence"] == "hutchinson" and hutch["num_probes"] == 2 and hutch["nfe_mean"] == 20
    cli.main(
        [
            "nll",
            "--workdir",
            str(trained),
            "--num",
            "400",
            "--grid",
            "24",
            "--solver",
            "dopri5",
            "--rtol",
            "1e-4",
            "--atol",
            "1e-4",
        ]
    )
    out = capsys.readouterr().out
    report = json.loads((trained / "nll.json").read_text())
    assert f"{report['log_likelihood']:.4f}" in out and "bits/dim" in out and "KL" in out
    assert report["num"] == 400 and report["divergence"] == "exact" and report["nfe_mean"] > 6
    # A trained flow is far likelier than N(0, I) on the 8 Gaussians (about -16 nats on average there).
    assert -6.0 < report["log_likelihood"] < report["true_log_likelihood"] + 3 * report["kl_se"]
    png = (trained / "density.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_sde_sampling_from_the_command_line(trained, capsys):
    cli.main(
        [
            "sample",
            "--workdir",
            str(trained),
            "--diffusion",
            "1.0",
            "--solver",
            "euler",
            "--steps",
            "40",
            "--num",
            "2000",
        ]
    )
    assert "NFE 40" in capsys.readouterr().out
    data = np.load(trained / "samples_sde_euler_40steps_diffusion1.npz")
    radius = np.linalg.norm(data["x1"], axis=1)
    assert data["trajectory"].shape == (33, 2000, 2)
    assert abs(np.median(radius) - 5.0) < 0.5  # on the ring of the 8 modes


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["sample", "--diffusion", "1", "--solver", "dopri5", "--steps", "10"],
            "Unknown SDE solver 'dopri5'; choose one of",
        ),
        (["sample", "--diffusion", "1"], "fixed steps: give it steps"),
        (["nll", "--num", "1"], "--num must be at least 2"),
        (["nll", "--solver", "euler:x"], "NAME:STEPS"),
        (["nll"], "holds no trained model"),
    ],
)
def test_bad_input(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main([argv[0], "--workdir", str(tmp_path), *argv[1:]])


def test_runs_without_a_score_or_a_source_density_are_refused(trained, tmp_path):
    otcfm = tmp_path / "otcfm"
    shutil.copytree(trained, otcfm)
    config = json.loads((otcfm / "config.json").read_text())
    (otcfm / "config.json").write_text(json.dumps(config | {"method": "otcfm"}))
    with pytest.raises(SystemExit, match="score follows from the velocity only"):
        cli.main(["sample", "--workdir", str(otcfm), "--diffusion", "1", "--steps", "10", "--solver", "euler"])
    points = tmp_path / "points.npy"
    np.save(points, np.random.default_rng(0).normal(size=(100, 2)))
    (otcfm / "config.json").write_text(json.dumps(config | {"source": f"file:{points}"}))
    with pytest.raises(SystemExit, match="has no log-density"):
        cli.main(["nll", "--workdir", str(otcfm), "--num", "10"])
