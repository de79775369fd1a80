"""Data for fm_jax: the densities a flow is trained between.

A density spec is the name of a toy 2D density (`toy2d`; "normal" is N(0, I) in the
dimension of the other side), `file:PATH` to a user-supplied point cloud (`points`), or
`tfds:NAME` for an image dataset in TFDS ArrayRecord format, read on the host with grain
(`images`; only as a target, from a "normal" source).
`densities(source, target)` resolves a pair into samplers `(key, n) -> (n, d)` of one
dimension d, checking files (shape, NaN) on the host before anything compiles, with exact
log-densities `(n, d) -> (n,)` for the toy densities and "normal" (None for point clouds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

import jax

from fm_jax.data import points, toy2d
from fm_jax.primitives import standard_normal_log_prob

__all__ = [
    "IMAGE_PREFIX",
    "Density",
    "densities",
    "fingerprint",
    "image_info",
    "image_name",
    "is_image_spec",
    "points",
    "toy2d",
]

IMAGE_PREFIX = "tfds:"


def is_image_spec(spec: str) -> bool:
    """Whether a density spec names an image dataset (`tfds:NAME`)."""
    return spec.startswith(IMAGE_PREFIX)


def image_name(spec: str) -> str:
    """The TFDS name in an image spec: 'tfds:mnist5k' -> 'mnist5k'."""
    name = spec.removeprefix(IMAGE_PREFIX)
    if not is_image_spec(spec) or not name:
        raise ValueError(f"{spec!r} is not an image spec: write tfds:NAME, e.g. tfds:digits.")
    return name


def image_info(name: str, data_dir: str | None = None):
    """The `ImageInfo` of a TFDS image dataset, building an offline one (digits, mnist5k) on first use."""
    from fm_jax.data import images, prepare

    return prepare.prepare(name, data_dir) if name in prepare.OFFLINE else images.info(name, data_dir)


class Density(NamedTuple):
    """A sampler `(key, n) -> (n, dim)`, jittable with n static, its dimension, and its
    log-density `x (n, dim) -> (n,)`, jittable, where known (None for a point cloud)."""

    sample: Callable[[jax.Array, int], jax.Array]
    dim: int
    log_prob: Callable[[jax.Array], jax.Array] | None = None


def _resolve(spec: str) -> Density | None:
    """The density a spec names; None for "normal", whose dimension comes from the other side."""
    if is_image_spec(spec):
        raise ValueError(
            f"{spec!r} is an image dataset: it has no sampler inside jit; training reads it with "
            "fm_jax.data.images.batches (set it as config.target with config.source = 'normal')."
        )
    if points.is_file_spec(spec):
        data = points.load_points(points.file_path(spec))
        return Density(points.empirical(data), data.shape[1])
    density = toy2d.DENSITIES[spec]
    return None if spec == "normal" else Density(density.sample, 2, density.log_prob)


def _normal(dim: int) -> Density:
    return Density(lambda key, n: jax.random.normal(key, (n, dim)), dim, standard_normal_log_prob)


def densities(source: str, target: str) -> tuple[Density, Density]:
    """The (source, target) densities of two specs, of one dimension."""
    src, tgt = _resolve(source), _resolve(target)
    dim = (src or tgt or _normal(2)).dim
    src, tgt = src or _normal(dim), tgt or _normal(dim)
    if src.dim != tgt.dim:
        raise ValueError(
            f"The source {source!r} has dimension {src.dim} and the target {target!r} dimension {tgt.dim}: "
            "flows map between spaces of one dimension."
        )
    return src, tgt


def fingerprint(spec: str, data_dir: str | None = None) -> dict | None:
    """What identifies the data a spec names, to tell a resumed run that it changed: the SHA-256
    and shape of a point file, the version and files of a prepared image dataset; None for the
    built-in densities (the code defines them)."""
    if is_image_spec(spec):
        from fm_jax.data import images

        return images.fingerprint(image_name(spec), data_dir)
    if points.is_file_spec(spec):
        path = points.file_path(spec)
        return {
            "file": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "shape": list(points.load_points(path).shape),
        }
    return None
