"""User-supplied point clouds as densities: the empirical measure of an (N, d) array saved in
a .npy or .npz file, sampled uniformly with replacement inside jit.

A density spec `file:PATH` names such a file (so does any spec ending in .npy or .npz). An
.npz must hold one array, or the points under the key "x". The file is read and checked
once on the host, before anything compiles: the array must be two-dimensional (N points of
dimension d, N >= 2) and finite. Any NaN or infinity is an error naming the first bad row,
since a single one turns every loss into NaN and, through an OT coupling, every pair.
"""

from __future__ import annotations

import functools
import os
import pathlib
import zipfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FILE_PREFIX", "empirical", "is_file_spec", "load_points"]

FILE_PREFIX = "file:"
SUFFIXES = (".npy", ".npz")


def is_file_spec(spec: str) -> bool:
    """Whether a density spec names a file of points rather than a built-in density."""
    return spec.startswith(FILE_PREFIX) or spec.endswith(SUFFIXES)


def file_path(spec: str) -> pathlib.Path:
    """The absolute path a file spec names ('file:' prefix optional)."""
    return pathlib.Path(spec.removeprefix(FILE_PREFIX)).expanduser().absolute()


def load_points(path: str | pathlib.Path) -> np.ndarray:
    """The checked float32 (N, d) points of a .npy/.npz file; read-only, cached per file version."""
    path = pathlib.Path(path).expanduser().absolute()
    if not path.is_file():
        raise ValueError(f"No point file {path}: save an (N, d) array there with numpy.save or numpy.savez.")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path} is not a .npy or .npz file: save the points with numpy.save or numpy.savez.")
    return _load(str(path), os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> np.ndarray:
    del mtime_ns  # part of the cache key only: a rewritten file is read again
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "x" not in keys and len(keys) != 1:
                    raise ValueError(f"{path} holds the arrays {keys}: save the points under the key 'x'.")
                points = archive["x" if "x" in keys else keys[0]]
        else:
            points = np.load(path, allow_pickle=False)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        if str(err).startswith(path):
            raise
        raise ValueError(
            f"{path} is not a readable {pathlib.Path(path).suffix} file ({err}): save the points "
            "with numpy.save or numpy.savez."
        ) from None
    if points.ndim != 2 or points.shape[0] < 2:
        raise ValueError(f"{path} holds an array of shape {points.shape}: save N >= 2 points as an (N, d) array.")
    if not np.issubdtype(points.dtype, np.number) or np.issubdtype(points.dtype, np.complexfloating):
        raise ValueError(f"{path} holds {points.dtype} values: save real numbers.")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{path} has {int(bad.sum())} rows with NaN or infinite values (the first is row "
            f"{int(np.argmax(bad))}): drop or impute them before training."
        )
    points = np.asarray(points, np.float32)
    points.setflags(write=False)
    return points


def empirical(points: np.ndarray) -> Callable[[jax.Array, int], jax.Array]:
    """The sampler `(key, n) -> (n, d)` of the uniform measure on the rows of `points`, with replacement."""
    data = np.asarray(points)

    def sample(key: jax.Array, n: int) -> jax.Array:
        return jnp.asarray(data)[jax.random.randint(key, (n,), 0, data.shape[0])]

    return sample
