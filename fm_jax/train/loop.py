"""The training driver: config checks, the host loop around the sharded step, logs, orbax save.

`train(config, workdir)` trains `config.method` from `config.source` to `config.target`
(densities of `fm_jax.data`: toy 2D densities, point files, or `tfds:NAME` image datasets)
with an MLP or a U-Net (`fm_jax.train.state`) on a mesh of
`config.mesh.num_devices` devices (`fm_jax.train.step`), and leaves in `workdir`:
`config.json`, `metrics.jsonl` (one JSON line per `log_every` steps) and `checkpoint/` (the
final `TrainState`, orbax). Each call draws `steps_per_call` batches on the devices, already
split over the mesh, and runs as many optimizer steps in one jitted loop, so that a small
model is not bound by Python dispatch; a call is run in parts of about `config.max_call_s`
seconds, between which a stop is honoured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import signal
import threading
import time
from typing import Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from fm_jax import data
from fm_jax.couplings import ExactOT, Independent
from fm_jax.data import points
from fm_jax.losses import CFMLoss
from fm_jax.train import distributed, sharding
from fm_jax.train.batches import Batches, make_batches
from fm_jax.train.checkpoints import CHECKPOINTS, Checkpoints
from fm_jax.train.lock import workdir_lock
from fm_jax.train.metrics_log import MetricsLog
from fm_jax.train.methods import TEACHER_METHODS, build_loss, check_method
from fm_jax.train.state import (TrainState, build_module, checkpoint_tree, image_info, init_state, model_method, num_classes,
                                uses_dropout)
from fm_jax.train.teachers import check_teacher, precompute_pairs, teacher_coupling
from fm_jax.train.step import COUPLING_SCOPES, PRECISIONS, TrainSteps, make_train_step

# Fields a resumed run may change: none changes the numbers of the steps.
RESUME_MAY_CHANGE = ("num_steps", "mesh", "distributed", "max_call_s", "checkpoint_every", "keep_checkpoints")
DATA_FINGERPRINTS = "data.json"  # what identifies the run's data (`fm_jax.data.fingerprint`)

__all__ = ["Engine", "Interrupted", "build_engine", "check_config", "coupling_group", "train", "with_absolute_files"]



def _check_images(config: ml_collections.ConfigDict) -> None:
    """An image target: a normal source, a U-Net, a prepared dataset, labels where conditioned."""
    if config.source != "normal":
        raise ValueError(f"Image targets are generated from the 'normal' source; got source {config.source!r}.")
    if "data" not in config:
        raise ValueError("An image target needs a config.data section; start from experiments/configs/images.py.")
    if config.model.get("kind", "mlp") != "unet" and config.method != "flow":
        raise ValueError(f"The target {config.target!r} is an image dataset: use --config.model.kind=unet.")
    info = image_info(config)  # prepared (or prepares an offline dataset), else says how
    if config.data.split not in info.splits:
        raise ValueError(f"{info.name} has no split {config.data.split!r}; its splits are {sorted(info.splits)}.")
    if config.get("conditional", False) and info.num_classes < 1:
        raise ValueError(f"config.conditional is set but {info.name} has no class labels: set --config.conditional=false.")
    if config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} does not split over {jax.process_count()} processes.")
    if jax.process_count() > 1 and config.method == "otcfm" and ExactOT(solver=config.ot_solver).on_host:
        raise ValueError(
            "A host OT solver couples the whole batch, which no one process holds when images are read per "
            "process: use --config.ot_solver=hungarian (solved on the devices) or --config.coupling_scope=group."
        )


def _label_dropout(config: ml_collections.ConfigDict) -> tuple[float, int | None]:
    """(label dropout, null label) of the loss: the null label is the network's extra class."""
    classes = num_classes(config)
    return (config.get("label_dropout", 0.0), classes) if classes else (0.0, None)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every mistake that can be found before compiling, as one clear error."""
    if data.is_image_spec(config.target):
        _check_images(config)
    else:
        data.densities(config.source, config.target)  # names, point files (shape, NaN) and dimensions
    check_method(config.method, config.source)
    if not (config.sigma >= 0 and math.isfinite(config.sigma)):
        raise ValueError(f"config.sigma must be >= 0 (the path's noise scale), got {config.sigma}.")
    if not config.get("max_call_s", 5.0) >= 0:
        raise ValueError(f"config.max_call_s must be >= 0 (0 never cuts a train call), got {config.max_call_s}.")
    nnx.eval_shape(lambda: build_module(config))  # the model's settings, checked without building weights
    if config.method in ("fastode", "flow", *TEACHER_METHODS):
        _check_learned_coupling(config)
    else:
        build_loss(config.method, config.sigma, config.source, ot_solver=config.ot_solver,
                   label_dropout=config.get("label_dropout", 0.0), null_label=0)
    if config.optimizer not in ("adam", "adamw"):
        raise ValueError(f"Unknown optimizer {config.optimizer!r}; choose 'adam' or 'adamw'.")
    for field in ("num_steps", "batch_size", "steps_per_call", "log_every"):
        if config[field] < 1:
            raise ValueError(f"config.{field} must be a positive integer, got {config[field]}.")
    if config.num_steps % config.steps_per_call or config.log_every % config.steps_per_call:
        raise ValueError(
            f"num_steps ({config.num_steps}) and log_every ({config.log_every}) must be multiples of "
            f"steps_per_call ({config.steps_per_call}): set --config.steps_per_call to a common divisor."
        )
    if config.checkpoint_every < 0 or config.checkpoint_every % config.steps_per_call:
        raise ValueError(
            f"checkpoint_every ({config.checkpoint_every}) must be a multiple of steps_per_call "
            f"({config.steps_per_call}), or 0 to checkpoint only at the end."
        )
    if config.keep_checkpoints < 1:
        raise ValueError(f"config.keep_checkpoints must be at least 1, got {config.keep_checkpoints}.")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0 turns EMA off), got {config.ema_decay}.")
    if config.get("warmup_steps", 0) < 0 or config.get("grad_clip", 0.0) < 0:
        raise ValueError("config.warmup_steps and config.grad_clip must be >= 0 (0 turns them off).")
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise ValueError(f"config.learning_rate must be positive, got {config.learning_rate}.")
    if config.precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {config.precision!r}; choose one of {PRECISIONS}.")
    if config.coupling_scope not in COUPLING_SCOPES:
        raise ValueError(f"Unknown coupling_scope {config.coupling_scope!r}; choose one of {COUPLING_SCOPES}.")
    if config.mesh.param_layout not in sharding.LAYOUTS:
        raise ValueError(f"Unknown mesh.param_layout {config.mesh.param_layout!r}; choose one of {sharding.LAYOUTS}.")
    devices = sharding.make_mesh(config.mesh.num_devices).devices.size
    if config.batch_size % devices:
        raise ValueError(
            f"batch_size {config.batch_size} does not split over {devices} devices: "
            f"use a multiple of {devices} or set --config.mesh.num_devices."
        )
    group = coupling_group(config, devices)
    if config.coupling_scope == "group" and (group < 1 or (config.batch_size // devices) % group):
        raise ValueError(
            f"coupling_group {config.coupling_group} does not divide the per-device batch "
            f"{config.batch_size // devices}: choose a divisor (0 couples each device's batch as one group)."
        )


def _check_learned_coupling(config: ml_collections.ConfigDict) -> None:
    """fastode's beta, a flow's settings and precision, a teacher run that fits."""
    if config.method == "fastode" and not config.beta > 0:
        raise ValueError(f"config.beta must be positive (the weight of fastode's KL term), got {config.beta}.")
    if config.method == "flow":
        if config.precision != "float32":
            raise ValueError("A normalizing flow trains in float32 (its log-determinant): set --config.precision=float32.")
        if config.get("conditional", False):
            raise ValueError("The normalizing flows here are unconditional: set --config.conditional=false.")
        if not config.flow.noise >= 0:
            raise ValueError(f"config.flow.noise must be >= 0, got {config.flow.noise}.")
        model_method(config, "forward")  # builds the flow abstractly: its fields, tokens and patches are checked
    check_teacher(config)
    if not 0.0 <= config.get("label_dropout", 0.0) < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1) (0 turns it off), got {config.label_dropout}.")


def coupling_group(config: ml_collections.ConfigDict, devices: int) -> int:
    """Examples per coupling group: `config.coupling_group`, or the per-device batch when 0."""
    return config.coupling_group or config.batch_size // devices


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
    the jitted `steps(state, batches) -> (state, losses)`, the data key, the mesh, the
    network's `apply(params, t, x, cond)` and the loss the step regresses (its coupling
    `Independent` where the batches arrive coupled from the host)."""

    state: TrainState
    batches: Batches
    steps: TrainSteps
    data_key: jax.Array
    mesh: Mesh
    apply: Callable
    loss: CFMLoss


def build_engine(config: ml_collections.ConfigDict) -> Engine:
    """The state, batch source and sharded step of a checked config, on `config.mesh.num_devices` devices."""
    mesh = sharding.make_mesh(config.mesh.num_devices)
    apply, optimizer, state = init_state(config)
    state_sharding = sharding.state_shardings(state, mesh, config.mesh.param_layout)
    state = sharding.place(state, state_sharding)
    dropout, null_label = _label_dropout(config)
    loss = build_loss(
        config.method, config.sigma, config.source, ot_solver=config.ot_solver, label_dropout=dropout,
        null_label=null_label, beta=config.get("beta", 1.0),
        encode=model_method(config, "encode") if config.method == "fastode" else None,
        teacher=teacher_coupling(config, mesh) if config.method in TEACHER_METHODS else None,
        flow_noise=config.flow.noise if config.method == "flow" else 0.0,
    )
    group = coupling_group(config, mesh.devices.size)
    pairs = None
    if config.method in TEACHER_METHODS and config.teacher.get("precompute", 0):
        pairs = precompute_pairs(config, loss.coupling, config.teacher.precompute)
        loss = dataclasses.replace(loss, coupling=Independent())  # the batches arrive paired
    # A host coupling pairs the batches before they reach the step (fm_jax.train.batches).
    batches = make_batches(config, mesh, loss.coupling, group if config.coupling_scope == "group" else config.batch_size,
                           labels=null_label is not None, pairs=pairs)
    loss = dataclasses.replace(loss, coupling=Independent()) if loss.coupling.on_host else loss
    steps = make_train_step(
        loss,
        apply,
        optimizer,
        mesh=mesh,
        state_sharding=state_sharding,
        ema_decay=config.ema_decay,
        coupling_scope=config.coupling_scope,
        coupling_group=group,
        precision=config.precision,
        dropout=uses_dropout(config),
    )
    # The state's key, kept on the host too: drawing batches never waits for a step.
    return Engine(state, batches, steps, jax.random.key(config.seed), mesh, apply, loss)


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


def _check_not_finished(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """A workdir whose newest intact checkpoint is at num_steps or later is never touched.
    (A damaged final checkpoint does not count: the run then resumes from the one before.)"""
    if (workdir / CHECKPOINTS).exists():
        checkpoints = Checkpoints(workdir, read_only=True)
        done = [s for s in checkpoints.steps() if s >= config.num_steps]
        saved = workdir / "config.json"
        like = lambda: checkpoint_tree(init_state(ml_collections.ConfigDict(json.loads(saved.read_text())))[2])
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
        differ = sorted(
            k for k in set(old) | set(new) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k)
        )
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
    return f"{fingerprint['dataset']}, {fingerprint['bytes']} bytes, info sha256 {fingerprint['dataset_info_sha256'][:12]}"


def _check_finite(values: np.ndarray, first_step: int, checkpoints: Checkpoints) -> None:
    """Stop at a NaN/Inf loss, naming its step and the last good checkpoint, which is kept."""
    bad = ~np.isfinite(values)
    if bad.any():
        at = first_step + int(np.argmax(bad)) + 1
        checkpoints.wait()
        kept = checkpoints.steps()
        last = f"the last good checkpoint is step {kept[-1]} in {checkpoints.directory}" if kept else "no checkpoint was written"
        raise FloatingPointError(
            f"The loss is {values[bad][0]} at step {at}: training stopped; {last}. "
            "Lower the learning rate or check the data."
        )


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Replace `path` by `text` in one rename, so a kill never leaves it half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    (`checkpoint_s`), and the throughput of the steps themselves, `steps / (train_s - checkpoint_s)`.
    """
    distributed.initialize(config)
    check_config(config)
    workdir = pathlib.Path(workdir).absolute()
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file, not a directory: pass a directory (nothing was changed).")
    config = with_absolute_files(config)
    primary = distributed.is_primary()
    data_dir = (config.data.dir or None) if "data" in config else None
    fingerprints = {field: data.fingerprint(config[field], data_dir) for field in ("source", "target")}
    with workdir_lock(workdir, primary):
        _check_not_finished(config, workdir)
        _check_same_run(config, fingerprints, workdir)
        engine = build_engine(config)
        checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints, primary=primary)
        try:
            return _run(config, workdir, engine, checkpoints, fingerprints, primary, progress)
        finally:  # a checkpoint still being written is finished, whatever stopped the run
            checkpoints.wait()
            checkpoints.close()


def _run(config, workdir, engine: Engine, checkpoints: Checkpoints, fingerprints: dict, primary: bool,
         progress: bool) -> TrainState:
    restored = checkpoints.restore_latest(engine.state, jax.tree.map(lambda x: x.sharding, engine.state))
    state, start_step = (engine.state, 0) if restored is None else restored[:2]
    if start_step >= config.num_steps:
        raise ValueError(
            f"{workdir} already holds a trained model (step {start_step}): pass a new --workdir, "
            "or a larger --config.num_steps to train on (nothing was changed)."
        )
    k, data_key = config.steps_per_call, engine.data_key
    first = start_step - start_step % k  # a stop may have cut a call: resume inside it
    # The losses of the log window the checkpoint cut, so the window's mean does not depend on the cut.
    losses = [np.asarray(restored.log.get("losses", []), np.float32)] if restored is not None else []
    if restored is not None:
        engine.batches.restore(restored.data, start_step)
    if primary:  # the run starts: its config, data fingerprints and log are written from here on
        _write_atomic(workdir / "config.json", config.to_json(indent=1))
        _write_atomic(workdir / DATA_FINGERPRINTS, json.dumps(fingerprints, indent=1))
        MetricsLog.truncate(workdir / "metrics.jsonl", start_step)
    batches = engine.batches(data_key, first)
    began = time.perf_counter()
    steps = engine.steps.compile(state, batches)  # compiled once, ahead of the loop
    compile_s = time.perf_counter() - began

    log, stop, pacer = MetricsLog(workdir) if primary else None, [], _Pacer(config.get("max_call_s", 5.0))
    saving = [0.0]  # seconds spent in checkpoint writes, kept out of the steps/s
    bar = tqdm(total=config.num_steps, initial=start_step, disable=not (progress and primary), unit="step",
               dynamic_ncols=True)
    step, pace, began = start_step, pacer.count(k), time.perf_counter()
    try:
        with _signals_caught(stop):
            while step < config.num_steps:  # one part of a call at a time, its losses fetched
                count = min(pace, first + k - step)
                dispatched = time.perf_counter()
                state, values = steps(state, batches, step - first, count)
                if step + count == first + k and first + k < config.num_steps:
                    batches = engine.batches(data_key, first + k)  # prepared while the devices run
                # At most one call in flight: with several multi-device calls queued, XLA:CPU can
                # starve a collective's rendezvous of threads (an all-reduce aborts after 40 s).
                values = np.asarray(jax.device_get(values))[step - first:step - first + count]
                pacer.measured(time.perf_counter() - dispatched, count)
                _check_finite(values, step, checkpoints)
                losses.append(values)
                step += count
                bar.update(count)
                # Every process stops at the same step, and runs parts of the length process 0 measured.
                stopping, pace = distributed.agree(bool(stop), pacer.count(k))
                if step == first + k:
                    first += k
                log_now = step % config.log_every == 0 or step == config.num_steps
                save_now = step == config.num_steps or stopping or (
                    config.checkpoint_every and step % config.checkpoint_every == 0
                )
                if log_now:
                    rate = (step - start_step) / (time.perf_counter() - began - saving[0])
                    mean = float(np.mean(np.concatenate(losses)))
                    losses = []
                    bar.set_postfix(loss=f"{mean:.4f}", steps_per_s=f"{rate:.0f}",
                                    examples_per_s=f"{rate * config.batch_size:.0f}")
                    if log:
                        log.write(step, {"loss": mean, "steps_per_s": rate, "examples_per_s": rate * config.batch_size})
                if save_now:
                    window = {"losses": [float(v) for v in np.concatenate(losses)]} if losses else {}
                    with _timed(saving):
                        checkpoints.save(state, step, engine.batches.position(step), window)
                if stopping or step == config.num_steps:
                    with _timed(saving):  # the last save is finished while a signal is still only a request
                        checkpoints.wait()
                if stopping and step < config.num_steps:
                    raise Interrupted(
                        f"{stop[0] if stop else 'A stop of another process'} at step {step}: the state is saved in "
                        f"{checkpoints.directory}; run the same command to resume."
                    )
    finally:
        bar.close()
        if log:
            log.close()
        with _timed(saving):
            checkpoints.wait()
    seconds = time.perf_counter() - began
    stepping = seconds - saving[0]
    summary = {
        "steps": config.num_steps - start_step, "devices": int(engine.mesh.devices.size), "compile_s": compile_s,
        "train_s": seconds, "checkpoint_s": saving[0], "steps_per_s": (config.num_steps - start_step) / stepping,
        "examples_per_s": (config.num_steps - start_step) * config.batch_size / stepping,
    }
    if primary:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return state
