"""Two processes x two fake CPU devices on 127.0.0.1 against one process with four devices
(minibatch OT and teacher couplings included), and a run whose peer never comes failing within
its timeout. Each process is a subprocess
of `fm-jax train` with a timeout; nothing runs in the pytest process."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

CONFIG = str(pathlib.Path(__file__).parent.parent / "experiments" / "configs" / "toy2d.py")
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
    return ["--config.distributed.mode=manual", f"--config.distributed.coordinator=127.0.0.1:{port}",
            f"--config.distributed.num_processes={processes}", f"--config.distributed.process_id={pid}",
            f"--config.distributed.init_timeout_s={timeout}", "--config.distributed.heartbeat_timeout_s=10"]


# A teacher method trains its teacher first, in one process; both runs then read it.
TEACHERS = {"nfm": ["--config.method=flow", "--config.flow.num_layers=2"], "reflow": ["--config.method=icfm"]}


@pytest.mark.parametrize("method, extra", [
    ("icfm", []),
    ("otcfm", []),
    ("nfm", []),
    ("reflow", ["--config.teacher.solver=euler", "--config.teacher.steps=4", "--config.teacher.precompute=300"]),
], ids=["icfm", "otcfm", "nfm_in_step", "reflow_precomputed"])
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path, method, extra):
    if method in TEACHERS:
        subprocess.run(train_cmd(tmp_path / "teacher", *TEACHERS[method]), env=env(1), check=True, timeout=300,
                       capture_output=True)
        extra = [*extra, f"--config.teacher.workdir={tmp_path / 'teacher'}"]
    single = tmp_path / "single"
    subprocess.run(train_cmd(single, f"--config.method={method}", *extra), env=env(4), check=True, timeout=300,
                   capture_output=True)
    multi, port = tmp_path / "multi", free_port()
    procs = [subprocess.Popen(train_cmd(multi, f"--config.method={method}", *extra, *manual(port, 2, pid)),
                              env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    # Process 0 reports for the run; process 1 writes no shared file.
    assert "on 4 device(s)" in outputs[0][0] and "trained" not in outputs[1][0]
    assert losses(multi) == pytest.approx(losses(single), rel=1e-5)
    assert (multi / "summary.json").exists() and json.loads((multi / "summary.json").read_text())["devices"] == 4


def test_a_missing_peer_fails_within_the_timeout_instead_of_hanging(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(train_cmd(tmp_path / "run", *manual(free_port(), 2, 0, timeout=5)), env=env(2),
                          timeout=120, capture_output=True, text=True)
    assert proc.returncode != 0
    assert time.monotonic() - start < 90


def test_a_peer_that_dies_mid_run_fails_the_other_within_the_heartbeat_timeout(tmp_path):
    workdir, port = tmp_path / "run", free_port()
    long_run = ["--config.num_steps=100000", "--config.checkpoint_every=0"]
    procs = [subprocess.Popen(train_cmd(workdir, *manual(port, 2, pid), *long_run), env=env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    deadline = time.monotonic() + 120
    while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and procs[0].poll() is None, "the run never started"
        time.sleep(0.1)
    procs[1].kill()  # training is under way: process 1 dies
    killed = time.monotonic()
    procs[1].communicate()
    procs[0].communicate(timeout=120)  # a hang would raise TimeoutExpired here
    assert procs[0].returncode != 0
    assert time.monotonic() - killed < 90
