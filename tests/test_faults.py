"""Faults a pod inflicts on a run, injected on purpose: damaged checkpoints (truncated,
removed or flipped bits, broken metadata, a partial step, an edited data position), all
checkpoints damaged, two runs on one workdir, a config that fails to build its model, data
changed under the same name, a loss that turns non-finite, a stop in the middle of a long
call, and bad command lines. Each test reproduces its fault and checks that nothing saved is
lost and nothing mixed. Runs that need signals or locks are `fm-jax` subprocesses with
timeouts; the rest call `train` in this process on tiny configs. (Staggered SIGTERM over
several processes and a dead peer: tests/test_multiprocess.py.)"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fm
from fm_jax import cli
from fm_jax.train import apply_overrides, distributed, load_config, loop, train
from fm_jax.train.checkpoints import Checkpoints, DamagedCheckpoints

CONFIG = "toy2d"
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


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


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def assert_bitwise(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def logged(workdir) -> dict[int, float]:
    lines = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    assert len({line["step"] for line in lines}) == len(lines)  # no line twice
    return {line["step"]: line["loss"] for line in lines}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run of short_config() never interrupted, and its workdir."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    return train(short_config(), workdir, progress=False), workdir


def state_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def damage(workdir: pathlib.Path, kind: str) -> int:
    """Damage the newest checkpoint of a run trained to 40 steps as `kind`; returns the damaged step."""
    step_dir = workdir / "checkpoints" / "40"
    largest = state_files(step_dir)[-1]
    if kind == "truncated":
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    elif kind == "removed":
        largest.unlink()
    elif kind == "metadata":
        (step_dir / "state" / "_METADATA").write_text('{"tree_metadata": ')
    elif kind == "data_position":
        (step_dir / "data" / "metadata").write_text(json.dumps({"step": 40, "extra": 1}))
    elif kind == "partial_step":  # a step directory without orbax's tmp suffix, half written
        (workdir / "checkpoints" / "60" / "state").mkdir(parents=True)
        return 60
    return 40


@pytest.mark.parametrize("kind", ["truncated", "removed", "metadata", "data_position", "partial_step"])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_run_finishes(tmp_path, reference, kind):
    train(short_config(num_steps=40), tmp_path, progress=False)
    bad = damage(tmp_path, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = train(short_config(), tmp_path, progress=False)  # one rerun finishes the run
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "\n" not in messages[0] and len(messages[0]) < 500, messages
    assert f"checkpoints/{bad} is damaged" in messages[0] and f"damaged/{bad}" in messages[0]
    assert (tmp_path / "checkpoints" / "damaged" / str(bad)).is_dir()  # kept for inspection
    assert_bitwise(state, reference[0])
    assert logged(tmp_path) == logged(reference[1])


def test_every_checkpoint_damaged_refuses_to_restart_and_keeps_the_log(tmp_path):
    train(short_config(num_steps=40), tmp_path, progress=False)
    for step in (20, 40):
        state_files(tmp_path / "checkpoints" / str(step))[-1].unlink()
    log = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(
        DamagedCheckpoints,
        match=r"Every checkpoint .* is damaged: 40 \(.*\), 20 \(.*Nothing was "
        r"changed. Either move them aside .* or pass a new --workdir",
    ):
        train(short_config(), tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_bytes() == log
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["20", "40"]


def test_single_bit_flips_never_load_changed_values(tmp_path, reference):
    """Every flip is either harmless (the same values load) or found (the step before is used)."""
    rng = np.random.default_rng(0)
    found = 0
    for i in range(12):
        workdir = tmp_path / str(i)
        shutil.copytree(reference[1], workdir)
        files = state_files(workdir / "checkpoints" / "60")
        sizes = np.array([f.stat().st_size for f in files], float)
        target = files[rng.choice(len(files), p=sizes / sizes.sum())]
        content = bytearray(target.read_bytes())
        content[rng.integers(len(content))] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(content))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = fm.train.load_run(workdir)
        if run.step == 60:
            assert_bitwise(run, reference[0])
        else:
            assert run.step == 40
            found += 1
    assert found >= 6  # most flips land in the arrays' chunks


def test_checksums_on_the_host_equal_those_of_the_devices_and_catch_every_bit_flip():
    """A process that holds its arrays whole sums them on the host, a multi-process run on the
    devices: both must give the same numbers for every dtype and layout, or a checkpoint written
    by one would be found damaged by the other."""
    from jax.sharding import NamedSharding, PartitionSpec

    from fm_jax.train import checkpoints

    key = jax.random.key(0)
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.enable_x64(True):
        leaves = [
            jax.random.normal(key, (3, 5, 7)),
            jax.random.normal(key, (6, 4), jnp.float64),
            jax.random.normal(key, (64, 8)).astype(jnp.bfloat16),
            jnp.ones((5,), jnp.float16),
            jnp.arange(-5, 6, dtype=jnp.int32),
            jnp.arange(300, dtype=jnp.uint32).astype(jnp.uint8),
            jnp.array([True, False, True]),
            jnp.float32(3.5),
            jax.device_put(jax.random.normal(key, (16, 4)), NamedSharding(mesh, PartitionSpec("d"))),
        ]
        for x in leaves:
            host, finite = checkpoints._host_sums(np.asarray(x))
            device, device_finite = jax.device_get(checkpoints._device_sums(x))
            assert host.tolist() == device.tolist() and finite and device_finite, x.dtype
            bits = np.asarray(x).copy().reshape(-1).view(np.uint8)
            for position in (0, bits.size // 2, bits.size - 1):
                flipped = bits.copy()
                flipped[position] ^= 1 << (0 if x.dtype == jnp.bool_ else position % 8)  # a bool is its low bit
                changed = flipped.view(np.asarray(x).dtype).reshape(np.shape(x))
                assert checkpoints._host_sums(changed)[0][0] != host[0], (x.dtype, position)
    sums, finite = checkpoints.checksums({"a": leaves[0], "b": [leaves[2], leaves[-1]]})
    assert finite and sorted(sums) == ["['a']", "['b'][0]", "['b'][1]"]
    assert not checkpoints.checksums({"a": jnp.array([1.0, jnp.inf], jnp.bfloat16)})[1]


def test_a_nonfinite_state_is_never_checkpointed(tmp_path, reference):
    engine = loop.build_engine(loop.check_config(short_config()))
    state = engine.state._replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.nan), engine.state.params))
    checkpoints = Checkpoints(tmp_path)
    with pytest.raises(FloatingPointError, match="NaN or infinite values: it was not checkpointed"):
        checkpoints.save(state, 7, {"step": 7})
    checkpoints.wait()
    assert checkpoints.steps() == []


def test_a_nonfinite_loss_stops_at_the_first_call(tmp_path, monkeypatch):
    """The loss is checked every call, not only at log and checkpoint steps."""
    x = np.random.default_rng(0).normal(size=(5000, 2))
    x[::2500] = 1e20  # rare rows overflow the float32 loss
    np.save(tmp_path / "x.npy", x)
    calls = []
    build = loop.build_engine

    def counting(spec):
        engine = build(spec)
        compile_steps = engine.steps.compile

        def compiled(state, batches):
            run = compile_steps(state, batches)
            return lambda *args: calls.append(args[2:]) or run(*args)

        return engine._replace(steps=type("Counted", (), {"compile": staticmethod(compiled)})())

    monkeypatch.setattr(loop, "build_engine", counting)
    config = short_config(num_steps=20_000, log_every=20_000, checkpoint_every=0, target=f"file:{tmp_path / 'x.npy'}")
    with pytest.raises(FloatingPointError, match=r"The loss is inf at step (\d+)") as info:
        train(config, tmp_path / "run", progress=False)
    bad = int(str(info.value).split("at step ")[1].split(":")[0])
    assert bad < 2000
    assert sum(count for _, count in calls) < bad + 10  # stopped in the call that met it


@pytest.mark.parametrize("field, value", [("model.activation", "bogus"), ("model.width", 0), ("model.depth", 0)])
def test_a_config_whose_model_fails_writes_nothing_and_the_fixed_one_runs(tmp_path, field, value):
    with pytest.raises(ValueError, match="activation|positive"):
        train(short_config(num_steps=20, **{field: value}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    train(short_config(num_steps=20), tmp_path / "run", progress=False)


def test_a_bad_sigma_is_refused(tmp_path):
    with pytest.raises(ValueError, match="config.sigma must be >= 0"):
        train(short_config(sigma=-1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change", ["values", "dimension"])
def test_changed_point_data_is_refused_on_resume(tmp_path, change):
    points = tmp_path / "pts.npy"
    original = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    np.save(points, original)
    config = dict(target=f"file:{points}")
    train(short_config(num_steps=20, **config), tmp_path / "run", progress=False)
    np.save(points, original + 1 if change == "values" else np.zeros((500, 3), np.float32))
    log = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"The target data .*pts.npy' changed since this run started .*sha256"):
        train(short_config(num_steps=40, **config), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == log
    np.save(points, original)  # the original back: the run resumes
    assert int(train(short_config(num_steps=40, **config), tmp_path / "run", progress=False).step) == 40


def test_log_windows_do_not_depend_on_where_a_run_stopped(tmp_path):
    """Killed after the checkpoint at step 20, inside the log window 1..30: the resumed run logs
    the same mean at 30 as the run never stopped (the window's losses are in the checkpoint)."""
    config = short_config(log_every=30)
    whole = train(config, tmp_path / "whole", progress=False)
    shutil.copytree(tmp_path / "whole", tmp_path / "killed")
    for step in ("40", "60"):  # as if killed before these were written
        shutil.rmtree(tmp_path / "killed" / "checkpoints" / step)
    resumed = train(config, tmp_path / "killed", progress=False)
    assert_bitwise(resumed, whole)
    assert logged(tmp_path / "killed") == logged(tmp_path / "whole")


def test_calls_cut_into_one_step_parts_give_the_same_numbers(tmp_path, reference):
    """max_call_s cuts each call into parts (here of one step): same parameters and logs, bit for bit."""
    state = train(short_config(max_call_s=1e-9), tmp_path, progress=False)
    assert_bitwise(state, reference[0])
    assert logged(tmp_path) == logged(reference[1])


def test_bad_paths_and_files_are_refused_with_their_names(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        train(short_config(num_steps=20), tmp_path / "file", progress=False)
    (tmp_path / "text.npy").write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match=r"text.npy is not a readable .npy file"):
        train(short_config(num_steps=20, target=f"file:{tmp_path / 'text.npy'}"), tmp_path / "run", progress=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--solvers", "euler"], "Euler has no error estimate: give it a number of steps"),
        (["sample", "--solver", "euler"], "Euler has no error estimate: give it a number of steps"),
        (["eval", "--num", "1"], "--num must be at least 2"),
    ],
)
def test_bad_command_lines_fail_before_any_work(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main([*argv, "--workdir", str(tmp_path / "none")])


def train_cmd(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "fm_jax.cli",
        "train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        "--config.method=icfm",
        "--config.batch_size=64",
        "--config.steps_per_call=10",
        *extra,
    ]


def wait_for(condition, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_holder_does_not_block(tmp_path):
    workdir = tmp_path / "run"
    long = ["--config.num_steps=1000000", "--config.log_every=100", "--config.checkpoint_every=200"]
    first = subprocess.Popen(
        train_cmd(workdir, *long), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: (workdir / "checkpoints" / "200").is_dir(), first)
        second = subprocess.run(train_cmd(workdir, *long), env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"is in use by PID {first.pid} on " in second.stderr and "nothing was changed" in second.stderr
        assert logged(workdir)  # the first run's log, no line twice
    finally:
        first.kill()  # kill -9: its lock is left behind, stale
        first.communicate()
    assert f"PID {first.pid}" in (workdir / "lock").read_text()
    done = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    rerun = subprocess.run(
        train_cmd(workdir, f"--config.num_steps={done + 100}", *long[1:]),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]


def test_a_stop_in_a_long_call_is_saved_within_seconds_and_resumes(tmp_path):
    """A slow step (an MLP of width 1024 on batch 4096) and 100 steps per call (~40 s here):
    SIGTERM mid-call is saved within max_call_s (5 s) plus one step, at a step inside the
    call, and exits 75."""
    workdir = tmp_path / "run"
    slow = [
        "--config.num_steps=1000",
        "--config.steps_per_call=100",
        "--config.log_every=100",
        "--config.checkpoint_every=0",
        "--config.batch_size=4096",
        "--config.model.width=1024",
        "--config.model.depth=4",
    ]
    stderr = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen(train_cmd(workdir, *slow), env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True)
    wait_for(lambda: "step/s" in (tmp_path / "stderr").read_text(), proc, seconds=180)  # the loop runs
    time.sleep(2.0)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    seconds = time.monotonic() - signalled
    stderr.close()
    text = (tmp_path / "stderr").read_text()
    assert proc.returncode == cli.EXIT_RESUMABLE, text[-3000:]
    stopped = int(text.split("SIGTERM at step ")[1].split(":")[0])
    assert 0 < stopped < 1000 and stopped % 100, stopped  # inside a call, not at its end
    assert not (workdir / "summary.json").exists()
    assert seconds < 20, seconds  # 5 s parts + one step + the save, far below the call
    assert Checkpoints(workdir, read_only=True).steps() == [stopped]


def test_the_command_line_reports_a_damaged_checkpoint_in_one_line(tmp_path):
    train(short_config(num_steps=40), tmp_path, progress=False)
    damage(tmp_path, "truncated")
    proc = subprocess.run(
        train_cmd(tmp_path, "--config.num_steps=60", "--config.log_every=10", "--config.checkpoint_every=20"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    reports = [line for line in lines if "Warning" in line or "Error" in line or "Traceback" in line]
    assert len(reports) == 1 and reports[0].startswith("fm-jax: RuntimeWarning: Checkpoint"), lines
    assert "moved to" in reports[0]
    # And the run says where it went on from: the checkpoint before the damaged one.
    assert any(line.startswith("resuming from step 20 of 60 (checkpoint ") for line in lines), lines


def stop_after_part(monkeypatch, part: int):
    """Make the run stop after its `part`-th part of a call, as if a process had got SIGTERM."""
    parts = []

    def agree(stop, count):
        parts.append(count)
        return stop or len(parts) == part, count

    monkeypatch.setattr(distributed, "agree", agree)


def test_a_stop_inside_a_call_resumes_bit_for_bit(tmp_path, reference, monkeypatch):
    """Parts of one step (max_call_s tiny); the stop after part 23 cuts the call 20..30."""
    stop_after_part(monkeypatch, 23)
    with pytest.raises(loop.Interrupted, match="at step 23: the state is saved"):
        train(short_config(max_call_s=1e-9), tmp_path, progress=False)
    monkeypatch.undo()
    assert Checkpoints(tmp_path, read_only=True).steps() == [20, 23]
    state = train(short_config(), tmp_path, progress=False)  # max_call_s may change on resume
    assert_bitwise(state, reference[0])
    assert logged(tmp_path) == logged(reference[1])
