"""The single-process training driver: several optimizer steps per jitted call, logs, orbax save.

`train(config, workdir)` trains `config.method` from `config.source` to `config.target`
(densities of `fm_jax.data`: toy 2D densities or point files, drawn inside the step) with an MLP, and leaves in `workdir`:
`config.json`, `metrics.jsonl` (one JSON line per `log_every` steps) and `checkpoint/`
(the final `TrainState`, orbax). `steps_per_call` optimizer steps run inside one jitted
`lax.scan`, so that a small model is not bound by Python dispatch.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from fm_jax import data
from fm_jax.data import points
from fm_jax.models import MLP, functional
from fm_jax.train.methods import build_loss

__all__ = ["TrainState", "build_model", "build_optimizer", "check_config", "checkpoint_tree", "init_state", "train"]

CHECKPOINT = "checkpoint"


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    key: jax.Array


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


def with_absolute_files(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose point-file specs are absolute, so that the saved config works from any directory."""
    config = ml_collections.ConfigDict(config.to_dict())
    for field in ("source", "target"):
        if points.is_file_spec(config[field]):
            config[field] = points.FILE_PREFIX + str(points.file_path(config[field]))
    return config


def build_model(config: ml_collections.ConfigDict, seed: int = 0):
    """(apply, params) of the config's MLP, in the dimension of its densities."""
    dim = data.densities(config.source, config.target)[0].dim
    model = MLP(dim, config.model.width, config.model.depth, config.model.activation, rngs=nnx.Rngs(seed))
    return functional(model)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    if config.optimizer == "adamw":
        return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    return optax.adam(config.learning_rate)


def init_state(config: ml_collections.ConfigDict):
    """(apply, optimizer, the step-0 TrainState) of a config; also the structure a checkpoint restores onto."""
    apply, params = build_model(config, config.seed)
    optimizer = build_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=params,
        key=jax.random.key(config.seed),
    )
    return apply, optimizer, state


def checkpoint_tree(state: TrainState) -> dict:
    """The state as orbax saves it: a dict, the typed key as its raw key data."""
    return state._replace(key=jax.random.key_data(state.key))._asdict()


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True) -> TrainState:
    """Train from scratch into an empty or new workdir; returns the final state."""
    check_config(config)
    workdir = pathlib.Path(workdir).absolute()
    if (workdir / CHECKPOINT).exists():
        raise ValueError(f"{workdir} already holds a trained model: pass a new --workdir (nothing was changed).")
    config = with_absolute_files(config)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=1))

    apply, optimizer, state = init_state(config)
    loss = build_loss(config.method, config.sigma, config.source, ot_solver=config.ot_solver)
    source, target = (d.sample for d in data.densities(config.source, config.target))
    n = config.batch_size

    def one_step(state: TrainState, _):
        key = jax.random.fold_in(state.key, state.step)
        k_x0, k_x1, k_loss = jax.random.split(key, 3)
        batch = {"x1": target(k_x1, n)}
        if config.source != "normal":
            batch["x0"] = source(k_x0, n)
        value, grads = jax.value_and_grad(lambda p: loss(apply, p, k_loss, batch)[0])(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = optax.incremental_update(params, state.ema_params, 1.0 - config.ema_decay)
        return TrainState(state.step + 1, params, opt_state, ema, state.key), value

    @jax.jit
    def run(state: TrainState):
        state, values = jax.lax.scan(one_step, state, length=config.steps_per_call)
        return state, jnp.mean(values)

    bar = tqdm(total=config.num_steps, disable=not progress, unit="step", dynamic_ncols=True)
    began = start = time.perf_counter()
    timed_from, losses = 0, []
    with open(workdir / "metrics.jsonl", "a") as log:
        for call in range(1, config.num_steps // config.steps_per_call + 1):
            state, value = run(state)
            losses.append(value)
            bar.update(config.steps_per_call)
            step = call * config.steps_per_call  # counted on the host: no device sync per call
            if call == 1 and config.num_steps > step:
                # steps/s counts from the end of the first (compiling) call: one sync, once.
                jax.block_until_ready(state)
                start, timed_from = time.perf_counter(), step
            if step % config.log_every == 0 or step == config.num_steps:
                mean = float(jnp.mean(jnp.stack(losses)))
                losses = []
                if not math.isfinite(mean):
                    raise FloatingPointError(f"The loss is {mean} at step {step}: lower the learning rate.")
                steps, since = (step - timed_from, start) if step > timed_from else (step, began)
                rate = steps / (time.perf_counter() - since)
                bar.set_postfix(loss=f"{mean:.4f}", steps_per_s=f"{rate:.0f}")
                log.write(json.dumps({"step": step, "loss": mean, "steps_per_s": rate}) + "\n")
                log.flush()
    bar.close()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(workdir / CHECKPOINT, jax.device_get(checkpoint_tree(state)))
    checkpointer.wait_until_finished()
    return state
