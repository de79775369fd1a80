"""Checkpoints and resume: a SIGKILLed or SIGTERMed `fm-jax train` rerun with the same command
ends bitwise equal to an uninterrupted run; a damaged checkpoint falls back to the one before;
a checkpoint moves between device counts; a NaN loss stops training and keeps the last good one.
Interrupted runs are subprocesses (one CPU device each), never the pytest process."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import fm_jax as fm
from fm_jax.train import apply_overrides, load_config, train
from fm_jax.train.checkpoints import Checkpoints
from fm_jax.train.loop import build_engine, check_config

CONFIG = "toy2d"
LONG = [
    "--config.num_steps=1600",
    "--config.steps_per_call=20",
    "--config.log_every=100",
    "--config.checkpoint_every=200",
    "--config.batch_size=128",
    "--config.ema_decay=0.9",
]


def command(workdir):
    return [sys.executable, "-m", "fm_jax.cli", "train", "--config", CONFIG, "--workdir", str(workdir), *LONG]


def finished_steps(workdir) -> list[int]:
    directory = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def interrupt(workdir, sig, after_step: int):
    """Start a run, send `sig` once checkpoint `after_step` is on disk, and return the process's result."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(command(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any(s >= after_step for s in finished_steps(workdir)):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def final_state(workdir):
    run = fm.train.load_run(workdir)
    return run.step, jax.tree.map(np.asarray, run.params)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(
        command(workdir), check=True, timeout=300, capture_output=True, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    return workdir


def logged(workdir) -> dict[int, dict]:
    """{step: every logged value but the speeds}: loss, grad_norm, lr and the evaluation."""
    lines = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines]
    assert len(steps) == len(set(steps))  # no line written twice
    return {line["step"]: {k: v for k, v in line.items() if not k.endswith("_per_s")} for line in lines}


def assert_same_run(workdir, reference):
    step, params = final_state(workdir)
    ref_step, ref_params = final_state(reference)
    assert step == ref_step == 1600
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    # One line per 100 steps, the same means bit for bit: the window the stop cut was checkpointed.
    lines = logged(workdir)
    assert lines == logged(reference)
    assert {"loss", "grad_norm", "lr"} <= set(lines[100]) and "eval/w2" in lines[1000]  # the defaults' eval_every


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_bitwise(tmp_path, uninterrupted, sig):
    workdir = tmp_path / "run"
    code, err = interrupt(workdir, sig, after_step=400)
    if sig == signal.SIGTERM:
        # Stopped between calls with a checkpoint of the step it reached, and said how to go on.
        assert code == 75 and "SIGTERM at step" in err and "run the same command to resume" in err
        stopped = int(err.split("SIGTERM at step ")[1].split(":")[0])
        assert finished_steps(workdir)[-1] == stopped
    else:
        assert code == -signal.SIGKILL
    stopped = finished_steps(workdir)[-1]
    assert stopped < 1600
    subprocess.run(
        command(workdir), check=True, timeout=300, capture_output=True, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    assert_same_run(workdir, uninterrupted)


def short_config(**fields):
    base = {
        "num_steps": 60,
        "steps_per_call": 10,
        "log_every": 10,
        "checkpoint_every": 20,
        "batch_size": 64,
        "method": "icfm",
    }
    return apply_overrides(load_config(CONFIG), {k: str(v) for k, v in (base | fields).items()})


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    train(short_config(), tmp_path, progress=False)
    assert finished_steps(tmp_path) == [20, 40, 60]
    for f in (tmp_path / "checkpoints" / "60").rglob("*"):
        if f.is_file():
            f.write_bytes(b"damaged")
    with pytest.warns(RuntimeWarning, match=r"checkpoints/60 is damaged .* using step 40"):
        run = fm.train.load_run(tmp_path)
    assert run.step == 40


def test_a_checkpoint_from_8_devices_restores_on_1_and_4(tmp_path):
    saved = train(short_config(**{"mesh.num_devices": 8, "mesh.param_layout": "fsdp"}), tmp_path, progress=False)
    expected = jax.tree.map(np.asarray, saved.params)
    for devices, layout in [(1, "replicated"), (4, "fsdp")]:
        engine = build_engine(check_config(short_config(**{"mesh.num_devices": devices, "mesh.param_layout": layout})))
        shardings = jax.tree.map(lambda x: x.sharding, engine.state)
        state, step, position, _ = Checkpoints(tmp_path, read_only=True).restore_latest(engine.state, shardings)
        assert position == {"step": 60}
        assert step == 60
        for leaf, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
            assert len(leaf.sharding.device_set) == devices
            np.testing.assert_array_equal(np.asarray(leaf), want)
    # And training goes on there: the same run, 4 devices, 40 steps more.
    state = train(short_config(num_steps=100, **{"mesh.num_devices": 4}), tmp_path, progress=False)
    assert int(np.asarray(state.step)) == 100


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    # Finite data whose rare rows overflow the float32 loss: the first batch that draws one is step s.
    x = np.random.default_rng(0).normal(size=(5000, 2))
    x[::2500] = 1e20
    np.save(tmp_path / "x.npy", x)
    config = short_config(num_steps=400, target=f"file:{tmp_path / 'x.npy'}")
    with pytest.raises(FloatingPointError, match=r"The loss is inf at step (\d+): training stopped") as info:
        train(config, tmp_path / "run", progress=False)
    bad = int(str(info.value).split("at step ")[1].split(":")[0])
    kept = finished_steps(tmp_path / "run")
    assert kept and kept[-1] < bad and f"the last good checkpoint is step {kept[-1]}" in str(info.value)
    assert fm.train.load_run(tmp_path / "run").step == kept[-1]


def test_a_resumed_run_says_where_it_resumes_and_reading_checkpoints_prints_no_orbax_notice(tmp_path, capsys, caplog):
    train(short_config(num_steps=40), tmp_path, progress=False)
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        train(short_config(num_steps=60), tmp_path, progress=False)
        run = fm.train.load_run(tmp_path)
    err = capsys.readouterr().err
    assert f"resuming from step 40 of 60 (checkpoint {tmp_path / 'checkpoints' / '40'})" in err
    assert run.step == 60
    # orbax's "Given directory is read only" notice of every reader (the resume's first check, load_run).
    notices = [r.getMessage() for r in caplog.records if "read only" in r.getMessage()]
    assert notices == [] and "read only" not in err
