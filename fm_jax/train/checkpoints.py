"""Checkpoints of a run: orbax's CheckpointManager under `WORKDIR/checkpoints/<step>`.

Saves are asynchronous (the devices go on training while the state is written) and the
last `keep` are kept. A checkpoint holds the whole `TrainState` (step, params, optimizer
state, EMA, key) under `state/` and the data position under `data/` (JSON): for densities
sampled on the devices it is the step itself (the batches of step s are a pure function of
(key, s)); for image datasets it is the grain iterator's state at that step
(`fm_jax.train.batches`). Restoring places every array directly with the shardings of the
current mesh, so a run saved on 8 devices resumes on 1 or 4.

A checkpoint that cannot be read (a partial write, a corrupt file) is skipped with a
warning naming its step, and the one before it is used.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from fm_jax.train.state import TrainState, checkpoint_tree

__all__ = ["CHECKPOINTS", "Checkpoints"]

CHECKPOINTS = "checkpoints"


class Checkpoints:
    """`Checkpoints(workdir, keep=3)`: save(state, step, data), restore_latest(like, shardings), wait(), close()."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, read_only: bool = False):
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINTS
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, step: int, data: dict) -> None:
        """Start writing `state` and the data position `data` as checkpoint `step`; returns before the write ends."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(checkpoint_tree(state)), data=ocp.args.JsonSave(data))
        self.manager.save(step, args=args, force=True)

    def restore_latest(self, like: TrainState, shardings: Any) -> tuple[TrainState, int, dict] | None:
        """(state, step, data position) of the newest readable checkpoint, the state placed with
        `shardings` (a tree like `like`); None if none exists."""
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            checkpoint_tree(like),
            shardings._asdict(),
        )
        for step in reversed(self.steps()):
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
                restored = self.manager.restore(step, args=args)
            except Exception as err:  # orbax raises many types for a damaged checkpoint
                warnings.warn(
                    f"Checkpoint {self.directory / str(step)} cannot be read ({type(err).__name__}: {err}); "
                    "falling back to the one before it.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            state = TrainState(**restored["state"])
            return state._replace(key=jax.random.wrap_key_data(state.key)), step, dict(restored["data"])
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
