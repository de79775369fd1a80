"""Reading a finished run back from its workdir: config, network and the parameters to sample with."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import ml_collections

from fm_jax.train.checkpoints import CHECKPOINTS, Checkpoints
from fm_jax.train.state import init_state

__all__ = ["Run", "load_run"]


class Run(NamedTuple):
    """A trained run: its config, `apply(params, t, x, cond)`, and params (the EMA when the run kept one)."""

    config: ml_collections.ConfigDict
    apply: Callable
    params: Any
    step: int


def load_run(workdir: str | pathlib.Path) -> Run:
    """The latest readable checkpoint of a workdir, on this process's first device."""
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file() or not (workdir / CHECKPOINTS).is_dir():
        raise ValueError(f"{workdir} holds no trained model (no config.json and checkpoints/): run `fm-jax train` first.")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    apply, _, state = init_state(config)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = Checkpoints(workdir, read_only=True).restore_latest(state, jax.tree.map(lambda _: device, state))
    if restored is None:
        raise ValueError(f"{workdir} holds no readable checkpoint: run `fm-jax train` (it resumes where it can).")
    state, step = restored.state, restored.step
    return Run(config=config, apply=apply, params=state.ema_params if config.ema_decay > 0 else state.params, step=step)
