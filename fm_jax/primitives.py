"""Small pieces that several layers share: pairwise squared distances, the standard normal
log-density, and fixed-size padded batches (one compile serves every chunk).

It imports nothing of fm_jax, so that couplings, metrics, likelihood and data can all use it
without importing one another sideways.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["padded_chunks", "pairwise_sq_distances", "standard_normal_log_prob"]


def pairwise_sq_distances(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """C_ij = ||x0_i - x1_j||^2 for batch-first arrays of any trailing shape.

    Args:
        x0: (n, ...) points.
        x1: (m, ...) points of the same trailing shape.

    Returns:
        The (n, m) squared Euclidean distances, clipped at 0 against rounding.
    """
    x0 = x0.reshape(x0.shape[0], -1)
    x1 = x1.reshape(x1.shape[0], -1)
    sq0 = jnp.sum(x0**2, axis=1)
    sq1 = jnp.sum(x1**2, axis=1)
    cross = jnp.dot(x0, x1.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(sq0[:, None] + sq1[None, :] - 2.0 * cross, 0.0)


def standard_normal_log_prob(x: jax.Array) -> jax.Array:
    """log N(x; 0, I) per example, summed over every axis but the first.

    Args:
        x: (batch, ...) points.

    Returns:
        The (batch,) log-densities in nats.
    """
    d = math.prod(x.shape[1:])
    return -0.5 * jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1) - 0.5 * d * math.log(2.0 * math.pi)


def padded_chunks(
    size: int, *arrays: np.ndarray | jax.Array | None
) -> Iterator[tuple[int, int, list[jax.Array | None]]]:
    """(start, rows, chunks) over consecutive runs of `size` rows of each array (None passes through).

    Args:
        size: rows per chunk; the last chunk is padded to it with copies of its last row.
        arrays: arrays of one length (their first axis); None entries stay None.

    Yields:
        The first row of the chunk, how many of its rows are real, and the padded chunks.
    """
    num = len(next(a for a in arrays if a is not None))
    for start in range(0, num, size):
        rows = min(size, num - start)
        chunks: list[jax.Array | None] = []
        for a in arrays:
            if a is None:
                chunks.append(None)
                continue
            xp = jnp if isinstance(a, jax.Array) else np  # device arrays stay on their device
            part = a[start : start + rows]
            if rows < size:
                part = xp.concatenate([part, xp.repeat(part[-1:], size - rows, axis=0)])
            chunks.append(jnp.asarray(part))
        yield start, rows, chunks
