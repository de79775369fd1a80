"""Sample and trajectory metrics: W2, MMD, path energy, normalized path energy, curvature.

- `w2(x, y)`: the exact 2-Wasserstein distance between two empirical measures, the
  network-simplex solution of POT's `emd2` on the squared Euclidean cost (host, float64).
  Exact OT is what the published 2D tables report (Tong et al. 2024); it is limited to
  10,000 points a side, where the dense cost matrix takes 800 MB.
- `mmd2(x, y)`: the unbiased squared maximum mean discrepancy with a (sum of) RBF
  kernel(s) (Gretton et al. 2012), jitted.
- `trajectory_metrics(vf, x0, ...)`: one Diffrax solve of the flow augmented with the
  kinetic energy e' = ||v_t(x_t)||^2, giving per run
    path energy   PE = E ∫_0^1 ||v_t(x_t)||^2 dt                 (Tong et al. 2024, Sec. 5)
    curvature     C  = E ∫_0^1 ||(x_1 - x_0) - v_t(x_t)||^2 dt   (Lee, Kim & Ye 2023, eq. 4)
                     = PE - E ||x_1 - x_0||^2,
  the second form because ∫ v_t(x_t) dt = x_1 - x_0 along an exact trajectory. C = 0 if
  and only if every trajectory is a straight line traversed at constant speed.
- `normalized_path_energy(pe, w2_sq)` = |PE - W2^2(q0, q1)| / W2^2(q0, q1) (Tong et al. 2024):
  0 for the dynamic optimal transport flow, since its path energy equals W2^2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax.primitives import pairwise_sq_distances
from fm_jax.solvers import SolverSpec, VectorField, sample

__all__ = ["TrajectoryMetrics", "mmd2", "normalized_path_energy", "trajectory_metrics", "w2"]

W2_MAX_POINTS = 10_000


def w2(x: np.ndarray | jax.Array, y: np.ndarray | jax.Array) -> float:
    """Exact W2 distance between the uniform empirical measures on x (n, ...) and y (m, ...)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
    if max(len(x), len(y)) > W2_MAX_POINTS:
        raise ValueError(
            f"Exact W2 is limited to {W2_MAX_POINTS} points a side (got {len(x)} and {len(y)}): subsample."
        )
    import ot  # POT (and the scikit-learn it imports) loads when a W2 is first asked for

    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(ot.emd2(a, b, cost, numItermax=10_000_000)))


def _median_bandwidth(x: jax.Array, y: jax.Array) -> jax.Array:
    z = jnp.concatenate([x, y])
    return jnp.sqrt(0.5 * jnp.median(pairwise_sq_distances(z, z)))


@jax.jit
def mmd2(x: jax.Array, y: jax.Array, bandwidths: jax.Array | None = None) -> jax.Array:
    """Unbiased MMD^2 with k(u, v) = sum_h exp(-||u - v||^2 / (2 h^2)); h from the median heuristic by default.

    Args:
        x: (n, ...) samples, n >= 2.
        y: (m, ...) samples of the same trailing shape, m >= 2.
        bandwidths: the bandwidths h (a scalar or a vector), or None for the median heuristic.

    Returns:
        The scalar MMD^2 estimate (may be slightly negative, being unbiased).
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    h = jnp.atleast_1d(_median_bandwidth(x, y) if bandwidths is None else jnp.asarray(bandwidths, x.dtype))

    def kernel(u: jax.Array, v: jax.Array) -> jax.Array:
        d = pairwise_sq_distances(u, v)[..., None]
        return jnp.sum(jnp.exp(-d / (2.0 * h**2)), -1)

    n, m = x.shape[0], y.shape[0]
    kxx = kernel(x, x)
    kyy = kernel(y, y)
    kxy = kernel(x, y)
    xx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    yy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return xx + yy - 2.0 * jnp.mean(kxy)


class TrajectoryMetrics(NamedTuple):
    """End points and batch means of the trajectory metrics; nfe counts calls of the augmented field."""

    x1: jax.Array
    path_energy: jax.Array
    curvature: jax.Array
    nfe: jax.Array


def trajectory_metrics(vf: VectorField, x0: jax.Array, solver: SolverSpec = SolverSpec()) -> TrajectoryMetrics:
    """Path energy and curvature of the flow of vf from x0, integrated with `solver`.

    Args:
        vf: the field `vf(t, x)`.
        x0: (batch, ...) source points at t = 0.
        solver: how to integrate from t = 0 to 1.

    Returns:
        The `TrajectoryMetrics`: the end points, the batch means of PE and C, and the NFE.
    """
    batch = x0.shape[0]

    def augmented(t: jax.Array, state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, _ = state
        v = vf(t, x)
        return v, jnp.sum(v.reshape(batch, -1) ** 2, axis=-1)

    sol = sample(augmented, (x0, jnp.zeros((batch,), x0.dtype)), solver)
    x1, energy = sol.x
    displacement = jnp.sum((x1 - x0).reshape(batch, -1) ** 2, axis=-1)
    return TrajectoryMetrics(
        x1=x1, path_energy=jnp.mean(energy), curvature=jnp.mean(energy - displacement), nfe=sol.nfe
    )


def normalized_path_energy(path_energy: float | jax.Array, w2_sq: float | jax.Array) -> jax.Array:
    """|PE - W2^2| / W2^2 (Tong et al. 2024).

    Args:
        path_energy: PE, e.g. `TrajectoryMetrics.path_energy`.
        w2_sq: W2^2 between the source and the target.

    Returns:
        The scalar normalized path energy.
    """
    return jnp.abs(path_energy - w2_sq) / w2_sq
