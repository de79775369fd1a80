"""The teacher flow, fast-ode, NFM and reflow through `fm-jax train`, `eval` and `nll`, and their bad input."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from fm_jax import cli
from fm_jax.train import load_run

CONFIG = "toy2d"  # the packaged config (fm_jax/configs/toy2d.py)
SHORT = [
    "--config.num_steps=400",
    "--config.steps_per_call=100",
    "--config.log_every=400",
    "--config.batch_size=128",
    "--config.learning_rate=3e-3",
    "--config.target=8gaussians",
]


def train(workdir, *extra):
    cli.main(["train", "--config", CONFIG, "--workdir", str(workdir), *SHORT, *extra])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A RealNVP teacher and a fast-ode run on 8 Gaussians, trained once for the tests below."""
    root = tmp_path_factory.mktemp("teachers")
    train(root / "flow", "--config.method=flow", "--config.flow.num_layers=6", "--config.flow.noise=0.05")
    train(root / "fastode", "--config.method=fastode", "--config.beta=0.5")
    return root


def test_flow_run_samples_evaluates_and_has_an_exact_likelihood(teachers, capsys):
    cli.main(["eval", "--workdir", str(teachers / "flow"), "--num", "2000"])
    result = json.loads((teachers / "flow" / "eval.json").read_text())
    row = result["solvers"]["flow"]
    assert row["passes"] == 6 and row["w2"] < 2.0  # 8 modes at radius 5: W2 of a blob at 0 is ~5
    cli.main(["nll", "--workdir", str(teachers / "flow"), "--num", "1000"])
    report = json.loads((teachers / "flow" / "nll.json").read_text())
    assert report["nfe_mean"] == 0 and 0.0 < report["kl"] < 1.5
    cli.main(["sample", "--workdir", str(teachers / "flow"), "--num", "500"])
    assert (teachers / "flow" / "samples_flow.png").is_file()


def test_fast_ode_run_keeps_its_encoder_and_straightens(teachers):
    run = load_run(teachers / "fastode")
    assert set(run.params) == {"field", "encoder"}
    # The encoder moved away from the prior (its output layer starts at zero).
    assert float(np.abs(np.asarray(run.params["encoder"]["out"]["kernel"][...])).max()) > 1e-3
    cli.main(["eval", "--workdir", str(teachers / "fastode"), "--solvers", "euler:2", "--num", "1000"])
    row = json.loads((teachers / "fastode" / "eval.json").read_text())["solvers"]["euler:2"]
    assert row["nfe"] == 2 and row["w2"] < 3.0


@pytest.mark.parametrize(
    "method, teacher, extra",
    [
        ("nfm", "flow", []),
        ("reflow", "fastode", ["--config.teacher.solver=euler", "--config.teacher.steps=8"]),
        (
            "reflow",
            "fastode",
            ["--config.teacher.direction=forward", "--config.teacher.solver=euler", "--config.teacher.steps=8"],
        ),
        (
            "reflow",
            "fastode",
            ["--config.teacher.solver=euler", "--config.teacher.steps=8", "--config.teacher.precompute=1000"],
        ),
    ],
)
def test_distilled_runs_train_from_their_teacher(teachers, tmp_path, method, teacher, extra):
    train(tmp_path / "run", f"--config.method={method}", f"--config.teacher.workdir={teachers / teacher}", *extra)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(lines[-1]["loss"])
    run = load_run(tmp_path / "run")
    cli.main(["eval", "--workdir", str(tmp_path / "run"), "--solvers", "euler:4", "--num", "1000"])
    row = json.loads((tmp_path / "run" / "eval.json").read_text())["solvers"]["euler:4"]
    assert row["w2"] < 3.0 and run.step == 400


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.method=nfm"], "set --config.teacher.workdir"),
        (["--config.method=nfm", "--config.teacher.workdir={root}/fastode"], "nfm needs a normalizing-flow teacher"),
        (["--config.method=reflow", "--config.teacher.workdir={root}/flow"], "reflow needs a flow-matching teacher"),
        (
            ["--config.method=nfm", "--config.teacher.workdir={root}/flow", "--config.target=moons"],
            "trained on '8gaussians'",
        ),
        (["--config.method=reflow", "--config.teacher.workdir={root}/nothing"], "holds no trained run"),
        (
            ["--config.method=reflow", "--config.teacher.workdir={root}/fastode", "--config.teacher.direction=up"],
            "Unknown config.teacher.direction",
        ),
        (
            ["--config.method=reflow", "--config.teacher.workdir={root}/fastode", "--config.teacher.precompute=-1"],
            "precompute must be >= 0",
        ),
        (["--config.method=flow", "--config.precision=bfloat16"], "trains in float32"),
        (["--config.method=flow", "--config.flow.kind=glow"], "Unknown flow 'glow'"),
        (
            ["--config.method=flow", "--config.flow.kind=tarflow", "--config.flow.token_dim=3"],
            "do not split dimension 2",
        ),
        (["--config.method=fastode", "--config.beta=0"], "config.beta must be positive"),
    ],
)
def test_bad_teacher_and_flow_settings_fail_before_anything_is_written(teachers, tmp_path, extra, message):
    extra = [e.replace("{root}", str(teachers)) for e in extra]
    with pytest.raises(SystemExit, match=message):
        train(tmp_path / "run", *extra)
    assert not (tmp_path / "run").exists()


def test_precomputed_pairs_are_the_teacher_map_and_feed_the_batches(teachers):
    from fm_jax.train import RunSpec, apply_overrides, load_config
    from fm_jax.train.batches import PairBatches
    from fm_jax.train.sharding import make_mesh
    from fm_jax.train.teachers import precompute_pairs, teacher_coupling

    config = apply_overrides(
        load_config(CONFIG),
        {
            "method": "reflow",
            "target": "8gaussians",
            "batch_size": "64",
            "steps_per_call": "2",
            "teacher.workdir": str(teachers / "fastode"),
            "teacher.solver": "euler",
            "teacher.steps": "8",
        },
    )
    spec = RunSpec.from_config(config)
    coupling = teacher_coupling(spec)
    pairs = precompute_pairs(spec, coupling, 100)
    assert pairs["x0"].shape == pairs["x1"].shape == (100, 2)
    # Each pair is the teacher's map of its data point (chunks of the batch size, same draws).
    again = coupling(jax.random.key(0), pairs["x0"][:64], pairs["x1"][:64])[0]
    np.testing.assert_allclose(again, pairs["x0"][:64], atol=1e-5)
    batches = PairBatches(spec, make_mesh(0), coupling, 64, pairs)(jax.random.key(1), 0)
    assert batches["x0"].shape == (2, 64, 2)
    rows = {tuple(np.round(r, 5)) for r in pairs["x0"]}
    assert all(tuple(np.round(r, 5)) in rows for r in np.asarray(batches["x0"]).reshape(-1, 2))


@pytest.mark.parametrize("scope", ["global", "group"])
def test_a_teacher_step_matches_on_four_devices_and_takes_the_teacher_as_an_argument(teachers, scope):
    from fm_jax.train import apply_overrides, load_config
    from fm_jax.train.loop import build_engine, check_config

    losses = {}
    for devices in (1, 4):
        config = apply_overrides(
            load_config(CONFIG),
            {
                "method": "nfm",
                "target": "8gaussians",
                "batch_size": "64",
                "steps_per_call": "3",
                "num_steps": "6",
                "log_every": "3",
                "checkpoint_every": "0",
                "teacher.workdir": str(teachers / "flow"),
                "mesh.num_devices": str(devices),
                "coupling_scope": scope,
                "coupling_group": "16",
            },
        )
        engine = build_engine(check_config(config))
        batches = engine.batches(engine.data_key, 0)
        losses[devices] = np.asarray(engine.steps(engine.state, batches)[1]["loss"])
    np.testing.assert_allclose(losses[4], losses[1], rtol=2e-4, atol=1e-6)
    # The teacher's parameters are an argument of the step: other values, same program.
    steps = engine.steps
    other = dataclasses.replace(steps, teacher_params=jax.tree.map(lambda p: p * 0.5, steps.teacher_params))
    state = build_engine(check_config(config)).state
    moved = np.asarray(other(state, batches)[1]["loss"])
    assert steps.jitted._cache_size() == 1 and not np.allclose(moved, losses[4])
