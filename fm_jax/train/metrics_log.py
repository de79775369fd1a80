"""Where a run's scalars go, and the evaluation a run makes while it trains.

`MetricsLog` writes `WORKDIR/metrics.jsonl` (one JSON object per line) and TensorBoard event
files under `WORKDIR/tensorboard/` with tensorboardX (no TensorFlow needed); view them with
`tensorboard --logdir WORKDIR/tensorboard`. A resumed run first drops the JSON lines past its
checkpoint (`truncate`), so each step is logged once; TensorBoard keeps the newest point of a
step when event files overlap.

Every `log_every` steps a line holds the means over the steps since the last line of what the
train step returns (`fm_jax.train.step.make_train_step`: "loss", "grad_norm", the loss's own
metrics such as fastode's "mse" and "kl", SB-CFM's "sinkhorn_converged" (the fraction of
Sinkhorn solves that converged), "sinkhorn_epsilon" and "sinkhorn_iterations"), the learning rate "lr" of the
last update, and "steps_per_s", "examples_per_s". Every `eval_every` steps `PeriodicEval`
adds "eval/w2" (density runs: exact W2 between `EVAL_POINTS` samples and as many held-out
target points) or "eval/fd_pixel" (image runs: the pixel-space Fréchet distance of
`EVAL_IMAGES` samples to as many held-out images of the evaluation split, and an 8 x 8 grid
of the first 64 samples as the TensorBoard image "eval/samples", enlarged to about 512
pixels a side). Samples start from
held-out noise (`fm_jax.train.held_out`), are integrated with `EVAL_SOLVER` and use the
parameters `fm-jax sample` reads by default: the EMA where the run keeps one.
"""

from __future__ import annotations

import json
import pathlib
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tensorboardX import SummaryWriter

from fm_jax import files, metrics, solvers
from fm_jax.solvers import SolverSpec
from fm_jax.train.held_out import NOISE, TARGET, held_out_key
from fm_jax.train.sharding import replicated
from fm_jax.train.state import model_method

if TYPE_CHECKING:
    from fm_jax.train.spec import RunSpec

__all__ = ["EVAL_IMAGES", "EVAL_POINTS", "EVAL_SOLVER", "MetricsLog", "PeriodicEval"]

EVAL_POINTS = 1000  # density runs: samples and held-out target points of "eval/w2"
EVAL_IMAGES = 256  # image runs: samples and held-out images of "eval/fd_pixel"
EVAL_SOLVER = SolverSpec("euler", 20)  # a fixed cost per evaluation, whatever the network has learnt
GRID = 8  # the sample grid is GRID x GRID images
GRID_PIXELS = 512  # enlarged by a whole factor to about this many pixels a side (8x8 digits: 7x)


class MetricsLog:
    """`MetricsLog(workdir)`; `write(step, {"loss": ..., ...})`; `image(tag, pixels, step)`; `close()`."""

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
            files.write_text(path, "".join(line + "\n" for line in lines))  # a kill never leaves it half written

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step} | scalars) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """A uint8 (H, W, C) image into TensorBoard (`fm_jax.plots.image_grid` builds a grid)."""
        self.tensorboard.add_image(tag, pixels, step, dataformats="HWC")
        self.tensorboard.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()


class PeriodicEval:
    """`PeriodicEval(spec, apply, mesh)(params) -> (scalars, grid or None)`: the evaluation
    scalars of a run's current parameters (see the module docstring), sampled in one jitted
    call compiled on the first evaluation; every process runs it (the samples come back
    replicated), process 0 logs."""

    def __init__(self, spec: RunSpec, apply: Any, mesh: Mesh):
        self.image = spec.data.image is not None
        flow = spec.method.model == "flow"
        shape = spec.data.shape
        num = EVAL_IMAGES if self.image else EVAL_POINTS
        if self.image:
            from fm_jax.data import images

            d = spec.data.image
            real, _ = images.load_split(d.name, d.dir, d.eval_split)
            num = min(num, len(real))
            # As training saw them: in [-1, 1], dequantized if training was.
            x = images.preprocess(held_out_key(2, NOISE), jnp.asarray(real[:num]), dequantize=d.dequantize)
            self.reference = np.asarray(x)
            draw_x0 = lambda key: jax.random.normal(key, (num, *shape))
        else:
            source, target = spec.data.densities()
            self.reference = np.asarray(target.sample(held_out_key(0, TARGET), num))
            draw_x0 = lambda key: source.sample(key, num)
        classes = spec.data.num_classes
        labels = jnp.arange(num) % classes if classes else None  # classes in turn, as `fm-jax sample`
        sample_flow = model_method(spec.model, "sample") if flow else None

        def sample(params):
            key = held_out_key(0, NOISE)
            if sample_flow is not None:
                return sample_flow(params, key, num)
            vf = solvers.velocity_field(apply, params, cond=labels)
            return solvers.sample(vf, draw_x0(key), EVAL_SOLVER).x

        self._sample = jax.jit(sample, out_shardings=replicated(mesh))

    def __call__(self, params: Any) -> tuple[dict[str, float], np.ndarray | None]:
        x1 = np.asarray(jax.device_get(self._sample(params)), np.float64)
        if not self.image:
            return {"eval/w2": metrics.w2(x1, self.reference) if np.isfinite(x1).all() else float("nan")}, None
        from fm_jax import fid
        from fm_jax.data import images
        from fm_jax.plots import image_grid

        x1 = np.clip(x1, -1.0, 1.0)
        fd = float(fid.pixel_frechet_distance(x1, self.reference))
        grid = image_grid(images.to_unit(x1[: GRID * GRID]), GRID)
        scale = max(1, GRID_PIXELS // max(grid.shape[:2]))  # small images enlarged, each pixel a block
        return {"eval/fd_pixel": fd}, np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
