"""Two processes x two fake CPU devices on 127.0.0.1 against one process with four devices
(minibatch OT and teacher couplings included), and a run whose peer never comes failing within
its timeout. Each process is a subprocess
of `fm-jax train` with a timeout; nothing runs in the pytest process."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

CONFIG = "toy2d"  # the packaged config (fm_jax/configs/toy2d.py)
RUN = ["--config.num_steps=40", "--config.steps_per_call=10", "--config.log_every=10", "--config.batch_size=64"]


def env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(workdir, *extra):
    return [sys.executable, "-m", "fm_jax.cli", "train", "--config", CONFIG, "--workdir", str(workdir), *RUN, *extra]


def losses(workdir) -> list[float]:
    return [json.loads(line)["loss"] for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def manual(port: int, processes: int, pid: int, timeout: int = 60) -> list[str]:
    return [
        "--config.distributed.mode=manual",
        f"--config.distributed.coordinator=127.0.0.1:{port}",
        f"--config.distributed.num_processes={processes}",
        f"--config.distributed.process_id={pid}",
        f"--config.distributed.init_timeout_s={timeout}",
        "--config.distributed.heartbeat_timeout_s=10",
    ]


# A teacher method trains its teacher first, in one process; both runs then read it.
TEACHERS = {"nfm": ["--config.method=flow", "--config.flow.num_layers=2"], "reflow": ["--config.method=icfm"]}


@pytest.mark.parametrize(
    "method, extra",
    [
        ("icfm", []),
        ("otcfm", []),
        ("nfm", []),
        ("reflow", ["--config.teacher.solver=euler", "--config.teacher.steps=4", "--config.teacher.precompute=300"]),
    ],
    ids=["icfm", "otcfm", "nfm_in_step", "reflow_precomputed"],
)
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path, method, extra):
    if method in TEACHERS:
        subprocess.run(
            train_cmd(tmp_path / "teacher", *TEACHERS[method]), env=env(1), check=True, timeout=300, capture_output=True
        )
        extra = [*extra, f"--config.teacher.workdir={tmp_path / 'teacher'}"]
    single = tmp_path / "single"
    subprocess.run(
        train_cmd(single, f"--config.method={method}", *extra), env=env(4), check=True, timeout=300, capture_output=True
    )
    multi, port = tmp_path / "multi", free_port()
    procs = [
        subprocess.Popen(
            train_cmd(multi, f"--config.method={method}", *extra, *manual(port, 2, pid)),
            env=env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    # Process 0 reports for the run; process 1 writes no shared file.
    assert "on 4 device(s)" in outputs[0][0] and "trained" not in outputs[1][0]
    assert losses(multi) == pytest.approx(losses(single), rel=1e-5)
    assert (multi / "summary.json").exists() and json.loads((multi / "summary.json").read_text())["devices"] == 4


def test_a_missing_peer_fails_within_the_timeout_instead_of_hanging(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(
        train_cmd(tmp_path / "run", *manual(free_port(), 2, 0, timeout=5)),
        env=env(2),
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert time.monotonic() - start < 90


def test_a_peer_that_dies_mid_run_fails_the_other_within_the_heartbeat_timeout(tmp_path):
    workdir, port = tmp_path / "run", free_port()
    long_run = ["--config.num_steps=100000", "--config.checkpoint_every=0"]
    procs = [
        subprocess.Popen(
            train_cmd(workdir, *manual(port, 2, pid), *long_run),
            env=env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    deadline = time.monotonic() + 120
    while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and procs[0].poll() is None, "the run never started"
        time.sleep(0.1)
    procs[1].kill()  # training is under way: process 1 dies
    killed = time.monotonic()
    procs[1].communicate()
    _, err = procs[0].communicate(timeout=120)  # a hang would raise TimeoutExpired here
    assert procs[0].returncode != 0
    # Said before the abort (which no Python code can catch): what happened and how to go on.
    assert "process 0 of 2. If a process dies" in err and "run the same command on every process to resume" in err
    assert time.monotonic() - killed < 90


@pytest.mark.parametrize("apart", [0.0, 1.5, 5.0], ids=["same_instant", "1.5s_apart", "5s_apart"])
def test_staggered_sigterm_stops_every_process_at_one_saved_step(tmp_path, apart):
    """A pod's hosts get SIGTERM at different moments (or only one does): the processes agree
    after each part of a call, save the same step and exit as resumable (75) within seconds."""
    workdir, port = tmp_path / "run", free_port()
    long_run = ["--config.num_steps=1000000", "--config.checkpoint_every=0", "--config.log_every=100"]
    procs = [
        subprocess.Popen(
            train_cmd(workdir, *manual(port, 2, pid), *long_run),
            env=env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    try:
        deadline = time.monotonic() + 180
        while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the run never started"
            time.sleep(0.1)
        signalled = time.monotonic()
        procs[1].send_signal(signal.SIGTERM)
        time.sleep(apart)
        if procs[0].poll() is None:
            procs[0].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=60)[1] for p in procs]  # a hang raises TimeoutExpired
        seconds = time.monotonic() - signalled
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 75, errs[1][-3000:]
    # Process 0 stops with it; a SIGTERM that comes after it has saved and left its loop may end it (143).
    assert procs[0].returncode in (75, -signal.SIGTERM), errs[0][-3000:]
    steps = {int(err.split(" at step ")[1].split(":")[0]) for err in errs if " at step " in err}
    assert len(steps) == 1, errs
    stopped = steps.pop()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [stopped]
    assert seconds < apart + 30
