"""The training driver: config checks, the host loop around the sharded step, logs, orbax save.

`train(config, workdir)` trains `config.method` from `config.source` to `config.target`
(densities of `fm_jax.data`: toy 2D densities, point files, or `tfds:NAME` image datasets)
with an MLP or a U-Net (`fm_jax.train.state`) on a mesh of
`config.mesh.num_devices` devices (`fm_jax.train.step`), and leaves in `workdir`:
`config.json` (the config with the method's defaults filled in), `metrics.jsonl` and
`tensorboard/` (a line per `log_every` steps and per evaluation, `fm_jax.train.metrics_log`)
and `checkpoints/` (orbax, `fm_jax.train.checkpoints`). Each call draws `steps_per_call` batches on the devices, already
split over the mesh, and runs as many optimizer steps in one jitted loop, so that a small
model is not bound by Python dispatch; a call is run in parts of about `config.max_call_s`
seconds, between which a stop is honoured.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from fm_jax import files
from fm_jax.couplings import Independent
from fm_jax.data import points
from fm_jax.losses import CFMLoss, FlowNLLLoss
from fm_jax.train import distributed, sharding
from fm_jax.train.batches import Batches, make_batches, on_host
from fm_jax.train.checkpoints import CHECKPOINTS, Checkpoints
from fm_jax.train.lock import workdir_lock
from fm_jax.train.methods import build_loss
from fm_jax.train.metrics_log import MetricsLog, PeriodicEval
from fm_jax.train.spec import RunSpec, resolve_defaults
from fm_jax.train.state import TrainState, build_module, checkpoint_tree, init_state, learning_rate_at, model_method
from fm_jax.train.step import TrainSteps, make_train_step, split_coupling
from fm_jax.train.teachers import precompute_pairs, teacher_coupling

# Fields a resumed run may change: none changes the numbers of the steps.
RESUME_MAY_CHANGE = (
    "num_steps",
    "mesh",
    "distributed",
    "max_call_s",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
)
DATA_FINGERPRINTS = "data.json"  # what identifies the run's data (`fm_jax.data.fingerprint`)

__all__ = ["Engine", "Interrupted", "build_engine", "check_config", "train", "with_absolute_files"]


def check_config(config: ml_collections.ConfigDict) -> RunSpec:
    """The run spec of a config (`RunSpec.from_config`), with the checks that need this machine:
    the model built abstractly (its settings, without weights), the mesh and the processes.
    Every mistake that can be found before compiling, as one clear error."""
    spec = RunSpec.from_config(config)
    nnx.eval_shape(lambda: build_module(spec.model))
    spec.engine.check_devices(sharding.make_mesh(spec.engine.num_devices).devices.size)
    if spec.data.image is not None:
        if spec.engine.batch_size % jax.process_count():
            raise ValueError(
                f"batch_size {spec.engine.batch_size} does not split over {jax.process_count()} processes."
            )
        if jax.process_count() > 1 and spec.method.coupling is not None and on_host(spec.method.coupling(spec.loss)):
            raise ValueError(
                "A host OT solver couples the whole batch, which no one process holds when images are read per "
                "process: use --config.ot_solver=auction (solved on the devices) or --config.coupling_scope=group."
            )
    return spec


def with_absolute_files(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose point-file specs are absolute, so that the saved config works from any directory."""
    config = ml_collections.ConfigDict(config.to_dict())
    for field in ("source", "target"):
        if points.is_file_spec(config[field]):
            config[field] = points.FILE_PREFIX + str(points.file_path(config[field]))
    if "data" in config and config.data.dir:
        config.data.dir = str(pathlib.Path(config.data.dir).expanduser().absolute())
    return config


class Engine(NamedTuple):
    """What a run needs on its devices: the step-0 state (placed), `batches(key, first_step)`,
    the jitted `steps(state, batches) -> (state, metrics)`, the data key, the mesh, the
    network's `apply(params, t, x, cond)` and the loss the step regresses (its coupling
    `Independent` where the batches arrive coupled from the host)."""

    state: TrainState
    batches: Batches
    steps: TrainSteps
    data_key: jax.Array
    mesh: Mesh
    apply: Callable
    loss: CFMLoss | FlowNLLLoss


def build_engine(spec: RunSpec) -> Engine:
    """The state, batch source and sharded step of a checked run spec, on `spec.engine.num_devices` devices."""
    mesh = sharding.make_mesh(spec.engine.num_devices)
    apply, optimizer, state = init_state(spec)
    state_sharding = sharding.state_shardings(state, mesh, spec.engine.param_layout)
    state = sharding.place(state, state_sharding)
    loss = build_loss(
        spec.method,
        spec.loss,
        spec.data.source,
        encode=model_method(spec.model, "encode") if spec.method.encoder else None,
        teacher=teacher_coupling(spec, mesh) if spec.method.teacher else None,
    )
    coupling, paired = split_coupling(loss)
    group = spec.engine.group(mesh.devices.size)
    pairs = None
    if spec.teacher is not None and spec.teacher.precompute:
        pairs = precompute_pairs(spec, coupling, spec.teacher.precompute)
        loss, coupling = paired, Independent()  # the batches arrive paired
    # A host coupling pairs the batches before they reach the step (fm_jax.train.batches).
    batches = make_batches(
        spec, mesh, coupling, group if spec.engine.coupling_scope == "group" else spec.engine.batch_size, pairs=pairs
    )
    loss = paired if on_host(coupling) else loss
    steps = make_train_step(
        loss, apply, optimizer, spec.engine, mesh=mesh, state_sharding=state_sharding, dropout=spec.model.dropout
    )
    # The state's key, kept on the host too: drawing batches never waits for a step.
    return Engine(state, batches, steps, jax.random.key(spec.seed), mesh, apply, loss)


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived: the state was checkpointed and training stopped."""


@contextlib.contextmanager
def _timed(total: list):
    """Adds the seconds the block takes to total[0]."""
    began = time.perf_counter()
    try:
        yield
    finally:
        total[0] += time.perf_counter() - began


@contextlib.contextmanager
def _signals_caught(flag: list):
    """Turn SIGTERM/SIGINT into a request (`flag`) that the loop honours between calls."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: flag.append(signal.Signals(signum).name))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_not_finished(num_steps: int, workdir: pathlib.Path) -> None:
    """A workdir whose newest intact checkpoint is at num_steps or later is never touched.
    (A damaged final checkpoint does not count: the run then resumes from the one before.)"""
    if (workdir / CHECKPOINTS).exists():
        checkpoints = Checkpoints(workdir, read_only=True)
        done = [s for s in checkpoints.steps() if s >= num_steps]
        saved = workdir / "config.json"
        like = lambda: checkpoint_tree(
            init_state(RunSpec.from_config(ml_collections.ConfigDict(json.loads(saved.read_text())), teacher=False))[2]
        )
        if done and saved.is_file() and checkpoints.intact(done[-1], jax.eval_shape(like)):
            raise ValueError(
                f"{workdir} already holds a trained model (step {done[-1]}): pass a new --workdir, "
                "or a larger --config.num_steps to train on (nothing was changed)."
            )


def _check_same_run(config: ml_collections.ConfigDict, fingerprints: dict, workdir: pathlib.Path) -> None:
    """An existing workdir must hold the same run, on the same data. num_steps may grow
    (training goes on), and the mesh and processes may change (a run saved on 8 devices
    resumes on 4). Reads only: nothing is written before the run starts."""
    saved = workdir / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        new = json.loads(config.to_json())
        differ = sorted(k for k in set(old) | set(new) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k))
        if differ:
            raise ValueError(
                f"{workdir} holds a run with another config ({', '.join(differ)} differ): pass a new --workdir, "
                "or the same config to resume it (nothing was changed)."
            )
    recorded = workdir / DATA_FINGERPRINTS
    if recorded.exists():
        old = json.loads(recorded.read_text())
        for field in ("source", "target"):
            if old.get(field) != fingerprints[field]:
                raise ValueError(
                    f"The {field} data {config[field]!r} changed since this run started (recorded "
                    f"{_describe(old.get(field))}, now {_describe(fingerprints[field])}): put the original data "
                    "back to resume, or train into a new --workdir (nothing was changed)."
                )


def _describe(fingerprint: dict | None) -> str:
    if not fingerprint:
        return "none"
    if "sha256" in fingerprint:
        return f"shape {tuple(fingerprint['shape'])}, sha256 {fingerprint['sha256'][:12]}"
    return (
        f"{fingerprint['dataset']}, {fingerprint['bytes']} bytes, info sha256 {fingerprint['dataset_info_sha256'][:12]}"
    )


def _report_unconverged(values: dict[str, np.ndarray], first_step: int) -> bool:
    """Warn (once: the caller stops asking) when a Sinkhorn coupling of these steps did not
    converge, naming the first such step, its epsilon and the fix; whether it warned."""
    converged = values.get("sinkhorn_converged")
    if converged is None or np.all(converged >= 1.0):
        return False
    at = int(np.argmax(converged < 1.0))
    eps, iterations = float(values["sinkhorn_epsilon"][at]), int(values["sinkhorn_iterations"][at])
    with tqdm.external_write_mode(file=sys.stderr):  # a line of its own, not glued to the progress bar
        _warn_unconverged(first_step + at + 1, eps, iterations)
    return True


def _warn_unconverged(step: int, eps: float, iterations: int) -> None:
    warnings.warn(
        f"Sinkhorn did not converge at step {step} (epsilon = {eps:.3g}, {iterations} "
        "iterations): the coupling's plan is off its marginals, and a small epsilon makes every step "
        "slow. Raise --config.sigma (SB-CFM's epsilon is 2 sigma^2; its default sigma is 1). "
        "metrics.jsonl logs sinkhorn_converged (the fraction of solves that converged) and "
        "sinkhorn_iterations; this is reported once.",
        RuntimeWarning,
        stacklevel=3,  # the driver's line
    )


def _check_finite(values: np.ndarray, first_step: int, checkpoints: Checkpoints) -> None:
    """Stop at a NaN/Inf loss, naming its step and the last good checkpoint, which is kept."""
    bad = ~np.isfinite(values)
    if bad.any():
        at = first_step + int(np.argmax(bad)) + 1
        checkpoints.wait()
        kept = checkpoints.steps()
        last = (
            f"the last good checkpoint is step {kept[-1]} in {checkpoints.directory}"
            if kept
            else "no checkpoint was written"
        )
        raise FloatingPointError(
            f"The loss is {values[bad][0]} at step {at}: training stopped; {last}. "
            "Lower the learning rate or check the data."
        )


class _Pacer:
    """How many steps the next part of a call runs, so that one part takes about `max_s`
    seconds at most (a stop is honoured between parts). The first part of a run is one step,
    which measures the step; 0 never cuts a call."""

    def __init__(self, max_s: float):
        self.max_s, self.per_step = max_s, None

    def count(self, left: int) -> int:
        if self.max_s <= 0:
            return left
        if self.per_step is None:
            return 1
        return max(1, min(left, int(self.max_s / max(self.per_step, 1e-9))))

    def measured(self, seconds: float, count: int) -> None:
        self.per_step = seconds / count


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True) -> TrainState:
    """Train into a new workdir, or resume the run in it from its last intact checkpoint; returns the final state.

    The run holds the workdir's lock (`fm_jax.train.lock`) and writes nothing there before
    every check has passed and the state is built. A checkpoint is written every
    `config.checkpoint_every` steps, at the end, and when SIGTERM or SIGINT arrives (then
    `Interrupted` is raised): all processes agree, after each part of a call, whether any of
    them was asked to stop, and a call is cut into parts of about `config.max_call_s` seconds,
    so a stop is saved within that plus one step, whatever `steps_per_call` is. The same
    command resumes a killed run and ends with the same parameters and the same logged
    losses, bit for bit, as a run never interrupted. A damaged checkpoint is moved aside and
    the one before used (`fm_jax.train.checkpoints`); data that changed under the same name
    is refused. At the end, `summary.json` holds the compile time, the loop's wall time
    (`train_s`), the part of it spent handing checkpoints over and waiting for the last one
    (`checkpoint_s`), the part spent evaluating (`eval_s`, every `config.eval_every` steps),
    and the throughput of the steps themselves, `steps / (train_s - checkpoint_s - eval_s)`.

    Fields the config leaves unset take the method's defaults (`fm_jax.train.spec.resolve_defaults`;
    one line on stderr names them), and `config.json` records the values used. A resumed run
    says so on stderr ("resuming from step N of M (checkpoint ...)"), and a Sinkhorn coupling
    that does not converge is reported once, as a `RuntimeWarning` naming the step, epsilon
    and the fix.
    """
    distributed.initialize(**config.distributed)
    config, defaults = resolve_defaults(config)  # what the run records: the values it trains with
    spec = check_config(config)
    workdir = pathlib.Path(workdir).absolute()
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a directory: pass a directory (nothing was changed).")
    config = with_absolute_files(config)
    primary = distributed.is_primary()
    fingerprints = spec.data.fingerprints()
    with workdir_lock(workdir, primary):
        # Another config is named before a finished run is: a rerun with another method says so.
        _check_same_run(config, fingerprints, workdir)
        _check_not_finished(spec.loop.num_steps, workdir)
        engine = build_engine(spec)
        checkpoints = Checkpoints(workdir, keep=spec.loop.keep_checkpoints, primary=primary)
        try:
            return _run(config, spec, workdir, engine, checkpoints, fingerprints, primary, progress, defaults)
        finally:  # a checkpoint still being written is finished, whatever stopped the run
            checkpoints.wait()
            checkpoints.close()


def _say(text: str) -> None:
    """One line to stderr that does not break a progress bar."""
    tqdm.write(text, file=sys.stderr)


def _window(restored) -> dict[str, list[np.ndarray]]:
    """The per-step metrics of the log window a checkpoint cut ({} for a fresh run); a
    checkpoint written before metrics were logged holds the losses alone."""
    if restored is None:
        return {}
    log = restored.log
    saved = log["metrics"] if "metrics" in log else {"loss": log.get("losses", [])}
    return {name: [np.asarray(values, np.float32)] for name, values in saved.items()}


def _run(
    config: ml_collections.ConfigDict,
    spec: RunSpec,
    workdir: pathlib.Path,
    engine: Engine,
    checkpoints: Checkpoints,
    fingerprints: dict,
    primary: bool,
    progress: bool,
    defaults: dict | None = None,
) -> TrainState:
    restored = checkpoints.restore_latest(engine.state, jax.tree.map(lambda x: x.sharding, engine.state))
    state, start_step = (engine.state, 0) if restored is None else restored[:2]
    if start_step >= spec.loop.num_steps:
        raise ValueError(
            f"{workdir} already holds a trained model (step {start_step}): pass a new --workdir, "
            "or a larger --config.num_steps to train on (nothing was changed)."
        )
    if primary and defaults:
        values = ", ".join(f"{field} = {value}" for field, value in defaults.items())
        flags = " ".join(f"--config.{field}" for field in defaults)
        _say(f"{spec.method.name}'s defaults: {values} (set {flags} to change)")
    if primary and restored is not None:
        _say(
            f"resuming from step {start_step} of {spec.loop.num_steps} "
            f"(checkpoint {checkpoints.directory / str(start_step)})"
        )
    k, data_key = spec.engine.steps_per_call, engine.data_key
    first = start_step - start_step % k  # a stop may have cut a call: resume inside it
    # The metrics of the log window the checkpoint cut, so the window's means do not depend on the cut.
    window = _window(restored)
    if restored is not None:
        engine.batches.restore(restored.data, start_step)
    if primary:  # the run starts: its config, data fingerprints and log are written from here on
        files.write_text(workdir / "config.json", config.to_json(indent=1))
        files.write_text(workdir / DATA_FINGERPRINTS, json.dumps(fingerprints, indent=1))
        MetricsLog.truncate(workdir / "metrics.jsonl", start_step)
    batches = engine.batches(data_key, first)
    began = time.perf_counter()
    steps = engine.steps.compile(state, batches)  # compiled once, ahead of the loop
    compile_s = time.perf_counter() - began

    log, stop, pacer = MetricsLog(workdir) if primary else None, [], _Pacer(spec.loop.max_call_s)
    evaluate: PeriodicEval | None = None  # built at the first evaluation (an image run reads its held-out split)
    aside, evaluating = [0.0], [0.0]  # seconds in checkpoint writes and in evaluations, kept out of the steps/s
    unconverged_reported = False
    bar = tqdm(
        total=spec.loop.num_steps,
        initial=start_step,
        disable=not (progress and primary),
        unit="step",
        dynamic_ncols=True,
    )
    step, pace, began = start_step, pacer.count(k), time.perf_counter()
    try:
        with _signals_caught(stop):
            while step < spec.loop.num_steps:  # one part of a call at a time, its metrics fetched
                count = min(pace, first + k - step)
                dispatched = time.perf_counter()
                state, values = steps(state, batches, step - first, count)
                if step + count == first + k and first + k < spec.loop.num_steps:
                    batches = engine.batches(data_key, first + k)  # prepared while the devices run
                # At most one call in flight: with several multi-device calls queued, XLA:CPU can
                # starve a collective's rendezvous of threads (an all-reduce aborts after 40 s).
                values = {
                    name: np.asarray(v)[step - first : step - first + count]
                    for name, v in jax.device_get(values).items()
                }
                pacer.measured(time.perf_counter() - dispatched, count)
                _check_finite(values["loss"], step, checkpoints)
                if primary and not unconverged_reported:
                    unconverged_reported = _report_unconverged(values, step)
                for name, v in values.items():
                    window.setdefault(name, []).append(v)
                step += count
                bar.update(count)
                # Every process stops at the same step, and runs parts of the length process 0 measured.
                stopping, pace = distributed.agree(bool(stop), pacer.count(k))
                if step == first + k:
                    first += k
                log_now = step % spec.loop.log_every == 0 or step == spec.loop.num_steps
                eval_now = spec.loop.eval_at(step, k)
                save_now = (
                    step == spec.loop.num_steps
                    or stopping
                    or (spec.loop.checkpoint_every and step % spec.loop.checkpoint_every == 0)
                )
                scalars: dict[str, float] = {}
                if log_now:
                    rate = (step - start_step) / (time.perf_counter() - began - aside[0])
                    means = {name: float(np.mean(np.concatenate(v))) for name, v in window.items()}
                    window = {}
                    bar.set_postfix(
                        loss=f"{means['loss']:.4f}",
                        steps_per_s=f"{rate:.0f}",
                        examples_per_s=f"{rate * spec.engine.batch_size:.0f}",
                    )
                    scalars |= means | {
                        "lr": learning_rate_at(spec.optimizer, step - 1),
                        "steps_per_s": rate,
                        "examples_per_s": rate * spec.engine.batch_size,
                    }
                if eval_now:
                    with _timed(aside), _timed(evaluating):
                        evaluate = evaluate or PeriodicEval(spec, engine.apply, engine.mesh)
                        found, grid = evaluate(state.ema_params if spec.engine.ema_decay > 0 else state.params)
                    scalars |= found
                    if log and grid is not None:
                        log.image("eval/samples", grid, step)
                if log and scalars:
                    log.write(step, scalars)
                if save_now:
                    cut = {name: [float(x) for x in np.concatenate(v)] for name, v in window.items()}
                    with _timed(aside):
                        checkpoints.save(state, step, engine.batches.position(step), {"metrics": cut} if cut else {})
                if stopping or step == spec.loop.num_steps:
                    with _timed(aside):  # the last save is finished while a signal is still only a request
                        checkpoints.wait()
                if stopping and step < spec.loop.num_steps:
                    raise Interrupted(
                        f"{stop[0] if stop else 'A stop of another process'} at step {step}: the state is saved in "
                        f"{checkpoints.directory}; run the same command to resume."
                    )
    finally:
        bar.close()
        if log:
            log.close()
        with _timed(aside):
            checkpoints.wait()
    seconds = time.perf_counter() - began
    stepping = seconds - aside[0]
    summary = {
        "steps": spec.loop.num_steps - start_step,
        "devices": int(engine.mesh.devices.size),
        "compile_s": compile_s,
        "train_s": seconds,
        "checkpoint_s": aside[0] - evaluating[0],
        "eval_s": evaluating[0],
        "steps_per_s": (spec.loop.num_steps - start_step) / stepping,
        "examples_per_s": (spec.loop.num_steps - start_step) * spec.engine.batch_size / stepping,
    }
    if primary:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return state
