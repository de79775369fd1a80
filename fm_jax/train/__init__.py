"""Training: methods by name, config handling, the train state, the sharded step and the driver loop."""

from fm_jax.train.configs import apply_overrides, load_config
from fm_jax.train.loop import train
from fm_jax.train.state import TrainState
from fm_jax.train.methods import METHODS, build_loss

__all__ = ["METHODS", "TrainState", "apply_overrides", "build_loss", "load_config", "train"]
