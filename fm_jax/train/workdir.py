"""Reading a run back from its workdir: `load_run` gives the config, network and the parameters
to sample with (the EMA or the raw weights); `describe` says what a workdir holds without
loading a network."""

from __future__ import annotations

import json
import pathlib
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections

from fm_jax.train.checkpoints import CHECKPOINTS, Checkpoints
from fm_jax.train.spec import RunSpec
from fm_jax.train.state import init_state

__all__ = ["EMA_WARN_WEIGHT", "PARAMS", "Run", "describe", "load_run"]

PARAMS = ("ema", "raw")  # which weights a run is read with
# An EMA that still holds more of its initial (random) weights than this samples near noise.
EMA_WARN_WEIGHT = 0.5


class Run(NamedTuple):
    """A trained run: its saved config and the spec resolved from it, `apply(params, t, x, cond)`
    (a flow's `log_prob(params, x)`), the params, which weights they are (`"ema"` or `"raw"`)
    and the step."""

    config: ml_collections.ConfigDict
    spec: RunSpec
    apply: Callable
    params: Any
    step: int
    params_kind: str = "raw"


def load_run(workdir: str | pathlib.Path, params: str = "ema") -> Run:
    """The latest readable checkpoint of a workdir, on this process's first device.

    `params="ema"` reads the EMA of the weights where the run kept one (`ema_decay > 0`) and the
    raw weights otherwise; `"raw"` always the raw ones. An EMA that still holds more than
    `EMA_WARN_WEIGHT` of the initial weights (a short run, a slow decay) warns: its samples are
    close to the untrained network's.
    """
    from fm_jax.train.step import ema_initial_weight

    if params not in PARAMS:
        raise ValueError(f"params must be one of {list(PARAMS)}, got {params!r}.")
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
    kind = "ema" if params == "ema" and spec.engine.ema_decay > 0 else "raw"
    if kind == "ema" and (initial := ema_initial_weight(spec.engine.ema_decay, step)) > EMA_WARN_WEIGHT:
        warnings.warn(
            f"{workdir}: after {step} steps the EMA (decay {spec.engine.ema_decay:g}) still holds "
            f"{initial:.0%} of the initial random weights, so its samples are close to the untrained "
            "network's: read the raw weights (--params raw), or train longer or with a smaller "
            "--config.ema_decay.",
            stacklevel=2,
        )
    return Run(
        config=config,
        spec=spec,
        apply=apply,
        params=state.ema_params if kind == "ema" else state.params,
        step=step,
        params_kind=kind,
    )


def _source_name(config: ml_collections.ConfigDict) -> str | None:
    """The config's source in words (a discrete flow's: "mask tokens"); as saved when the method is unknown."""
    from fm_jax.train.methods import METHODS

    method = METHODS.get(config.get("method", ""))
    return config.get("source") if method is None else method.source_name(config.get("source"))


def _last_json_line(path: pathlib.Path) -> dict | None:
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines and lines[-1].strip() else None


def describe(workdir: str | pathlib.Path) -> dict:
    """What a workdir holds, read from its files (no network is built): the method and data,
    steps done of the configured ones, the checkpoints, the last logged metrics, the summary
    of the last training, and the samples, evaluations and likelihoods written."""
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file():
        raise ValueError(f"{workdir} is not a run's workdir (no config.json): `fm-jax train --workdir` writes one.")
    config = json.loads((workdir / "config.json").read_text())
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        steps = checkpoints.steps()
    finally:
        checkpoints.close()
    outputs = sorted(
        p.name
        for p in workdir.iterdir()
        if p.name.startswith(("samples_", "density")) or p.name in ("eval.json", "nll.json")
    )
    summary = workdir / "summary.json"
    return {
        "workdir": str(workdir),
        "method": config.get("method"),
        "source": _source_name(config),
        "target": config.get("target"),
        "conditional": bool(config.get("conditional", False)),
        "num_steps": config.get("num_steps"),
        "checkpoints": steps,
        "step": max(steps, default=0),
        "ema_decay": config.get("ema_decay"),
        "last_metrics": _last_json_line(workdir / "metrics.jsonl"),
        "summary": json.loads(summary.read_text()) if summary.is_file() else None,
        "outputs": outputs,
    }
