"""The train state and what builds it from a config: network, optimizer, step-0 state.

The network is `config.model.kind`: "mlp" (the default; `fm_jax.models.MLP` in the
dimension of the densities) or "unet" (`fm_jax.models.unet_preset(config.model.preset)` on
the image shape of a `tfds:NAME` target, class-conditional when `config.conditional`).
The optimizer is Adam or AdamW with an optional linear warmup (`config.warmup_steps`), an
optional linear decay to 0 at `num_steps` (`config.lr_decay = "polynomial"`, the Flow
Matching paper's CIFAR-10 schedule) and gradient clipping by global norm (`config.grad_clip`).

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
from fm_jax.models import MLP, functional, unet

__all__ = ["MODELS", "TrainState", "build_model", "build_optimizer", "checkpoint_tree", "image_info", "init_state", "num_classes",
           "unet_kwargs", "uses_dropout"]


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    key: jax.Array


MODELS = ("mlp", "unet")
LR_DECAYS = ("constant", "polynomial")


def image_info(config: ml_collections.ConfigDict):
    """The `ImageInfo` of an image target, preparing an offline dataset (digits, mnist5k) on first use."""
    from fm_jax.data import images

    name, directory = data.image_name(config.target), config.data.dir or None
    return images.prepare(name, directory) if name in images.OFFLINE else images.info(name, directory)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Classes the network is conditioned on: the dataset's when `config.conditional`, else 0."""
    return image_info(config).num_classes if config.get("conditional", False) else 0


def unet_kwargs(config: ml_collections.ConfigDict) -> dict:
    """The U-Net's settings: the preset's, with `config.model.dropout` where given."""
    if config.model.preset not in unet.PRESETS:
        raise ValueError(f"Unknown config.model.preset {config.model.preset!r}; choose one of {sorted(unet.PRESETS)}.")
    return unet.PRESETS[config.model.preset] | ({"dropout": config.model.dropout} if "dropout" in config.model else {})


def uses_dropout(config: ml_collections.ConfigDict) -> bool:
    """Whether the network trains with dropout (a U-Net with dropout > 0): the step then passes it a key."""
    return config.model.get("kind", "mlp") == "unet" and unet_kwargs(config)["dropout"] > 0


def build_model(config: ml_collections.ConfigDict, seed: int = 0):
    """(apply, params) of the config's network: an MLP in the densities' dimension, or a U-Net on the images' shape."""
    kind = config.model.get("kind", "mlp")
    if kind not in MODELS:
        raise ValueError(f"Unknown config.model.kind {kind!r}; choose one of {MODELS}.")
    if kind == "unet":
        if not data.is_image_spec(config.target):
            raise ValueError(f"The U-Net is for image targets (tfds:NAME); the target is {config.target!r}: use model.kind=mlp.")
        model = unet.UNet(image_info(config).shape, num_classes=num_classes(config), **unet_kwargs(config),
                          rngs=nnx.Rngs(seed))
        return functional(model)
    if data.is_image_spec(config.target):
        raise ValueError(f"The target {config.target!r} is an image dataset: use --config.model.kind=unet.")
    dim = data.densities(config.source, config.target)[0].dim
    model = MLP(dim, config.model.width, config.model.depth, config.model.activation, rngs=nnx.Rngs(seed))
    return functional(model)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam(W) at `config.learning_rate`, after a linear warmup and with global-norm clipping where configured."""
    warmup, clip, decay = config.get("warmup_steps", 0), config.get("grad_clip", 0.0), config.get("lr_decay", "constant")
    if decay not in LR_DECAYS:
        raise ValueError(f"Unknown config.lr_decay {decay!r}; choose one of {LR_DECAYS}.")
    rate = config.learning_rate
    if decay == "polynomial":
        rate = optax.polynomial_schedule(rate, 0.0, power=1.0, transition_steps=max(config.num_steps - warmup, 1))
    if warmup:
        after = rate if callable(rate) else optax.constant_schedule(rate)
        rate = optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup), after], [warmup])
    if config.optimizer == "adamw":
        optimizer = optax.adamw(rate, weight_decay=config.weight_decay)
    else:
        optimizer = optax.adam(rate)
    return optax.chain(optax.clip_by_global_norm(clip), optimizer) if clip else optimizer


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
