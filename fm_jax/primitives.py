"""Small math that several layers share: pairwise squared distances and the standard normal log-density.

It imports nothing of fm_jax, so that couplings, metrics, likelihood and data can all use it
without importing one another sideways.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["pairwise_sq_distances", "standard_normal_log_prob"]


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
