"""An ADM U-Net (Dhariwal & Nichol 2021) for image velocity fields v_theta(t, x[, label]).

The network of the Flow Matching paper (Lipman et al. 2023, App. E) and of torchcfm's CIFAR-10
runs (Tong et al. 2024), written here in Flax NNX, channels last (NHWC):

    emb = MLP(sinusoid(1000 t)) [+ label_table[label]]           (SiLU MLP to 4 * channels)
    h   = conv3x3(x)
    down: per level, `num_res_blocks` x [ResBlock, Attention if at an attention resolution],
          then a stride-2 conv (or a down ResBlock) except at the last level; every output is
          kept as a skip
    mid:  ResBlock, Attention, ResBlock
    up:   per level (reversed), `num_res_blocks + 1` x [concat(h, skip), ResBlock, Attention?],
          then nearest x2 + conv3x3 (or an up ResBlock) except at level 0
    out = conv3x3(SiLU(GroupNorm(h)))                                 (zero-initialized)

ResBlock (ADM): h = conv(SiLU(GN(x))); then either scale-shift norm
`h = SiLU(GN(h) * (1 + s) + b)` with (s, b) = Linear(SiLU(emb)) (`use_scale_shift_norm`), or
`h = SiLU(GN(h + Linear(SiLU(emb))))`; then dropout, a zero-initialized conv, and the skip
(identity, or a 1x1 conv when the width changes). Attention: GroupNorm, a linear qkv over the
H*W tokens, softmax(q k^T / sqrt(d)) v per head, a zero-initialized output projection, residual.
Because every residual branch and the output layer start at zero, the initial network is
exactly v = 0 (as ADM); the first gradient reaches only the output layer, the second also the
zero-initialized layers and the layers on the skip path, and from the third on every parameter.

Choices this module makes, and why:

- Time: t in [0, 1] is scaled by `TIME_SCALE = 1000` before the sinusoidal embedding
  (cos and sin of 1000 t * 10000^(-i/half)), so the frequencies span the range ADM's integer
  timesteps 0..999 saw. torchcfm feeds t in [0, 1] unscaled, which only uses frequencies <= 1;
  the choice changes no parameter count.
- Attention resolutions: a positive entry is the feature-map height at which attention runs
  (ADM/torchcfm's "16" at 32x32 means the 16x16 level); a negative entry indexes the levels
  from the bottom (-1 = the lowest resolution), so one preset fits several image sizes. An
  entry that names no level raises ValueError (ADM ignores it silently).
- GroupNorm: statistics and normalization in float32, result cast back to the input dtype
  (ADM's GroupNorm32); eps 1e-5 (PyTorch's). When a width is not divisible by `num_groups`,
  the largest divisor of the width not above `num_groups` is used instead.
- Initialization: kernels U(+-1/sqrt(fan_in)) (PyTorch's default, which ADM and torchcfm train
  with), biases zero, label table N(0, 1) (PyTorch's nn.Embedding); the zero-initialized layers
  above. Values are cut from fixed-size random blocks, so building a model compiles ~6 small
  programs instead of one per layer shape (see `_draw`).
- Convolutions (`Conv`): XLA's `conv_general_dilated`, NHWC, symmetric padding, with JAX's own
  derivatives in both modes (the likelihood's divergence takes forward-mode products through the
  network). A custom kernel gradient of one matmul per kernel tap trained the "small" preset
  1.45x faster on CPU, but a custom VJP has no forward mode, so it was dropped.
- Class labels: a table of `num_classes + 1` rows; row `num_classes` (`model.null_label`) is
  the null label of classifier-free guidance, used when `cond` is None. Out-of-range labels:
  `check_labels` (host side) raises; `__call__` checks concrete labels eagerly; inside `jit`
  (values unknown at trace time) an out-of-range label gives NaN outputs rather than a silently
  clamped row.
- bf16: with bf16 params and inputs (`fm_jax.train.step.mixed_precision`) the convolutions,
  matmuls and activations run in bf16; the time embedding's sinusoid, GroupNorm statistics and
  the attention softmax run in float32. The output has the dtype of x. Keep t in float32 if
  you can: a bf16 t near 1 is off by up to 2^-9, i.e. ~2 units of 1000 t, which scrambles the
  highest sinusoid frequencies (measured on the tiny preset: bf16 t alone moves the output by
  ~7 %, bf16 params and x with a float32 t by ~2 %).

Dropout and `fm_jax.models.functional`: dropout needs a fresh key per step. Holding
`nnx.Rngs` in the module does not work with `functional`: `nnx.split` then puts the RNG key
and its uint32 counter into `params`, so `jax.grad(loss)(params)` fails ("grad requires real-
or complex-valued inputs ... got uint32") and optax would see them too; and under `jit` the
counter update made inside `apply` is never returned, so every step would draw the same
masks. So the
key is explicit: `model(t, x, cond, dropout_key=key)` applies dropout (each ResBlock folds its
index into the key); without a key, or with `dropout=0`, the network is deterministic and
dropout costs nothing. `params` then holds only float arrays, and a train step passes a
per-step key through a closure, e.g. `lambda p, t, x, c: model_apply(p, t, x, c,
dropout_key=k)` where `model_apply` merges `graphdef` with `p` (see the tests).

Presets (`PRESETS`, a `fm_jax.registry.Registry` of UNet keyword arguments, and
`unet_preset`): "fm_cifar10" (Lipman et al. 2023, App. E Table 3), "torchcfm_cifar10"
(torchcfm's examples/images/cifar10/train_cifar10.py), and two CPU sizes, "tiny" (tests) and
"small" (8x8 digits, 28x28 MNIST). Their parameter counts, against the published ones where
there are any, are pinned in tests/test_unet.py and listed in the README.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fm_jax.registry import Registry

__all__ = [
    "PRESETS",
    "TIME_SCALE",
    "UNet",
    "check_labels",
    "count_params",
    "timestep_embedding",
    "unet_preset",
]

TIME_SCALE = 1000.0  # t in [0, 1] -> ADM's timestep range before the sinusoidal embedding
_EPS = 1e-5
_BLOCKS = (1 << 12, 1 << 16, 1 << 20)  # sizes of the random blocks initializers draw


@functools.partial(jax.jit, static_argnums=1)
def _uniform_block(key: jax.Array, size: int) -> jax.Array:
    return jax.random.uniform(key, (size,), jnp.float32, -1.0, 1.0)


@functools.partial(jax.jit, static_argnums=1)
def _normal_block(key: jax.Array, size: int) -> jax.Array:
    return jax.random.normal(key, (size,), jnp.float32)


def _draw(block_fn, key: jax.Array, shape: tuple[int, ...], scale: float, dtype) -> jax.Array:
    """`scale * block_fn` values of `shape`, cut from fixed-size random blocks (fold_in(key, i)).

    Eagerly, an initializer of a new shape would compile its own random-number program (~50 of
    them for the tiny U-Net, up to a second each on a busy 2-core CPU); blocks of three fixed
    sizes compile once, and the cutting and scaling run in NumPy. Traced (`nnx.eval_shape`,
    `nnx.jit`), the same blocks are cut with jnp, so both paths give the same values for one key.
    """
    n = math.prod(shape)
    size = next((b for b in _BLOCKS if b >= n), _BLOCKS[-1])
    blocks = [block_fn(jax.random.fold_in(key, i), size) for i in range(-(-n // size))]
    if isinstance(key, jax.core.Tracer):
        return (jnp.concatenate(blocks)[:n].reshape(shape) * np.float32(scale)).astype(dtype)
    values = np.concatenate([np.asarray(b) for b in blocks])[:n].reshape(shape) * np.float32(scale)
    return jnp.asarray(values.astype(jnp.dtype(dtype)))


def _init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """PyTorch's default weight init (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in))."""
    return _draw(_uniform_block, key, shape, 1.0 / math.sqrt(math.prod(shape[:-1])), dtype)


def _normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """N(0, 1), PyTorch's nn.Embedding init."""
    return _draw(_normal_block, key, shape, 1.0, dtype)


def _zeros(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return jnp.asarray(np.zeros(shape, jnp.dtype(dtype)))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[cos(TIME_SCALE t w_i), sin(TIME_SCALE t w_i)], w_i = max_period^(-i/half), float32, (batch, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (TIME_SCALE * t.astype(jnp.float32))[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def check_labels(labels: Any, num_classes: int) -> np.ndarray:
    """Host-side check that integer labels lie in [0, num_classes] (num_classes = the null label)."""
    if num_classes <= 0:
        raise ValueError("A class label was passed to an unconditional UNet (num_classes=0); pass cond=None.")
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"Class labels must be integers, got dtype {arr.dtype}.")
    bad = arr[(arr < 0) | (arr > num_classes)]
    if bad.size:
        raise ValueError(
            f"Class label {int(bad.flat[0])} is out of range: labels must lie in [0, {num_classes}] "
            f"(0..{num_classes - 1} the classes, {num_classes} the null label); {bad.size} bad value(s)."
        )
    return arr


def _num_groups(channels: int, num_groups: int) -> int:
    """`num_groups` if it divides `channels`, else the largest divisor of `channels` below it."""
    return max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)


def _conv_xla(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class Conv(nnx.Module):
    """2D convolution, NHWC, symmetric zero padding k // 2 (PyTorch's padding=1 for 3x3; XLA's "SAME"
    would pad (0, 1) at stride 2); kernel (kh, kw, in, out) and bias, as `nnx.Conv` names them.

    Differentiable in both modes: the likelihood's divergence needs forward-mode products
    through the network. (A custom kernel gradient made of per-tap matmuls trained the "small"
    preset 1.45x faster on CPU, XLA:CPU's weight-gradient convolution being slow, but a
    custom VJP has no forward mode, so it was dropped.)
    """

    def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs, kernel: int = 3, stride: int = 1, zero: bool = False):
        self.stride = stride
        self.pad = kernel // 2
        self.kernel = nnx.Param((_zeros if zero else _init)(rngs.params(), (kernel, kernel, c_in, c_out)))
        self.bias = nnx.Param(_zeros(None, (c_out,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.kernel[...], self.bias[...]
        dtype = jnp.result_type(x.dtype, kernel.dtype)  # bf16 only when both are bf16
        return _conv_xla(x.astype(dtype), kernel.astype(dtype), self.stride, self.pad) + bias.astype(dtype)


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, zero: bool = False) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, kernel_init=_zeros if zero else _init, bias_init=_zeros, rngs=rngs)


def _upsample(h: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


def _avg_pool(h: jax.Array) -> jax.Array:
    b, hh, ww, c = h.shape
    return h.reshape(b, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))


class GroupNorm(nnx.Module):
    """GroupNorm over (H, W, channels of a group), statistics in float32, output in the input dtype."""

    def __init__(self, channels: int, num_groups: int):
        self.groups = _num_groups(channels, num_groups)
        self.scale = nnx.Param(jnp.asarray(np.ones((channels,), np.float32)))  # NumPy: no compile per shape
        self.bias = nnx.Param(jnp.asarray(np.zeros((channels,), np.float32)))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Per-channel sums over (H, W), then over the channels of each group: reductions XLA:CPU
        # runs ~4x faster (forward and backward) than one over a (B, H, W, G, C/G) reshape.
        b, hh, ww, c = x.shape
        per_group = c // self.groups
        n = hh * ww * per_group
        xf = x.astype(jnp.float32)
        mean = xf.sum(axis=(1, 2)).reshape(b, self.groups, per_group).sum(-1) / n
        d = xf - jnp.repeat(mean, per_group, axis=1)[:, None, None, :]
        var = jnp.square(d).sum(axis=(1, 2)).reshape(b, self.groups, per_group).sum(-1) / n
        inv = jnp.repeat(jax.lax.rsqrt(var + _EPS), per_group, axis=1) * self.scale[...].astype(jnp.float32)
        return (d * inv[:, None, None, :] + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class ResBlock(nnx.Module):
    """ADM residual block with the embedding injected by scale-shift norm or addition; optional up/down."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        emb_dim: int,
        *,
        index: int,
        dropout: float,
        scale_shift: bool,
        num_groups: int,
        resample: str | None = None,
        rngs: nnx.Rngs,
    ):
        self.index = index  # folded into the dropout key, so every block draws its own mask
        self.dropout = dropout
        self.scale_shift = scale_shift
        self.resample = resample
        self.norm_in = GroupNorm(c_in, num_groups)
        self.conv_in = Conv(c_in, c_out, rngs)
        self.emb = _linear(emb_dim, 2 * c_out if scale_shift else c_out, rngs)
        self.norm_out = GroupNorm(c_out, num_groups)
        self.conv_out = Conv(c_out, c_out, rngs, zero=True)
        self.skip = None if c_in == c_out else Conv(c_in, c_out, rngs, kernel=1)

    def __call__(self, x: jax.Array, emb: jax.Array, key: jax.Array | None) -> jax.Array:
        h = nnx.silu(self.norm_in(x))
        if self.resample == "up":
            h, x = _upsample(h), _upsample(x)
        elif self.resample == "down":
            h, x = _avg_pool(h), _avg_pool(x)
        h = self.conv_in(h)
        e = self.emb(emb)[:, None, None, :]  # emb arrives already through SiLU
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = nnx.silu(self.norm_out(h) * (1 + scale) + shift)
        else:
            h = nnx.silu(self.norm_out(h + e))
        if self.dropout > 0.0 and key is not None:
            keep = jax.random.bernoulli(jax.random.fold_in(key, self.index), 1.0 - self.dropout, h.shape)
            h = jnp.where(keep, h / jnp.asarray(1.0 - self.dropout, h.dtype), jnp.zeros((), h.dtype))
        h = self.conv_out(h)
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nnx.Module):
    """Multi-head self-attention over the H*W positions, residual, zero-initialized output projection."""

    def __init__(self, channels: int, heads: int, num_groups: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.norm = GroupNorm(channels, num_groups)
        self.qkv = _linear(channels, 3 * channels, rngs)
        self.proj = _linear(channels, channels, rngs, zero=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x).reshape(b, hh * ww, c)).reshape(b, hh * ww, 3, self.heads, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(d)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hh * ww, c)
        return x + self.proj(out).reshape(b, hh, ww, c)


class Downsample(nnx.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, rngs, stride=2)

    def __call__(self, x: jax.Array, emb: jax.Array, key: jax.Array | None) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, rngs)

    def __call__(self, x: jax.Array, emb: jax.Array, key: jax.Array | None) -> jax.Array:
        return self.conv(_upsample(x))


class Stage(nnx.Module):
    """One U-Net step: a ResBlock, then attention and an upsampler where the level has them."""

    def __init__(self, res: ResBlock, attn: Attention | None = None, up: nnx.Module | None = None):
        self.res = res
        self.attn = attn
        self.up = up

    def __call__(self, x: jax.Array, emb: jax.Array, key: jax.Array | None) -> jax.Array:
        h = self.res(x, emb, key)
        if self.attn is not None:
            h = self.attn(h)
        if self.up is not None:
            h = self.up(h, emb, key)
        return h


class UNet(nnx.Module):
    """`UNet(image_shape=(H, W, C), ...)`, called as `model(t, x, cond=None, *, dropout_key=None)`.

    x: (batch, H, W, C) float; t: scalar or (batch,) in [0, 1]; cond: int labels of shape
    (batch,) (or a scalar) when `num_classes > 0`, None otherwise (None = the null label for a
    conditional model). Returns the velocity, shaped and typed like x (with `out_channels` channels where given).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        num_heads: int = 4,
        num_head_channels: int = 64,
        dropout: float = 0.0,
        num_classes: int = 0,
        resblock_updown: bool = False,
        use_scale_shift_norm: bool = True,
        num_groups: int = 32,
        out_channels: int | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}.")
        if channels < 1 or num_res_blocks < 1 or not channel_mult or min(channel_mult) < 1:
            raise ValueError(
                f"channels, num_res_blocks and channel_mult must be positive, got {channels}, {num_res_blocks}, "
                f"{tuple(channel_mult)}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        if num_classes < 0 or num_groups < 1:
            raise ValueError(f"num_classes must be >= 0 and num_groups >= 1, got {num_classes}, {num_groups}.")
        height, width, in_ch = image_shape
        factor = 2 ** (len(channel_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"H and W must be divisible by 2**(len(channel_mult) - 1) = {factor} for channel_mult="
                f"{tuple(channel_mult)}; got image_shape {image_shape}."
            )
        resolutions = [height // 2**level for level in range(len(channel_mult))]
        attn_at = set()
        for r in attention_resolutions:
            if r < 0 and -r <= len(resolutions):
                attn_at.add(resolutions[r])
            elif r > 0 and r in resolutions:
                attn_at.add(r)
            else:
                raise ValueError(
                    f"attention resolution {r} names no level: the feature-map heights are {resolutions} "
                    f"(or use -1 .. -{len(resolutions)} to count levels from the lowest)."
                )

        def heads(ch: int) -> int:
            if num_head_channels == -1:
                if num_heads < 1 or ch % num_heads:
                    raise ValueError(f"num_heads={num_heads} must divide the {ch} channels of an attention block.")
                return num_heads
            if num_head_channels < 1 or ch % num_head_channels:
                raise ValueError(
                    f"num_head_channels={num_head_channels} must divide the {ch} channels of an attention block "
                    "(or pass num_head_channels=-1 to use num_heads)."
                )
            return ch // num_head_channels

        self.image_shape = image_shape
        self.channels = channels
        self.num_classes = num_classes
        self.null_label = num_classes if num_classes > 0 else None
        self.dropout = dropout
        emb_dim = 4 * channels
        self.time_in = _linear(channels, emb_dim, rngs)
        self.time_out = _linear(emb_dim, emb_dim, rngs)
        table = nnx.Embed(num_classes + 1, emb_dim, embedding_init=_normal, rngs=rngs) if num_classes > 0 else None
        self.label_emb = table

        index = itertools.count()  # ResBlock indices for the dropout key

        def res(c_in, c_out, resample=None):
            return ResBlock(
                c_in,
                c_out,
                emb_dim,
                index=next(index),
                dropout=dropout,
                scale_shift=use_scale_shift_norm,
                num_groups=num_groups,
                resample=resample,
                rngs=rngs,
            )

        ch = channel_mult[0] * channels
        self.conv_in = Conv(in_ch, ch, rngs)
        skips = [ch]
        down = []
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                block = res(ch, mult * channels)
                ch = mult * channels
                attn = Attention(ch, heads(ch), num_groups, rngs=rngs) if resolutions[level] in attn_at else None
                down.append(Stage(block, attn))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down.append(res(ch, ch, "down") if resblock_updown else Downsample(ch, rngs=rngs))
                skips.append(ch)
        self.down = nnx.List(down)
        self.mid = Stage(res(ch, ch), Attention(ch, heads(ch), num_groups, rngs=rngs))
        self.mid_out = res(ch, ch)
        up = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                block = res(ch + skips.pop(), mult * channels)
                ch = mult * channels
                attn = Attention(ch, heads(ch), num_groups, rngs=rngs) if resolutions[level] in attn_at else None
                sampler = None
                if level and i == num_res_blocks:
                    sampler = res(ch, ch, "up") if resblock_updown else Upsample(ch, rngs=rngs)
                up.append(Stage(block, attn, sampler))
        self.up = nnx.List(up)
        self.norm_out = GroupNorm(ch, num_groups)
        self.conv_out = Conv(ch, out_channels or in_ch, rngs, zero=True)  # C, or e.g. 2C for an encoder

    def check_labels(self, labels: Any) -> np.ndarray:
        """Host-side: raise ValueError unless `labels` are integers in [0, num_classes]."""
        return check_labels(labels, self.num_classes)

    def _inputs(self, t: Any, x: Any, cond: Any) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4 or tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"UNet(image_shape={self.image_shape}) takes x of shape "
                f"(batch, {', '.join(map(str, self.image_shape))}) (NHWC), got {shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"UNet takes floating-point x, got dtype {x.dtype}.")
        batch = shape[0]
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        elif t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},) to match x, got {t.shape}.")
        if self.num_classes == 0:
            if cond is not None:
                raise ValueError(
                    "A class label was passed to an unconditional UNet (num_classes=0); pass cond=None or build "
                    "the model with num_classes > 0."
                )
            return t, x, None
        if cond is None:
            return t, x, jnp.full((batch,), self.num_classes, jnp.int32)
        cond = jnp.asarray(cond) if not isinstance(cond, jax.core.Tracer) else cond
        if not jnp.issubdtype(cond.dtype, jnp.integer):
            raise ValueError(f"cond must hold integer class labels, got dtype {cond.dtype}.")
        if cond.ndim == 0:
            cond = jnp.broadcast_to(cond, (batch,))
        elif cond.shape != (batch,):
            raise ValueError(f"cond must be a scalar or have shape ({batch},) to match x, got {cond.shape}.")
        if not isinstance(cond, jax.core.Tracer):
            self.check_labels(cond)  # concrete labels (eager call): check before anything compiles
        return t, x, cond

    def __call__(
        self, t: jax.Array, x: jax.Array, cond: jax.Array | None = None, *, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        t, x, cond = self._inputs(t, x, cond)
        dtype = x.dtype
        emb = timestep_embedding(t, self.channels).astype(dtype)
        emb = self.time_out(nnx.silu(self.time_in(emb)))
        if cond is not None:
            # Negative labels would wrap around in `take`; send them past the table (NaN rows) instead.
            rows = jnp.where(cond < 0, self.num_classes + 1, cond)
            emb = emb + self.label_emb(rows).astype(emb.dtype)
        emb = nnx.silu(emb)  # every ResBlock applies SiLU then its own Linear: share the SiLU
        key = dropout_key if self.dropout > 0.0 else None
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb, key)
            skips.append(h)
        h = self.mid_out(self.mid(h, emb, key), emb, key)
        for block in self.up:
            h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb, key)
        out = self.conv_out(nnx.silu(self.norm_out(h)))
        return out.astype(dtype)


PRESETS: Registry[dict] = Registry(
    "config.model.preset",
    {
        # Lipman et al. 2023, App. E, Table 3 (CIFAR-10): channels 256, depth 2, channel multipliers
        # 1,2,2,2, heads 4, head channels 64, attention resolution 16, dropout 0.0. The table does not
        # give scale-shift norm or resblock up/down: guided-diffusion's defaults (True, False) are used.
        "fm_cifar10": dict(
            channels=256,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            num_heads=4,
            num_head_channels=64,
            dropout=0.0,
            resblock_updown=False,
            use_scale_shift_norm=True,
            num_groups=32,
        ),
        # torchcfm examples/images/cifar10/train_cifar10.py: UNetModelWrapper(dim=(3, 32, 32), num_res_blocks=2,
        # num_channels=128, channel_mult=[1, 2, 2, 2], num_heads=4, num_head_channels=64,
        # attention_resolutions="16", dropout=0.1); the wrapper's defaults use_scale_shift_norm=False,
        # resblock_updown=False.
        "torchcfm_cifar10": dict(
            channels=128,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            num_heads=4,
            num_head_channels=64,
            dropout=0.1,
            resblock_updown=False,
            use_scale_shift_norm=False,
            num_groups=32,
        ),
        # Tests: two levels, attention at the lower one, 8 groups (2 channels per group at 16 channels).
        "tiny": dict(
            channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(-1,),
            num_heads=2,
            num_head_channels=-1,
            dropout=0.0,
            resblock_updown=False,
            use_scale_shift_norm=True,
            num_groups=8,
        ),
        # CPU runs on 8x8 digits and 28x28 MNIST: the size of torchcfm's MNIST examples (num_channels=32,
        # num_res_blocks=1, and its channel_mult for 28x28, (1, 2, 2): 28 -> 14 -> 7, 8 -> 4 -> 2; a
        # fourth level would need H divisible by 8, which 28 is not). Attention at the lowest level
        # (7x7) rather than torchcfm's 28x28; 8 groups keep ADM's 4 channels per group at width 32.
        # About 0.36 GFLOP per 28x28 example forward, 1.1 GFLOP forward + backward.
        "small": dict(
            channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(-1,),
            num_heads=4,
            num_head_channels=-1,
            dropout=0.0,
            resblock_updown=False,
            use_scale_shift_norm=True,
            num_groups=8,
        ),
    },
)


def unet_preset(name: str, image_shape: tuple[int, int, int], num_classes: int = 0, *, rngs: nnx.Rngs) -> UNet:
    """The UNet of preset `name` for images of `image_shape` (H, W, C); an unknown name is a
    ValueError that lists the presets."""
    return UNet(image_shape, num_classes=num_classes, **PRESETS[name], rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Number of scalars in the model's `nnx.Param`s (works on `nnx.eval_shape` models too)."""
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))
