"""A bidirectional, time-conditioned sequence transformer: tokens in, logits of p(x1 | x_t) out.

The network of discrete flow matching (`fm_jax.discrete`): `model(t, x_t, cond=None) ->
logits (batch, L, vocab_size)`, for int tokens x_t (batch, L) over `num_states` values (the
data tokens, plus the mask with the masked source). The blocks are DiT's (Peebles & Xie
2023) over tokens, the conditioning of the discrete-flow transformers of Gat et al. 2024 and
of masked diffusion (Sahoo et al. 2024):

    h_0 = E_token[x_t] + E_pos                                   (learned, (L, width))
    c = MLP(sinusoid(1000 t)) [+ E_class[label]]                 (SiLU MLP, width)
    h += gate_a * Attn(LN(h) * (1 + scale_a) + shift_a)          (non-causal, every token sees every token)
    h += gate_m * MLP(LN(h) * (1 + scale_m) + shift_m)           (GELU, 4 x width)
    logits = Linear(LN(h) * (1 + scale) + shift)

with (shift, scale, gate) from a linear map of SiLU(c) per block: adaLN-Zero, the modulations
and the output layer zero-initialized, so that every block starts as the identity and the
first prediction is the uniform posterior (a loss of log K). Class labels 0..C-1 and the null
label C (classifier-free guidance) index `E_class` when `num_classes` > 0. Attention is
`nnx.MultiHeadAttention`; every matrix has its width axes in the last two dimensions, so the
engine's "fsdp" layout (`fm_jax.train.sharding`) splits them over the devices.

Presets (`PRESETS`): "tiny" (tests), "small" (CPU runs on digits and MNIST), "base" (a GPU
size: DiT-S's width 384, 12 blocks, 6 heads).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fm_jax.models.unet import check_labels, timestep_embedding
from fm_jax.registry import Registry

__all__ = ["PRESETS", "Transformer", "transformer_preset"]

_ZERO = nnx.initializers.zeros_init()


class _Block(nnx.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, use_scale=False, use_bias=False, epsilon=1e-6, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, use_scale=False, use_bias=False, epsilon=1e-6, rngs=rngs)
        self.mlp_in = nnx.Linear(width, mlp_ratio * width, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_ratio * width, width, rngs=rngs)
        self.modulation = nnx.Linear(width, 6 * width, kernel_init=_ZERO, bias_init=_ZERO, rngs=rngs)

    def __call__(self, h: jax.Array, c: jax.Array) -> jax.Array:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(self.modulation(nnx.silu(c))[:, None], 6, -1)
        a = self.norm1(h) * (1 + scale_a) + shift_a
        h = h + gate_a * self.attn(a, a, a)
        m = self.norm2(h) * (1 + scale_m) + shift_m
        return h + gate_m * self.mlp_out(nnx.gelu(self.mlp_in(m)))


class Transformer(nnx.Module):
    """`Transformer(num_states, vocab_size, length, width, depth, heads, num_classes=0, rngs=...)`,
    called as `model(t, x_t, cond=None) -> logits (batch, length, vocab_size)`."""

    def __init__(
        self,
        num_states: int,
        vocab_size: int,
        length: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        num_classes: int = 0,
        *,
        rngs: nnx.Rngs,
    ):
        for name, value in (("num_states", num_states), ("vocab_size", vocab_size), ("length", length)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}.")
        self.num_states, self.vocab_size, self.length, self.width = num_states, vocab_size, length, width
        self.num_classes = num_classes
        self.embed = nnx.Embed(num_states, width, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, width)))
        self.time_in = nnx.Linear(width, width, rngs=rngs)
        self.time_out = nnx.Linear(width, width, rngs=rngs)
        self.label = nnx.Embed(num_classes + 1, width, rngs=rngs) if num_classes > 0 else None
        self.blocks = nnx.List([_Block(width, heads, mlp_ratio, rngs=rngs) for _ in range(depth)])
        self.norm_out = nnx.LayerNorm(width, use_scale=False, use_bias=False, epsilon=1e-6, rngs=rngs)
        self.final_modulation = nnx.Linear(width, 2 * width, kernel_init=_ZERO, bias_init=_ZERO, rngs=rngs)
        self.out = nnx.Linear(width, vocab_size, kernel_init=_ZERO, bias_init=_ZERO, rngs=rngs)

    def __call__(self, t: jax.Array, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.length or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"Transformer(length={self.length}) takes int tokens of shape (batch, {self.length}), "
                f"got {x.dtype} {x.shape}."
            )
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        c = self.time_out(nnx.silu(self.time_in(timestep_embedding(t, self.width))))
        if cond is not None:
            if self.label is None:
                raise ValueError("A class label was passed to an unconditional Transformer (num_classes=0).")
            if not isinstance(cond, jax.core.Tracer):
                check_labels(cond, self.num_classes)
            c = c + self.label(cond)
        h = self.embed(x) + self.position[...]
        for block in self.blocks:
            h = block(h, c)
        shift, scale = jnp.split(self.final_modulation(nnx.silu(c))[:, None], 2, -1)
        return self.out(self.norm_out(h) * (1 + scale) + shift)


PRESETS: Registry[dict] = Registry(
    "config.model.preset",
    {
        "tiny": dict(width=32, depth=2, heads=2),
        "small": dict(width=128, depth=4, heads=4),
        "base": dict(width=384, depth=12, heads=6),
    },
)


def transformer_preset(
    name: str, num_states: int, vocab_size: int, length: int, num_classes: int = 0, *, rngs: nnx.Rngs
) -> Transformer:
    """The Transformer of preset `name`; an unknown name is a ValueError that lists the presets."""
    return Transformer(num_states, vocab_size, length, num_classes=num_classes, **PRESETS[name], rngs=rngs)
