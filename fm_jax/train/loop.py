"""The training driver: config checks, the host loop around the sharded step, logs, orbax save.

`train(config, workdir)` trains `config.method` from `config.source` to `config.target`
(densities of `fm_jax.data`: toy 2D densities or point files) with an MLP on a mesh of
`config.mesh.num_devices` devices (`fm_jax.train.step`), and leaves in `workdir`:
`config.json`, `metrics.jsonl` (one JSON line per `log_every` steps) and `checkpoint/` (the
final `TrainState`, orbax). Each call draws `steps_per_call` batches on the devices, already
split over the mesh, and runs as many optimizer steps in one jitted `lax.scan`, so that a
small model is not bound by Python dispatch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh
import orbax.checkpoint as ocp
from tqdm import tqdm

from fm_jax import data
from fm_jax.couplings import Independent
from fm_jax.data import points
from fm_jax.train import sharding
from fm_jax.train.batches import make_batches
from fm_jax.train.methods import build_loss
from fm_jax.train.state import TrainState, checkpoint_tree, init_state
from fm_jax.train.step import COUPLING_SCOPES, PRECISIONS, make_train_step

__all__ = ["Engine", "build_engine", "check_config", "coupling_group", "train", "with_absolute_files"]

CHECKPOINT = "checkpoint"


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every mistake that can be found before compiling, as one clear error."""
    data.densities(config.source, config.target)  # names, point files (shape, NaN) and dimensions
    build_loss(config.method, config.sigma, config.source, ot_solver=config.ot_solver)
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
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0 turns EMA off), got {config.ema_decay}.")
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


def coupling_group(config: ml_collections.ConfigDict, devices: int) -> int:
    """Examples per coupling group: `config.coupling_group`, or the per-device batch when 0."""
    return config.coupling_group or config.batch_size // devices


def with_absolute_files(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose point-file specs are absolute, so that the saved config works from any directory."""
    config = ml_collections.ConfigDict(config.to_dict())
    for field in ("source", "target"):
        if points.is_file_spec(config[field]):
            config[field] = points.FILE_PREFIX + str(points.file_path(config[field]))
    return config


class Engine(NamedTuple):
    """What a run needs on its devices: the step-0 state (placed), `batches(key, first_step)`,
    the jitted `steps(state, batches) -> (state, losses)`, the data key, and the mesh."""

    state: TrainState
    batches: Callable[[jax.Array, int], dict]
    steps: Callable[[TrainState, dict], tuple[TrainState, jax.Array]]
    data_key: jax.Array
    mesh: Mesh


def build_engine(config: ml_collections.ConfigDict) -> Engine:
    """The state, batch source and sharded step of a checked config, on `config.mesh.num_devices` devices."""
    mesh = sharding.make_mesh(config.mesh.num_devices)
    apply, optimizer, state = init_state(config)
    state_sharding = sharding.state_shardings(state, mesh, config.mesh.param_layout)
    state = jax.device_put(state, state_sharding)
    loss = build_loss(config.method, config.sigma, config.source, ot_solver=config.ot_solver)
    group = coupling_group(config, mesh.devices.size)
    # A host coupling pairs the batches before they reach the step (fm_jax.train.batches).
    batches = make_batches(config, mesh, loss.coupling, group if config.coupling_scope == "group" else config.batch_size)
    steps = make_train_step(
        dataclasses.replace(loss, coupling=Independent()) if loss.coupling.on_host else loss,
        apply,
        optimizer,
        mesh=mesh,
        state_sharding=state_sharding,
        ema_decay=config.ema_decay,
        coupling_scope=config.coupling_scope,
        coupling_group=group,
        precision=config.precision,
    )
    # The state's key, kept on the host too: drawing batches never waits for a step.
    return Engine(state, batches, steps, jax.random.key(config.seed), mesh)


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True) -> TrainState:
    """Train from scratch into an empty or new workdir; returns the final state."""
    check_config(config)
    workdir = pathlib.Path(workdir).absolute()
    if (workdir / CHECKPOINT).exists():
        raise ValueError(f"{workdir} already holds a trained model: pass a new --workdir (nothing was changed).")
    config = with_absolute_files(config)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=1))

    engine = build_engine(config)
    state, batches, steps, data_key = engine.state, engine.batches, engine.steps, engine.data_key

    bar = tqdm(total=config.num_steps, disable=not progress, unit="step", dynamic_ncols=True)
    began = start = time.perf_counter()
    timed_from, losses = 0, []
    with open(workdir / "metrics.jsonl", "a") as log:
        calls = config.num_steps // config.steps_per_call
        next_batches = batches(data_key, 0)
        for call in range(calls):
            first = call * config.steps_per_call  # counted on the host: no device sync per call
            state, values = steps(state, next_batches)
            if call + 1 < calls:  # prepared while the devices run this call
                next_batches = batches(data_key, first + config.steps_per_call)
            losses.append(values)
            step = first + config.steps_per_call
            bar.update(config.steps_per_call)
            if call == 0 and config.num_steps > step:
                # steps/s counts from the end of the first (compiling) call: one sync, once. On the
                # losses, not the state: blocking on a typed key array holds the GIL, which
                # deadlocks a host callback (the network simplex) still running in the call.
                values.block_until_ready()
                start, timed_from = time.perf_counter(), step
            if step % config.log_every == 0 or step == config.num_steps:
                mean = float(jnp.mean(jnp.concatenate(losses)))
                losses = []
                if not math.isfinite(mean):
                    raise FloatingPointError(f"The loss is {mean} at step {step}: lower the learning rate.")
                steps_done, since = (step - timed_from, start) if step > timed_from else (step, began)
                rate = steps_done / (time.perf_counter() - since)
                bar.set_postfix(loss=f"{mean:.4f}", steps_per_s=f"{rate:.0f}")
                log.write(json.dumps({"step": step, "loss": mean, "steps_per_s": rate}) + "\n")
                log.flush()
    bar.close()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(workdir / CHECKPOINT, jax.device_get(checkpoint_tree(state)))
    checkpointer.wait_until_finished()
    return state
