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
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from fm_jax.paths import GaussianPath, _expand

__all__ = ["GaussianFlow"]


@dataclasses.dataclass(frozen=True)
class GaussianFlow:
    """The exact marginal flow of `path` between two isotropic Gaussians, independent coupling."""

    path: GaussianPath
    mu1: float | jax.Array = 0.0
    s1: float = 1.0
    mu0: float | jax.Array = 0.0
    s0: float = 1.0

    def marginal(self, t: jax.Array):
        """(m_t, S_t): mean vector of shape (..., d) and scalar variance per coordinate."""
        t = jnp.asarray(t)
        t = t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.result_type(float))
        a, b, g = self.path.a(t), self.path.b(t), self.path.g(t)
        mean = a[..., None] * jnp.asarray(self.mu0) + b[..., None] * jnp.asarray(self.mu1)
        var = a**2 * self.s0**2 + g**2 + b**2 * self.s1**2
        return mean, var

    def velocity(self, t: jax.Array, x: jax.Array) -> jax.Array:
        """v_t(x) = m_t' + S_t' / (2 S_t) (x - m_t) for scalar t or t of shape (batch,)."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        (mean, var), (dmean, dvar) = jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))
        return dmean + _expand(dvar / (2.0 * var), x) * (x - mean)

    def score(self, t: jax.Array, x: jax.Array) -> jax.Array:
        """grad_x log p_t(x) = -(x - m_t) / S_t."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        mean, var = self.marginal(t)
        return -(x - mean) / _expand(var, x)

    def x1_posterior_mean(self, t: jax.Array, x: jax.Array) -> jax.Array:
        """E[x1 | x_t = x] = mu1 + b s1^2 / S_t (x - m_t)."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        mean, var = self.marginal(t)
        return jnp.asarray(self.mu1) + _expand(self.path.b(t) * self.s1**2 / var, x) * (x - mean)

    def log_prob(self, t: jax.Array, x: jax.Array) -> jax.Array:
        """log p_t(x) for x of shape (batch, d)."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        mean, var = self.marginal(t)
        d = x.shape[-1]
        return -0.5 * (jnp.sum((x - mean) ** 2, -1) / var + d * jnp.log(2.0 * math.pi * var))

    def flow_map(self, x: jax.Array, t: float | jax.Array = 1.0, s: float | jax.Array = 0.0) -> jax.Array:
        """Where the flow of `velocity` carries x from time s to time t: m_t + sqrt(S_t / S_s) (x - m_s).

        The field is affine in x with an isotropic slope S_t' / (2 S_t), so x - m_t scales
        by sqrt(S_t / S_s) along every trajectory.
        """
        ms, var_s = self.marginal(jnp.asarray(s))
        mt, var_t = self.marginal(jnp.asarray(t))
        return mt + jnp.sqrt(var_t / var_s) * (x - ms)

    def sample(self, key: jax.Array, t: float, n: int, d: int) -> jax.Array:
        """Exact samples of p_t."""
        mean, var = self.marginal(jnp.asarray(t))
        return mean + jnp.sqrt(var) * jax.random.normal(key, (n, d))
