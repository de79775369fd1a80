"""Flax NNX networks and the bridge to the pure-functional losses and solvers.

`functional(model)` splits an NNX module into `(apply, params)` with
`apply(params, t, x, cond)`, the signature `fm_jax.losses` and `fm_jax.solvers` expect;
`functional(model, "name")` does the same for another method (a flow's `log_prob`, an
encoder's `encode`): the params are the same pytree whichever method is called.
Keyword arguments go through to the model: the train step passes the U-Net's
`dropout_key=` (`fm_jax.train.step`); sampling and likelihoods pass none (no dropout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from fm_jax.models.encoders import CoupledField, GaussianEncoder
from fm_jax.models.flows import Flow
from fm_jax.models.mlp import MLP
from fm_jax.models.token_unet import TokenUNet
from fm_jax.models.transformer import Transformer, transformer_preset
from fm_jax.models.unet import UNet, unet_preset

__all__ = [
    "MLP",
    "CoupledField",
    "Flow",
    "GaussianEncoder",
    "TokenUNet",
    "Transformer",
    "UNet",
    "functional",
    "transformer_preset",
    "unet_preset",
]


def functional(model: nnx.Module, method: str | None = None) -> tuple[Callable, Any]:
    """(apply, params) for an NNX model: `apply(params, *args, **kw) = model(*args, **kw)` (or
    `model.method(*args, **kw)`) with params swapped in."""
    graphdef, params = nnx.split(model)

    def apply(params, *args, **kwargs):
        module = nnx.merge(graphdef, params)
        return (getattr(module, method) if method else module)(*args, **kwargs)

    return apply, params
