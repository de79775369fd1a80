"""A time-conditioned MLP for low-dimensional flows.

v_theta(t, x) = MLP([x, t]): the time is appended to the input as one more feature, then
`depth` hidden layers of `width` units with `activation`, then a linear layer back to the
data dimension. The defaults, 3 hidden layers of 64 SELU units, are the 2D network of the
OT-CFM experiments (Tong et al. 2024), so results compare at equal capacity.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from fm_jax.registry import Registry

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS: Registry[Callable[[jax.Array], jax.Array]] = Registry(
    "activation",
    {"selu": nnx.selu, "relu": nnx.relu, "gelu": nnx.gelu, "silu": nnx.silu, "tanh": jnp.tanh, "elu": nnx.elu},
)


class MLP(nnx.Module):
    """`MLP(dim, width=64, depth=3, activation="selu", rngs=nnx.Rngs(0))`, called as `model(t, x, cond=None)`."""

    def __init__(self, dim: int, width: int = 64, depth: int = 3, activation: str = "selu", *, rngs: nnx.Rngs):
        ACTIVATIONS[activation]  # a known name, or the error that lists them
        if dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"dim, width and depth must be positive, got {dim}, {width}, {depth}.")
        self.dim = dim
        self.activation = activation
        sizes = [dim + 1] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(width, dim, rngs=rngs)

    def __call__(self, t: jax.Array, x: jax.Array, cond=None) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP(dim={self.dim}) takes x of shape (batch, {self.dim}), got {x.shape}.")
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        h = jnp.concatenate([x, t[:, None]], axis=-1)
        act = ACTIVATIONS[self.activation]
        for layer in self.hidden:
            h = act(layer(h))
        return self.out(h)
