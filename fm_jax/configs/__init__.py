"""The packaged configs: ml_collections `get_config()` files, each with its run command in its docstring.

`fm-jax train --config NAME` takes one by name (`fm_jax.train.load_config("toy2d")`); any
other `get_config()` file is given by its path (`--config my_configs/run.py`). Copy one to
start your own: `python -c "import fm_jax.configs as c; print(c.path('toy2d'))"` prints where
it lies.

- `toy2d`: OT-CFM from N(0, I) to two moons with torchcfm's 2D MLP; every method and density
  (the engine's sections: checkpoints, mesh, coupling scope, precision, distributed).
- `images`: flow matching on images with a U-Net, 8x8 digits by default (MNIST-5k or any
  prepared TFDS dataset), class-conditional with guidance on request.
- `cifar10_fm`: CIFAR-10 with the Flow Matching paper's recipe (Lipman et al. 2023).
- `cifar10_torchcfm`: CIFAR-10 with torchcfm's OT-CFM recipe (Tong et al. 2024).

This module imports nothing heavy: listing the configs does not start JAX.
"""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable

__all__ = ["names", "path"]


def names() -> list[str]:
    """The packaged configs' names, sorted: what `--config NAME` accepts."""
    files = importlib.resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".py")] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def path(name: str) -> Traversable:
    """The file of packaged config `name`; an unknown name is a ValueError listing the choices."""
    if name not in names():
        raise ValueError(
            f"Unknown packaged config {name!r}; the packaged configs are {names()}. "
            "Any other get_config() file is given by its path, e.g. --config ./my_config.py."
        )
    return importlib.resources.files(__name__) / f"{name}.py"
