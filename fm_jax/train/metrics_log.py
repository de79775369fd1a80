"""Where a run's scalars go: `WORKDIR/metrics.jsonl` (one JSON object per line) and TensorBoard
event files under `WORKDIR/tensorboard/`, written by tensorboardX (no TensorFlow needed).

A resumed run first drops the JSON lines past its checkpoint (`truncate`), so each step is
logged once; TensorBoard keeps the newest point of a step when event files overlap.
"""

from __future__ import annotations

import json
import os
import pathlib

from tensorboardX import SummaryWriter

__all__ = ["MetricsLog"]


class MetricsLog:
    """`MetricsLog(workdir)`; `write(step, {"loss": ..., ...})`; `close()`."""

    def __init__(self, workdir: str | pathlib.Path):
        workdir = pathlib.Path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.jsonl = open(self.path, "a")
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    @staticmethod
    def truncate(path: pathlib.Path, step: int) -> None:
        """Drop the lines past `step`, which a run resumed from `step` writes again."""
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            tmp = path.with_name(f".{path.name}.tmp")  # one rename: a kill never leaves the log half written
            tmp.write_text("".join(line + "\n" for line in lines))
            os.replace(tmp, path)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step} | scalars) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()
