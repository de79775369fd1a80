"""Toy 2D densities, sampled inside jit: `sample(key, name, n) -> (n, 2)` float32 points (the
key first, as in every function that draws), with exact log-densities
`log_prob(name, x) -> (n,)` for x of shape (n, 2), also jittable.

One table, `DENSITIES` (a `fm_jax.registry.Registry`), holds a `Toy2D(sample, log_prob)` record
per name: `DENSITIES[name].sample(key, n)` and `DENSITIES[name].log_prob(x)` are the two halves
of one law; an unknown name is a ValueError that lists the choices.

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

Log-densities (`log_prob`, `Toy2D.log_prob`), of exactly the laws sampled:

- "normal", "8gaussians": closed forms (the mixture by logsumexp).
- "checkerboard": log(1/32) on the dark squares (half-open, as sampled), -inf elsewhere.
- "scurve", "spirals": the Gaussian noise integrated over the curve parameter (u uniform;
  theta with density 2 theta / (3 pi)^2, each arm 1/2) by a midpoint rule on `CURVE_NODES`
  nodes per arm, over chunks of points (memory O(chunk x nodes)); relative error < 1e-3
  where the density is not negligible.
- "moons": by change of variables from (arc, a, offset): for w = (y + 1) / 3 and each arc,
  the up to two a in [0, pi] with c_x(a) - c_y(a) = w_x - w_y whose offset w_x - c_x(a) lies
  in [0, 0.2), each adding 1 / (2 pi 0.2 9 |c_x'(a) - c_y'(a)|); -inf outside the band. The
  boundaries are widened by a few ulps, so every sample has a finite log-density, and the
  integrable 1 / sqrt singularity at the band's folds (where the Jacobian vanishes) is cut off
  there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fm_jax.checks import check_key
from fm_jax.primitives import standard_normal_log_prob
from fm_jax.registry import Registry

__all__ = ["DENSITIES", "Toy2D", "log_prob", "sample"]


@dataclasses.dataclass(frozen=True)
class Toy2D:
    """One toy density: its sampler `(key, n) -> (n, 2)` and its log-density `x (n, 2) -> (n,)`,
    both jittable (n static)."""

    sample: Callable[[jax.Array, int], jax.Array]
    log_prob: Callable[[jax.Array], jax.Array]


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


# Log-densities.

CURVE_NODES = 4096  # quadrature nodes per arm of the curve densities
_POINT_CHUNK = 256  # points per step of the curve quadrature
_NOISE = 0.1  # the isotropic noise std of "scurve" and "spirals"


def eight_gaussians_log_prob(x: jax.Array) -> jax.Array:
    var = 0.1**0.5  # the covariance scale, see the module docstring
    angle = jnp.arange(8) * (math.pi / 4)
    centres = 5.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1).astype(x.dtype)
    sq = jnp.sum((x[:, None, :] - centres[None]) ** 2, axis=-1)
    return jax.nn.logsumexp(-0.5 * sq / var, axis=-1) - math.log(8 * 2 * math.pi * var)


def moons_log_prob(x: jax.Array) -> jax.Array:
    w_x, d = (x[:, 0] + 1.0) / 3.0, (x[:, 0] - x[:, 1]) / 3.0  # w = (x + 1) / 3, d = w_x - w_y
    # The support's boundaries are widened by `tol` (a few ulps) so that the samples the sampler's
    # rounding puts just outside them count (beyond a fold of the band, where r -> 0: ~1e-4 of them
    # in float32). Within tol of a fold r is floored at its value at distance tol inside, which
    # moves no mass to first order (the 1 / sqrt(gap) mass of [0, tol] spread over [-tol, tol]).
    tol = 8.0 * jnp.finfo(x.dtype).eps
    const = 0.5 / (math.pi * 0.2 * 9.0)  # arc, angle, offset, and the Jacobian of x = 3 w - 1
    density = jnp.zeros_like(d)
    # Upper arc c = q, lower arc c = (1, 1/2) + q, with q on the unit circle: q = (cos a, sin a),
    # q_y >= 0 (upper), or q = -(cos a, sin a), q_y <= 0 (lower). q_x - q_y = e has the
    # solutions q = ((e + s r) / 2, (-e + s r) / 2), s = +-1, r = sqrt(2 - e^2), and there
    # |h'(a)| = |q_x + q_y| = r.
    for shift, upper in (((0.0, 0.0), True), ((1.0, 0.5), False)):
        e = d - (shift[0] - shift[1])
        gap = math.sqrt(2.0) - jnp.abs(e)  # beyond a fold of the band where negative
        real = gap >= -tol
        r = jnp.sqrt(jnp.maximum(gap, tol) * (math.sqrt(2.0) + jnp.abs(e)))
        for s in (1.0, -1.0):
            qx, qy = 0.5 * (e + s * r), 0.5 * (-e + s * r)
            u = w_x - (shift[0] + qx)
            valid = real & ((qy >= -tol) if upper else (qy <= tol)) & (u >= -tol) & (u < 0.2 + tol)
            density = density + jnp.where(valid, const / r, 0.0)
    return jnp.log(density)


def _curve_log_prob(x: jax.Array, points: jax.Array, log_weights: jax.Array) -> jax.Array:
    """log sum_k w_k N(x; m_k, 0.1^2 I), a quadrature of a curve convolved with the noise,
    over chunks of `_POINT_CHUNK` points (memory O(chunk x nodes))."""
    points, log_weights = points.astype(x.dtype), log_weights.astype(x.dtype)

    def chunk(xc):
        sq = (xc[:, 0:1] - points[None, :, 0]) ** 2 + (xc[:, 1:2] - points[None, :, 1]) ** 2
        return jax.nn.logsumexp(log_weights[None] - (0.5 / _NOISE**2) * sq, axis=-1)

    n = x.shape[0]
    size = max(1, min(n, _POINT_CHUNK))
    padded = jnp.pad(x, ((0, -n % size), (0, 0)))
    out = jax.lax.map(chunk, padded.reshape(-1, size, 2)).reshape(-1)[:n]
    return out - math.log(2 * math.pi * _NOISE**2)


def s_curve_log_prob(x: jax.Array) -> jax.Array:
    h = 3.0 * math.pi / CURVE_NODES
    u = -1.5 * math.pi + h * (jnp.arange(CURVE_NODES) + 0.5)  # midpoints; u = 0 is not one
    curve = 2.0 * jnp.stack([jnp.sin(u), jnp.sign(u) * (jnp.cos(u) - 1.0)], axis=-1)
    return _curve_log_prob(x, curve, jnp.full(CURVE_NODES, -math.log(CURVE_NODES)))


def spirals_log_prob(x: jax.Array) -> jax.Array:
    h = 3.0 * math.pi / CURVE_NODES
    theta = h * (jnp.arange(CURVE_NODES) + 0.5)
    log_w = jnp.log(theta * (h / (3.0 * math.pi) ** 2))  # 2 theta / (3 pi)^2 dtheta, times 1/2 per arm
    arm = 0.5 * theta[:, None] * jnp.stack([-jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return _curve_log_prob(x, jnp.concatenate([arm, -arm]), jnp.concatenate([log_w, log_w]))


def checkerboard_log_prob(x: jax.Array) -> jax.Array:
    # As sampled: x in [-4, 4), the squares [2 i, 2 i + 2) x [2 j, 2 j + 2) with i + j odd.
    inside = jnp.all((x >= -4.0) & (x < 4.0), axis=-1)
    cell = jnp.floor(x / 2.0)
    dark = (cell[:, 0] + cell[:, 1]) % 2 == 1
    return jnp.where(inside & dark, -math.log(32.0), -jnp.inf).astype(x.dtype)


DENSITIES: Registry[Toy2D] = Registry(
    "density",
    {
        "normal": Toy2D(normal, standard_normal_log_prob),
        "8gaussians": Toy2D(eight_gaussians, eight_gaussians_log_prob),
        "moons": Toy2D(moons, moons_log_prob),
        "scurve": Toy2D(s_curve, s_curve_log_prob),
        "checkerboard": Toy2D(checkerboard, checkerboard_log_prob),
        "spirals": Toy2D(spirals, spirals_log_prob),
    },
)


def sample(key: jax.Array, name: str, n: int) -> jax.Array:
    """n points of the named density, drawn with `key`; jittable with `name` and `n` static.

    Args:
        key: the key of the draw (`jax.random.key(seed)`).
        name: a name of `DENSITIES`.
        n: the number of points.

    Returns:
        (n, 2) float32 points.
    """
    check_key(key, "key", "toy2d.sample(key, name, n)")
    return DENSITIES[name].sample(key, n)


def log_prob(name: str, x: jax.Array) -> jax.Array:
    """The log-density of the named density at the rows of x (n, 2); jittable with `name` static."""
    return DENSITIES[name].log_prob(x)
