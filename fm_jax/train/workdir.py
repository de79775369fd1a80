"""Reading a finished run back from its workdir: config, network and the parameters to sample with."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, NamedTuple

import ml_collections
import orbax.checkpoint as ocp

from fm_jax.train.loop import CHECKPOINT
from fm_jax.train.state import checkpoint_tree, init_state

__all__ = ["Run", "load_run"]


class Run(NamedTuple):
    """A trained run: its config, `apply(params, t, x, cond)`, and params (the EMA when the run kept one)."""

    config: ml_collections.ConfigDict
    apply: Callable
    params: Any
    step: int


def load_run(workdir: str | pathlib.Path) -> Run:
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file() or not (workdir / CHECKPOINT).is_dir():
        raise ValueError(f"{workdir} holds no trained model (no config.json and checkpoint/): run `fm-jax train` first.")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    apply, _, state = init_state(config)
    # Restore onto the structure of a fresh state, so the parameter tree comes back typed.
    target = checkpoint_tree(state)
    restored = ocp.StandardCheckpointer().restore((workdir / CHECKPOINT).absolute(), target)
    chosen = restored["ema_params"] if config.ema_decay > 0 else restored["params"]
    return Run(config=config, apply=apply, params=chosen, step=int(restored["step"]))
