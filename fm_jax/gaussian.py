"""Closed-form Gaussian-to-Gaussian flows: exact marginals, velocity, score and log-density.

For x0 ~ N(mu0, s0^2 I), x1 ~ N(mu1, s1^2 I) drawn independently and a Gaussian path
x_t = a x0 + b x1 + g z, the marginal is p_t = N(m_t, S_t I) with

    m_t = a mu0 + b mu1,        S_t = a^2 s0^2 + g^2 + b^2 s1^2,

and the marginal velocity E[u_t | x_t = x] (Lipman et al. 2023, Thm. 1) is the linear field

    v_t(x) = m_t' + S_t' / (2 S_t) (x - m_t),

whose flow pushes p_0 to p_t exactly. The field is finite on [0, 1], but where a schedule is
a square root that vanishes at an end (BrownianBridge's g at t = 0 and 1; the a of
VPDiffusion, Cosine and LinearVP at t = 1) its derivative there is 0 * inf in floating
point: evaluate such paths on [delta, 1 - delta]. These are the reference solutions the tests and the
demo compare numerical integration, likelihoods and prediction conversions against.

`solver_errors` is that demo (`fm-jax gaussian`): each Diffrax solver of `solvers.ODE_SOLVERS`
at a fixed number of steps, and each adaptive one at a tolerance, integrating the exact
field from exact samples of p_t0, against the closed-form flow map and the moments of p_t1.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax import solvers
from fm_jax.paths import GaussianPath, _expand

__all__ = ["GaussianFlow", "solver_errors"]


@dataclasses.dataclass(frozen=True)
class GaussianFlow:
    """The exact marginal flow of `path` between two isotropic Gaussians, independent coupling."""

    path: GaussianPath
    mu1: float | jax.Array = 0.0
    s1: float = 1.0
    mu0: float | jax.Array = 0.0
    s0: float = 1.0

    def marginal(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(m_t, S_t): mean vector of shape (..., d) and scalar variance per coordinate.

        Args:
            t: times, of any shape (...).

        Returns:
            (m_t, S_t), of shapes (..., d) and (...).
        """
        t = jnp.asarray(t)
        t = t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.result_type(float))
        a, b, g = self.path.a(t), self.path.b(t), self.path.g(t)
        mean = a[..., None] * jnp.asarray(self.mu0) + b[..., None] * jnp.asarray(self.mu1)
        var = a**2 * self.s0**2 + g**2 + b**2 * self.s1**2
        return mean, var

    def velocity(self, t: float | jax.Array, x: jax.Array) -> jax.Array:
        """v_t(x) = m_t' + S_t' / (2 S_t) (x - m_t) for scalar t or t of shape (batch,).

        Args:
            t: the time, scalar or (batch,).
            x: (batch, d) points.

        Returns:
            The (batch, d) velocities.
        """
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        (mean, var), (dmean, dvar) = jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))
        return dmean + _expand(dvar / (2.0 * var), x) * (x - mean)

    def score(self, t: float | jax.Array, x: jax.Array) -> jax.Array:
        """grad_x log p_t(x) = -(x - m_t) / S_t.

        Args:
            t: the time, scalar or (batch,).
            x: (batch, d) points.

        Returns:
            The (batch, d) scores.
        """
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        mean, var = self.marginal(t)
        return -(x - mean) / _expand(var, x)

    def x1_posterior_mean(self, t: float | jax.Array, x: jax.Array) -> jax.Array:
        """E[x1 | x_t = x] = mu1 + b s1^2 / S_t (x - m_t).

        Args:
            t: the time, scalar or (batch,).
            x: (batch, d) points.

        Returns:
            The (batch, d) posterior means.
        """
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        mean, var = self.marginal(t)
        return jnp.asarray(self.mu1) + _expand(self.path.b(t) * self.s1**2 / var, x) * (x - mean)

    def log_prob(self, t: float | jax.Array, x: jax.Array) -> jax.Array:
        """log p_t(x) for x of shape (batch, d).

        Args:
            t: the time, scalar or (batch,).
            x: (batch, d) points.

        Returns:
            The (batch,) log-densities.
        """
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        mean, var = self.marginal(t)
        d = x.shape[-1]
        return -0.5 * (jnp.sum((x - mean) ** 2, -1) / var + d * jnp.log(2.0 * math.pi * var))

    def flow_map(self, x: jax.Array, t: float | jax.Array = 1.0, s: float | jax.Array = 0.0) -> jax.Array:
        """Where the flow of `velocity` carries x from time s to time t: m_t + sqrt(S_t / S_s) (x - m_s).

        The field is affine in x with an isotropic slope S_t' / (2 S_t), so x - m_t scales
        by sqrt(S_t / S_s) along every trajectory.

        Args:
            x: (batch, d) points at time s.
            t: the end time.
            s: the start time.

        Returns:
            The (batch, d) points at time t.
        """
        ms, var_s = self.marginal(jnp.asarray(s))
        mt, var_t = self.marginal(jnp.asarray(t))
        return mt + jnp.sqrt(var_t / var_s) * (x - ms)

    def sample(self, key: jax.Array, t: float, n: int, d: int) -> jax.Array:
        """Exact samples of p_t.

        Args:
            key: the key of the draw.
            t: the time.
            n: the number of samples.
            d: the dimension.

        Returns:
            (n, d) samples.
        """
        mean, var = self.marginal(jnp.asarray(t))
        return mean + jnp.sqrt(var) * jax.random.normal(key, (n, d))


def solver_errors(
    path: GaussianPath,
    mu: float = 3.0,
    scale: float = 0.5,
    dim: int = 2,
    num: int = 10_000,
    steps: int = 10,
    tol: float = 1e-5,
    t0: float = 0.0,
    t1: float = 1.0,
    seed: int = 0,
) -> list[dict]:
    """Integrate the exact flow of `path` from N(0, I) to N(mu e1, scale^2 I) with every solver.

    Args:
        path: the Gaussian path.
        mu: the target mean along the first axis; scale: the target standard deviation.
        dim: the dimension; num: the number of samples from p_t0.
        steps: the steps of each fixed-step solve; tol: rtol = atol of each adaptive one.
        t0, t1: the interval, 0 <= t0 < t1 <= 1.
        seed: the key of the samples.

    Returns:
        One row per solve: solver, mode ("steps=N" or "tol=T"), NFE, the RMS error against
        the exact flow map, the errors of the sample mean and standard deviation against
        p_t1's, and the seconds the compiled solve took.
    """
    if not 0.0 <= t0 < t1 <= 1.0:
        raise ValueError(f"Need 0 <= t0 < t1 <= 1, got t0={t0}, t1={t1}.")
    flow = GaussianFlow(path, mu1=jnp.zeros(dim).at[0].set(mu), s1=scale)
    x_start = flow.sample(jax.random.key(seed), t0, num, dim)
    for t in (t0, t1):
        if not np.all(np.isfinite(flow.velocity(t, x_start[:8]))):
            raise ValueError(
                f"The velocity of {path!r} is not finite at t = {t} (a schedule's derivative is infinite "
                "there): integrate inside the interval, e.g. --t0 0.001 --t1 0.999."
            )
    exact = np.asarray(flow.flow_map(x_start, t=t1, s=t0))
    mean_t1, var_t1 = flow.marginal(jnp.asarray(t1))
    specs = [solvers.SolverSpec(name, steps) for name in solvers.ODE_SOLVERS]
    specs += [solvers.SolverSpec(name, None, tol, tol) for name in solvers.ODE_SOLVERS if solvers.is_adaptive(name)]
    rows = []
    for spec in specs:
        solve = jax.jit(lambda x, spec=spec: solvers.sample(flow.velocity, x, spec, t0=t0, t1=t1))
        solve(x_start).x.block_until_ready()  # compile outside the timing
        start = time.perf_counter()
        sol = solve(x_start)
        x = np.asarray(sol.x)
        rows.append(
            {
                "solver": spec.name,
                "mode": f"steps={steps}" if spec.steps else f"tol={tol:g}",
                "nfe": int(sol.nfe),
                "rms_error": float(np.sqrt(np.mean((x - exact) ** 2))),
                "mean_error": float(np.linalg.norm(x.mean(0) - np.asarray(mean_t1))),
                "std_error": float(np.abs(x.std(0) - np.sqrt(float(var_t1))).max()),
                "seconds": time.perf_counter() - start,
            }
        )
    return rows
