"""Training: the method table, configs and the run spec, the train state, the sharded step,
checkpoints and the driver loop."""

from fm_jax.train.configs import apply_overrides, load_config
from fm_jax.train.loop import Interrupted, train
from fm_jax.train.methods import METHODS, LossSpec, Method, build_loss
from fm_jax.train.spec import RunSpec
from fm_jax.train.state import TrainState
from fm_jax.train.workdir import Run, load_run

__all__ = [
    "METHODS",
    "Interrupted",
    "LossSpec",
    "Method",
    "Run",
    "RunSpec",
    "TrainState",
    "apply_overrides",
    "build_loss",
    "load_config",
    "load_run",
    "train",
]
