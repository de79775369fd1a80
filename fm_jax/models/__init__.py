"""Flax NNX networks and the bridge to the pure-functional losses and solvers.

`functional(model)` splits an NNX module into `(apply, params)` with
`apply(params, t, x, cond)`, the signature `fm_jax.losses` and `fm_jax.solvers` expect.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from fm_jax.models.mlp import MLP

__all__ = ["MLP", "functional"]


def functional(model: nnx.Module) -> tuple[Callable, Any]:
    """(apply, params) for an NNX model: `apply(params, t, x, cond) = model(t, x, cond)` with params swapped in."""
    graphdef, params = nnx.split(model)

    def apply(params, t, x, cond=None):
        return nnx.merge(graphdef, params)(t, x, cond)

    return apply, params
