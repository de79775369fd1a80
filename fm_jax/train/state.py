"""The train state and what builds it from a config: network, optimizer, step-0 state.

The network is `config.model.kind`: "mlp" (the default; `fm_jax.models.MLP` in the
dimension of the densities) or "unet" (`fm_jax.models.unet_preset(config.model.preset)` on
the image shape of a `tfds:NAME` target, class-conditional when `config.conditional`). The
"fastode" method pairs it with its encoder (`fm_jax.models.CoupledField`: an MLP
`GaussianEncoder`, or an `ImageEncoder` of preset `config.encoder.preset`); the "flow"
method trains a normalizing flow (`fm_jax.models.Flow` of `config.flow`) instead.
The optimizer is Adam or AdamW with an optional linear warmup (`config.warmup_steps`), an
optional linear decay to 0 at `num_steps` (`config.lr_decay = "polynomial"`, the Flow
Matching paper's CIFAR-10 schedule) and gradient clipping by global norm (`config.grad_clip`).

`TrainState` is the whole of a run's mutable state, one pytree: the step, the parameters,
the optimizer state, the EMA of the parameters (left at the initial parameters when
`ema_decay = 0`: a run without EMA samples with its parameters) and the run's RNG key. Every random draw of
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
from fm_jax.models import MLP, CoupledField, GaussianEncoder, functional, unet
from fm_jax.models.encoders import ImageEncoder
from fm_jax.models.flows import flow_from_config

__all__ = ["MODELS", "TrainState", "build_model", "build_module", "build_optimizer", "checkpoint_tree", "data_shape",
           "image_info", "init_state", "model_method", "num_classes", "unet_kwargs", "uses_dropout"]


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
    return config.method != "flow" and config.model.get("kind", "mlp") == "unet" and unet_kwargs(config)["dropout"] > 0


def data_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The shape of one example: (H, W, C) of an image dataset, (d,) of the densities."""
    if data.is_image_spec(config.target):
        return tuple(image_info(config).shape)
    return (data.densities(config.source, config.target)[0].dim,)


def flow_settings(config: ml_collections.ConfigDict) -> dict:
    """`Flow` keyword arguments of `config.flow` (its training noise is the loss's)."""
    return {k: v for k, v in config.flow.to_dict().items() if k != "noise"}


def build_module(config: ml_collections.ConfigDict, seed: int = 0) -> nnx.Module:
    """The NNX module of a config: the velocity network (with its encoder for fastode), or a flow."""
    kind = config.model.get("kind", "mlp")
    if kind not in MODELS:
        raise ValueError(f"Unknown config.model.kind {kind!r}; choose one of {MODELS}.")
    image = data.is_image_spec(config.target)
    shape = data_shape(config)
    if config.method == "flow":
        return flow_from_config(shape, flow_settings(config), seed)
    rngs = nnx.Rngs(seed)
    if kind == "unet":
        if not image:
            raise ValueError(f"The U-Net is for image targets (tfds:NAME); the target is {config.target!r}: use model.kind=mlp.")
        field = unet.UNet(shape, num_classes=num_classes(config), **unet_kwargs(config), rngs=rngs)
    elif image:
        raise ValueError(f"The target {config.target!r} is an image dataset: use --config.model.kind=unet.")
    else:
        field = MLP(shape[0], config.model.width, config.model.depth, config.model.activation, rngs=rngs)
    if config.method != "fastode":
        return field
    if kind == "unet":
        encoder = ImageEncoder(shape, config.encoder.preset, num_classes(config), rngs=rngs)
    else:
        encoder = GaussianEncoder(shape[0], config.encoder.width, config.encoder.depth, config.model.activation, rngs=rngs)
    return CoupledField(field, encoder)


def build_model(config: ml_collections.ConfigDict, seed: int = 0):
    """(apply, params) of the config's module: the velocity field `apply(params, t, x, cond)`, or a flow's `log_prob(params, x)`."""
    return functional(build_module(config, seed), "log_prob" if config.method == "flow" else None)


def model_method(config: ml_collections.ConfigDict, name: str):
    """`fn(params, ...)`: method `name` of the config's module (an encoder's "encode", a flow's "forward" or
    "sample"), reading the params of `build_model` (no weights are built)."""
    return functional(nnx.eval_shape(lambda: build_module(config)), name)[0]


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
