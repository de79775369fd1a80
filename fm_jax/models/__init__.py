"""Flax NNX networks and the bridge to the pure-functional losses and solvers.

`functional(model)` splits an NNX module into `(apply, params)` with
`apply(params, t, x, cond)`, the signature `fm_jax.losses` and `fm_jax.solvers` expect.
Keyword arguments go through to the model: the train step passes the U-Net's
`dropout_key=` (`fm_jax.train.step`); sampling and likelihoods pass none (no dropout).
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from fm_jax.models.mlp import MLP
from fm_jax.models.unet import UNet, unet_preset

__all__ = ["MLP", "UNet", "functional", "unet_preset"]


def functional(model: nnx.Module) -> tuple[Callable, Any]:
    """(apply, params) for an NNX model: `apply(params, t, x, cond, **kw) = model(t, x, cond, **kw)` with params swapped in."""
    graphdef, params = nnx.split(model)

    def apply(params, t, x, cond=None, **kwargs):
        return nnx.merge(graphdef, params)(t, x, cond, **kwargs)

    return apply, params
