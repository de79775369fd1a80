"""Reading a finished run back from its workdir: config, network and the parameters to sample with."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections

from fm_jax.train.checkpoints import CHECKPOINTS, Checkpoints
from fm_jax.train.spec import RunSpec
from fm_jax.train.state import init_state

__all__ = ["Run", "load_run"]


class Run(NamedTuple):
    """A trained run: its saved config and the spec resolved from it, `apply(params, t, x, cond)`
    (a flow's `log_prob(params, x)`), the params (the EMA when the run kept one) and the step."""

    config: ml_collections.ConfigDict
    spec: RunSpec
    apply: Callable
    params: Any
    step: int


def load_run(workdir: str | pathlib.Path) -> Run:
    """The latest readable checkpoint of a workdir, on this process's first device."""
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file() or not (workdir / CHECKPOINTS).is_dir():
        raise ValueError(
            f"{workdir} holds no trained model (no config.json and checkpoints/): run `fm-jax train` first."
        )
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    spec = RunSpec.from_config(config, teacher=False)
    apply, _, state = init_state(spec)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = Checkpoints(workdir, read_only=True).restore_latest(state, jax.tree.map(lambda _: device, state))
    if restored is None:
        raise ValueError(f"{workdir} holds no readable checkpoint: run `fm-jax train` (it resumes where it can).")
    state, step = restored.state, restored.step
    params = state.ema_params if spec.engine.ema_decay > 0 else state.params
    return Run(config=config, spec=spec, apply=apply, params=params, step=step)
