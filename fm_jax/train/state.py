"""The train state and what builds it from a config: network, optimizer, step-0 state.

The network is the run's `ModelSpec` (`fm_jax.train.spec`): "mlp" (`fm_jax.models.MLP` in
the dimension of the densities), "unet" (`fm_jax.models.unet.UNet` of a preset on the image
shape of a `tfds:NAME` target, class-conditional when the run is) or "flow" (a normalizing
flow, `fm_jax.models.Flow`). A method with a learned coupling ("fastode") pairs the field
with its encoder (`fm_jax.models.CoupledField`: an MLP `GaussianEncoder`, or an
`ImageEncoder` of a preset). The optimizer is the run's `OptimizerSpec`: Adam or AdamW with
an optional linear warmup, an optional linear decay to 0 at `num_steps` (the Flow Matching
paper's CIFAR-10 schedule) and gradient clipping by global norm.

`TrainState` is the whole of a run's mutable state, one pytree: the step, the parameters,
the optimizer state, the EMA of the parameters (left at the initial parameters when
`ema_decay = 0`: a run without EMA samples with its parameters) and the run's RNG key. Every random draw of
step s comes from `fold_in(key, s)`, so the state at a step fixes everything after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fm_jax.models import MLP, CoupledField, Flow, GaussianEncoder, Transformer, functional, unet
from fm_jax.models.encoders import ImageEncoder
from fm_jax.models.token_unet import TokenUNet
from fm_jax.registry import Registry

if TYPE_CHECKING:
    from fm_jax.train.spec import ModelSpec, OptimizerSpec, RunSpec

__all__ = [
    "LR_DECAYS",
    "NETWORKS",
    "OPTIMIZERS",
    "TrainState",
    "build_model",
    "build_module",
    "build_optimizer",
    "checkpoint_tree",
    "init_state",
    "learning_rate_at",
    "learning_rate_schedule",
    "model_method",
]


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    key: jax.Array


class _Network(NamedTuple):
    """How a `config.model.kind` builds its network and fastode's encoder (None: none) from a `ModelSpec`."""

    field: Callable[[ModelSpec, nnx.Rngs], nnx.Module]
    encoder: Callable[[ModelSpec, nnx.Rngs], nnx.Module] | None


NETWORKS: Registry[_Network] = Registry(
    "config.model.kind",
    {
        "mlp": _Network(
            lambda m, rngs: MLP(m.shape[0], m.width, m.depth, m.activation, rngs=rngs),
            lambda m, rngs: GaussianEncoder(
                m.shape[0], m.encoder["width"], m.encoder["depth"], m.activation, rngs=rngs
            ),
        ),
        "unet": _Network(  # a velocity field on images, or a discrete flow's posterior over their pixels
            lambda m, rngs: (
                TokenUNet(m.shape, m.num_states, m.vocab_size, m.num_classes, **m.unet, rngs=rngs)
                if m.vocab_size
                else unet.UNet(m.shape, num_classes=m.num_classes, **m.unet, rngs=rngs)
            ),
            lambda m, rngs: ImageEncoder(m.shape, m.encoder["preset"], m.num_classes, rngs=rngs),
        ),
        # A discrete flow's posterior network over the tokens (no encoder: no learned coupling).
        "transformer": _Network(
            lambda m, rngs: Transformer(
                m.num_states, m.vocab_size, m.shape[0], num_classes=m.num_classes, **m.transformer, rngs=rngs
            ),
            None,
        ),
    },
)
# Optimizers by `config.optimizer`: (learning rate or schedule, weight decay) -> optax transformation.
OPTIMIZERS: Registry[Callable[[Any, float], optax.GradientTransformation]] = Registry(
    "optimizer",
    {
        "adam": lambda rate, weight_decay: optax.adam(rate),
        "adamw": lambda rate, weight_decay: optax.adamw(rate, weight_decay=weight_decay),
    },
)
# Learning-rate schedules after the warmup by `config.lr_decay`: OptimizerSpec -> rate or schedule.
LR_DECAYS: Registry[Callable[[OptimizerSpec], Any]] = Registry(
    "config.lr_decay",
    {
        "constant": lambda spec: spec.learning_rate,
        "polynomial": lambda spec: optax.polynomial_schedule(
            spec.learning_rate, 0.0, power=1.0, transition_steps=max(spec.num_steps - spec.warmup_steps, 1)
        ),
    },
)


def build_module(model: ModelSpec, seed: int = 0) -> nnx.Module:
    """The NNX module of a model spec: the velocity network (with its encoder for fastode), or a flow."""
    rngs = nnx.Rngs(seed)
    if model.kind == "flow":
        return Flow(model.shape, **model.flow, rngs=rngs)
    network = NETWORKS[model.kind]
    field = network.field(model, rngs)
    return field if model.encoder is None else CoupledField(field, network.encoder(model, rngs))


def build_model(model: ModelSpec, seed: int = 0):
    """(apply, params) of the module: the velocity field `apply(params, t, x, cond)`, or a flow's `log_prob(params, x)`."""
    return functional(build_module(model, seed), "log_prob" if model.kind == "flow" else None)


def model_method(model: ModelSpec, name: str):
    """`fn(params, ...)`: method `name` of the module (an encoder's "encode", a flow's "forward" or
    "sample"), reading the params of `build_model` (no weights are built)."""
    return functional(nnx.eval_shape(lambda: build_module(model)), name)[0]


def learning_rate_schedule(spec: OptimizerSpec) -> float | optax.Schedule:
    """The spec's learning rate: a float, or an optax schedule of the update count (the linear
    warmup, then the decay of `lr_decay`)."""
    rate = LR_DECAYS[spec.lr_decay](spec)
    if spec.warmup_steps:
        after = rate if callable(rate) else optax.constant_schedule(rate)
        rate = optax.join_schedules(
            [optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps), after], [spec.warmup_steps]
        )
    return rate


def learning_rate_at(spec: OptimizerSpec, step: int) -> float:
    """The learning rate of the update made at step `step` (0 for the first one), as logged."""
    rate = learning_rate_schedule(spec)
    return float(rate(step)) if callable(rate) else float(rate)


def build_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """Adam(W) at the spec's learning rate, after a linear warmup and with global-norm clipping where set."""
    optimizer = OPTIMIZERS[spec.name](learning_rate_schedule(spec), spec.weight_decay)
    return optax.chain(optax.clip_by_global_norm(spec.grad_clip), optimizer) if spec.grad_clip else optimizer


def init_state(spec: RunSpec):
    """(apply, optimizer, the step-0 TrainState) of a run; also the structure a checkpoint restores onto."""
    apply, params = build_model(spec.model, spec.seed)
    optimizer = build_optimizer(spec.optimizer)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),  # its own buffers: the step donates the state
        key=jax.random.key(spec.seed),
    )
    return apply, optimizer, state


def checkpoint_tree(state: TrainState) -> dict:
    """The state as orbax saves it: a dict, the typed key as its raw key data."""
    return state._replace(key=jax.random.key_data(state.key))._asdict()
