"""The train state and what builds it from a config: network, optimizer, step-0 state.

`TrainState` is the whole of a run's mutable state, one pytree: the step, the parameters,
the optimizer state, the EMA of the parameters and the run's RNG key. Every random draw of
step s comes from `fold_in(key, s)`, so the state at a step fixes everything after it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fm_jax import data
from fm_jax.models import MLP, functional

__all__ = ["TrainState", "build_model", "build_optimizer", "checkpoint_tree", "init_state"]


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    key: jax.Array


def build_model(config: ml_collections.ConfigDict, seed: int = 0):
    """(apply, params) of the config's MLP, in the dimension of its densities."""
    dim = data.densities(config.source, config.target)[0].dim
    model = MLP(dim, config.model.width, config.model.depth, config.model.activation, rngs=nnx.Rngs(seed))
    return functional(model)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    if config.optimizer == "adamw":
        return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    return optax.adam(config.learning_rate)


def init_state(config: ml_collections.ConfigDict):
    """(apply, optimizer, the step-0 TrainState) of a config; also the structure a checkpoint restores onto."""
    apply, params = build_model(config, config.seed)
    optimizer = build_optimizer(config)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),  # its own buffers: the step donates the state
        key=jax.random.key(config.seed),
    )
    return apply, optimizer, state


def checkpoint_tree(state: TrainState) -> dict:
    """The state as orbax saves it: a dict, the typed key as its raw key data."""
    return state._replace(key=jax.random.key_data(state.key))._asdict()
