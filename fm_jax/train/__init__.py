"""Training: the method table, configs and the run spec, the train state, the sharded step,
checkpoints and the driver loop. Names load on first use (`fm_jax.lazy`): reading the method
table does not import orbax or the engine."""

from typing import TYPE_CHECKING

from fm_jax.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    names={
        "METHODS": "methods",
        "Interrupted": "loop",
        "LossSpec": "methods",
        "Method": "methods",
        "Run": "workdir",
        "RunSpec": "spec",
        "TrainState": "state",
        "apply_overrides": "configs",
        "build_loss": "methods",
        "load_config": "configs",
        "load_run": "workdir",
        "train": "loop",
    },
)

if TYPE_CHECKING:
    from fm_jax.train.configs import apply_overrides, load_config  # noqa: F401
    from fm_jax.train.loop import Interrupted, train  # noqa: F401
    from fm_jax.train.methods import METHODS, LossSpec, Method, build_loss  # noqa: F401
    from fm_jax.train.spec import RunSpec  # noqa: F401
    from fm_jax.train.state import TrainState  # noqa: F401
    from fm_jax.train.workdir import Run, load_run  # noqa: F401
