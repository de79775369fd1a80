"""Inject the faults of a pod into small `fm-jax train` runs and record what happens.

    python experiments/faults_table.py --out results/faults.json

Every fault goes through the command line only (subprocesses with timeouts, the toy2d config,
I-CFM at batch 64), so the same script measures any checkout of the project: run it on an
older one to get the "before" column. Each row says what the user saw (exit code, the first
line of the error) and whether anything was lost or mixed (the final step reached, the params
against an uninterrupted run, duplicated log lines). Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tqdm import tqdm

CONFIG = "toy2d"  # the packaged config, fm_jax/configs/toy2d.py
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
BASE = [
    "--config.method=icfm",
    "--config.batch_size=64",
    "--config.steps_per_call=10",
    "--config.log_every=50",
    "--config.checkpoint_every=100",
]


def cmd(workdir, *extra, steps=600):
    return [
        sys.executable,
        "-m",
        "fm_jax.cli",
        "train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        *BASE,
        f"--config.num_steps={steps}",
        *extra,
    ]


def run(args, timeout=300) -> dict:
    began = time.monotonic()
    try:
        proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": "timeout", "said": f"no exit within {timeout} s", "s": timeout}
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    said = next((line for line in reversed(lines) if not line.startswith(("  ", "WARNING", "I1", "E1", "W1"))), "")
    return {
        "rc": proc.returncode,
        "said": said[:200],
        "stderr_lines": len(lines),
        "s": round(time.monotonic() - began, 1),
    }


def params(workdir):
    """The final params of a run (numpy), or None when it cannot be read."""
    code = (
        "import sys, numpy as np, jax, fm_jax.train as t; r = t.load_run(sys.argv[1]); "
        "np.savez(sys.argv[2], step=r.step, *[np.asarray(x) for x in jax.tree.leaves(r.params)])"
    )
    out = pathlib.Path(workdir).parent / f"{pathlib.Path(workdir).name}_params.npz"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(workdir), str(out)], env=ENV, capture_output=True, timeout=120
    )
    if proc.returncode:
        return None
    import numpy as np

    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def same(a, b) -> bool:
    import numpy as np

    return a is not None and b is not None and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def log_lines(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def steps_of(workdir) -> list[int]:
    d = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def wait_for(pred, proc, seconds=180):
    deadline = time.monotonic() + seconds
    while not pred():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def outcome(workdir, reference) -> dict:
    mine = params(workdir)
    lines = log_lines(workdir)
    return {
        "final_step": None if mine is None else int(mine["step"]),
        "bitwise_equal": same(mine, reference),
        "log_lines": len(lines),
        "duplicate_log_lines": len(lines) - len({line["step"] for line in lines}),
        "log_equal": [round(line["loss"], 9) for line in lines] == REF_LOG,
    }


REF_LOG: list = []


def damaged(tmp, reference, kind) -> dict:
    w = tmp / f"damaged_{kind}"
    run(cmd(w, steps=300))
    newest = w / "checkpoints" / "300"
    files = sorted((f for f in (newest / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    if kind == "truncated":
        files[-1].write_bytes(files[-1].read_bytes()[: files[-1].stat().st_size // 2])
    elif kind == "partial step dir":
        (w / "checkpoints" / "400" / "state").mkdir(parents=True)
    elif kind == "data position edited":
        (newest / "data" / "metadata").write_text(json.dumps({"step": 301}))
    first = run(cmd(w))
    second = run(cmd(w)) if first["rc"] != 0 else None
    return {"rerun": first, "second_rerun": second} | outcome(w, reference)


def all_damaged(tmp, reference) -> dict:
    w = tmp / "all_damaged"
    run(cmd(w, steps=300))
    for step in steps_of(w):
        files = sorted(
            (f for f in (w / "checkpoints" / str(step) / "state").rglob("*") if f.is_file()),
            key=lambda f: f.stat().st_size,
        )
        files[-1].unlink()
    before = len(log_lines(w))
    rerun = run(cmd(w))
    return {"rerun": rerun, "log_lines_before": before, "log_lines_after_rerun": len(log_lines(w))}


def bit_flips(tmp, reference_dir, count=20) -> dict:
    import numpy as np

    rng, changed, caught, harmless = np.random.default_rng(0), 0, 0, 0
    ref = params(reference_dir)
    for i in range(count):
        w = tmp / f"flip_{i}"
        shutil.copytree(reference_dir, w)
        files = [f for f in (w / "checkpoints" / "600" / "state").rglob("*") if f.is_file()]
        sizes = np.array([f.stat().st_size for f in files], float)
        target = files[rng.choice(len(files), p=sizes / sizes.sum())]
        content = bytearray(target.read_bytes())
        content[rng.integers(len(content))] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(content))
        mine = params(w)
        if mine is None or int(mine["step"]) != 600:
            caught += 1
        elif same(mine, ref):
            harmless += 1
        else:
            changed += 1
    return {"flips": count, "loaded_changed_values": changed, "refused_or_fell_back": caught, "harmless": harmless}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def staggered(tmp, apart) -> dict:
    w, port = tmp / f"staggered_{apart}", free_port()
    dist = lambda pid: [
        "--config.distributed.mode=manual",
        f"--config.distributed.coordinator=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={pid}",
        "--config.distributed.heartbeat_timeout_s=10",
    ]
    procs = [
        subprocess.Popen(
            cmd(w, *dist(pid), "--config.checkpoint_every=0", steps=10_000_000),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    started = wait_for(lambda: bool(log_lines(w)), procs[0])
    signalled = time.monotonic()
    procs[1].send_signal(signal.SIGTERM)
    time.sleep(apart)
    if procs[0].poll() is None:
        procs[0].send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            p.communicate(timeout=120)
            codes.append(p.returncode)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            codes.append("hung > 120 s")
    return {"started": started, "rc": codes, "s": round(time.monotonic() - signalled, 1), "checkpoints": steps_of(w)}


def two_writers(tmp) -> dict:
    w = tmp / "two_writers"
    first = subprocess.Popen(cmd(w, steps=20_000), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: bool(log_lines(w)), first)
    second = run(cmd(w, steps=20_000), timeout=600)
    first.communicate(timeout=600)
    lines = log_lines(w)
    return {
        "second": second,
        "first_rc": first.returncode,
        "duplicate_log_lines": len(lines) - len({line["step"] for line in lines}),
    }


def model_fails(tmp) -> dict:
    w = tmp / "model_fails"
    bad = run(cmd(w, "--config.model.activation=bogus"))
    fixed = run(cmd(w))
    return {"bad": bad, "fixed_rerun": fixed}


def changed_data(tmp) -> dict:
    import numpy as np

    w, pts = tmp / "changed_data", tmp / "pts.npy"
    np.save(pts, np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32))
    run(cmd(w, f"--config.target=file:{pts}", steps=300))
    np.save(pts, np.random.default_rng(1).normal(size=(500, 2)).astype(np.float32) + 3)
    return {"rerun": run(cmd(w, f"--config.target=file:{pts}"))}


def sigterm_resume(tmp) -> dict:
    """SIGTERM once checkpoint 1000 of a 6000-step run is written; the rerun against a run never stopped."""
    whole, w = tmp / "sigterm_whole", tmp / "sigterm"
    run(cmd(whole, steps=6000))
    proc = subprocess.Popen(cmd(w, steps=6000), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(s >= 1000 for s in steps_of(w)), proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    stopped = steps_of(w)[-1:]
    rerun = run(cmd(w, steps=6000))
    lines, ref_lines = log_lines(w), log_lines(whole)
    return {
        "stop_rc": proc.returncode,
        "stopped_at": stopped,
        "rerun": rerun,
        "bitwise_equal": same(params(w), params(whole)),
        "log_equal": [line["loss"] for line in lines] == [line["loss"] for line in ref_lines],
        "duplicate_log_lines": len(lines) - len({line["step"] for line in lines}),
    }


def slow_stop(tmp) -> dict:
    w = tmp / "slow"
    slow = [
        "--config.steps_per_call=100",
        "--config.log_every=100",
        "--config.checkpoint_every=0",
        "--config.batch_size=4096",
        "--config.model.width=1024",
        "--config.model.depth=4",
    ]
    err_path = tmp / "slow.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd(w, *slow, steps=1000), env=ENV, stdout=subprocess.PIPE, stderr=err, text=True)
        wait_for(lambda: "step/s" in err_path.read_text(), proc)
        time.sleep(2.0)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "rc": proc.returncode,
        "signal_to_exit_s": round(time.monotonic() - signalled, 1),
        "checkpoints": steps_of(w),
    }


def nan_stop(tmp) -> dict:
    import numpy as np

    x = np.random.default_rng(0).normal(size=(5000, 2))
    x[::2500] = 1e20
    np.save(tmp / "overflow.npy", x)
    w = tmp / "nan"
    r = run(
        cmd(
            w,
            f"--config.target=file:{tmp / 'overflow.npy'}",
            "--config.log_every=200000",
            "--config.checkpoint_every=0",
            steps=200_000,
        ),
        timeout=600,
    )
    return {"run": r}


def small(tmp, reference_dir) -> dict:
    (tmp / "a_file").write_text("x")
    (tmp / "text.npy").write_text("1 2\n3 4\n")
    cli = [sys.executable, "-m", "fm_jax.cli"]
    return {
        "sigma=-1": run(cmd(tmp / "sigma", "--config.sigma=-1", steps=20)),
        "workdir is a file": run(cmd(tmp / "a_file", steps=20)),
        "text file as .npy": run(cmd(tmp / "txt", f"--config.target=file:{tmp / 'text.npy'}", steps=20)),
        "eval --solvers euler": run(
            cli + ["eval", "--workdir", str(reference_dir), "--solvers", "euler", "--num", "200"]
        ),
        "sample --solver euler": run(
            cli + ["sample", "--workdir", str(reference_dir), "--solver", "euler", "--num", "50"]
        ),
        "eval --num 1": run(cli + ["eval", "--workdir", str(reference_dir), "--solvers", "euler:2", "--num", "1"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/faults.json")
    parser.add_argument("--label", default="", help="e.g. the commit measured")
    parser.add_argument("--only", nargs="*", default=None, help="run only the rows whose names contain these words")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fm_jax_faults_"))
    reference_dir = tmp / "reference"
    tqdm.write(
        f"faults table: a reference run of 600 steps, then each fault through the CLI; writing {args.out}", sys.stderr
    )
    run(cmd(reference_dir))
    reference = params(reference_dir)
    REF_LOG.extend(round(line["loss"], 9) for line in log_lines(reference_dir))
    rows = {}
    faults = [
        (name, fn)
        for name, fn in [
            ("damaged newest: truncated file", lambda: damaged(tmp, reference, "truncated")),
            ("damaged newest: partial step dir", lambda: damaged(tmp, reference, "partial step dir")),
            ("damaged newest: data position edited", lambda: damaged(tmp, reference, "data position edited")),
            ("all checkpoints damaged", lambda: all_damaged(tmp, reference)),
            ("20 single-bit flips", lambda: bit_flips(tmp, reference_dir)),
            ("SIGTERM to 2 processes at once", lambda: staggered(tmp, 0.0)),
            ("SIGTERM to 2 processes 1.5 s apart", lambda: staggered(tmp, 1.5)),
            ("two runs on one workdir", lambda: two_writers(tmp)),
            ("model fails to build, then fixed", lambda: model_fails(tmp)),
            ("point file changed", lambda: changed_data(tmp)),
            ("SIGTERM, then resume", lambda: sigterm_resume(tmp)),
            ("NaN loss, log_every 200000", lambda: nan_stop(tmp)),
            ("SIGTERM in a 100-step call of a slow step", lambda: slow_stop(tmp)),
            ("small ones", lambda: small(tmp, reference_dir)),
        ]
        if not args.only or any(word in name for word in args.only)
    ]
    for name, fn in tqdm(faults, desc="faults table", unit="fault", file=sys.stderr, dynamic_ncols=True):
        began = time.monotonic()
        rows[name] = fn()
        tqdm.write(f"{name} ({time.monotonic() - began:.0f} s): {json.dumps(rows[name])}")
        sys.stdout.flush()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and out.exists():  # a partial rerun updates its rows of an earlier table
        rows = json.loads(out.read_text())["rows"] | rows
    out.write_text(json.dumps({"label": args.label, "command": " ".join(sys.argv), "rows": rows}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
