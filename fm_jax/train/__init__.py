"""Training: methods by name, config handling and the single-process driver loop."""

from fm_jax.train.configs import apply_overrides, load_config
from fm_jax.train.loop import TrainState, train
from fm_jax.train.methods import METHODS, build_loss

__all__ = ["METHODS", "TrainState", "apply_overrides", "build_loss", "load_config", "train"]
