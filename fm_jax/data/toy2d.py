"""Toy 2D densities, sampled inside jit: `sample(name, key, n) -> (n, 2)` float32 points.

The two densities of the published OT-CFM tables follow torchcfm's definitions so that
numbers compare (Tong et al. 2024, Sec. 5.1):

- "8gaussians": an equal mixture of N(c_k, sqrt(0.1) I) with the 8 centres c_k on the circle
  of radius 5 at angles k pi / 4. torchcfm passes sqrt(0.1) as the *covariance*, so the
  per-coordinate standard deviation is 0.1^(1/4) ~ 0.562.
- "moons": torchdyn's `generate_moons(noise=0.2)` scaled by 3 and shifted by -1. Points on
  the upper arc (cos a, sin a) or the lower arc (1 - cos a, 0.5 - sin a) with probability
  1/2 each, a in [0, pi]; one U[0, 0.2) offset added to *both* coordinates of a point
  (torchdyn's noise, a shift along (1, 1), not isotropic Gaussian noise). torchdyn spaces
  the angles evenly and splits the batch in exact halves in order; here angles and arcs are
  drawn at random, the same density, so any slice of a batch is a sample of it.

The others:

- "normal": N(0, I).
- "scurve": the S-shaped curve of scikit-learn's `make_s_curve` projected on its (x, z)
  plane, (sin u, sign(u) (cos u - 1)) with u ~ U(-3 pi / 2, 3 pi / 2), scaled by 2, plus
  N(0, 0.1^2 I).
- "checkerboard": uniform on the 8 dark squares of a 4 x 4 board of side 2 on [-4, 4]^2.
- "spirals": two interleaved Archimedean spirals, radius proportional to the angle
  r = theta, theta = sqrt(U) 3 pi (uniform along the arc length), the second the point
  reflection of the first, scaled by 1/2, plus N(0, 0.1^2 I).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["DENSITIES", "get_density", "sample"]


def normal(key: jax.Array, n: int) -> jax.Array:
    return jax.random.normal(key, (n, 2))


def eight_gaussians(key: jax.Array, n: int) -> jax.Array:
    k_c, k_z = jax.random.split(key)
    angle = jax.random.randint(k_c, (n,), 0, 8) * (math.pi / 4)
    centres = 5.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return centres + 0.1**0.25 * jax.random.normal(k_z, (n, 2))


def moons(key: jax.Array, n: int) -> jax.Array:
    k_a, k_arc, k_u = jax.random.split(key, 3)
    a = jax.random.uniform(k_a, (n,), maxval=math.pi)
    lower = jax.random.bernoulli(k_arc, 0.5, (n,))
    x = jnp.where(lower, 1.0 - jnp.cos(a), jnp.cos(a))
    y = jnp.where(lower, 0.5 - jnp.sin(a), jnp.sin(a))
    offset = 0.2 * jax.random.uniform(k_u, (n, 1))
    return 3.0 * (jnp.stack([x, y], axis=-1) + offset) - 1.0


def s_curve(key: jax.Array, n: int) -> jax.Array:
    k_u, k_z = jax.random.split(key)
    u = 3.0 * math.pi * (jax.random.uniform(k_u, (n,)) - 0.5)
    curve = jnp.stack([jnp.sin(u), jnp.sign(u) * (jnp.cos(u) - 1.0)], axis=-1)
    return 2.0 * curve + 0.1 * jax.random.normal(k_z, (n, 2))


def checkerboard(key: jax.Array, n: int) -> jax.Array:
    k_x, k_y, k_row = jax.random.split(key, 3)
    x = jax.random.uniform(k_x, (n,), minval=-4.0, maxval=4.0)
    # In the column floor(x / 2) (of -2..1) the dark squares are the rows of the other parity.
    column = jnp.floor(x / 2.0)
    row = 2 * jax.random.randint(k_row, (n,), -1, 1) + (column.astype(jnp.int32) + 1) % 2
    y = 2.0 * (row + jax.random.uniform(k_y, (n,)))
    return jnp.stack([x, y], axis=-1)


def spirals(key: jax.Array, n: int) -> jax.Array:
    k_t, k_s, k_z = jax.random.split(key, 3)
    theta = jnp.sqrt(jax.random.uniform(k_t, (n,))) * 3.0 * math.pi
    sign = jnp.where(jax.random.bernoulli(k_s, 0.5, (n,)), 1.0, -1.0)[:, None]
    arm = theta[:, None] * jnp.stack([-jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return 0.5 * sign * arm + 0.1 * jax.random.normal(k_z, (n, 2))


DENSITIES: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    "normal": normal,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "scurve": s_curve,
    "checkerboard": checkerboard,
    "spirals": spirals,
}


def get_density(name: str) -> Callable[[jax.Array, int], jax.Array]:
    """The sampler `(key, n) -> (n, 2)` of a density by name."""
    if name not in DENSITIES:
        raise ValueError(f"Unknown density {name!r}; choose one of {sorted(DENSITIES)}.")
    return DENSITIES[name]


def sample(name: str, key: jax.Array, n: int) -> jax.Array:
    """n points of the named density; jittable with `name` and `n` static."""
    return get_density(name)(key, n)
