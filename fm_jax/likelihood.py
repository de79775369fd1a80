"""Log-densities of a flow: the augmented ODE, exact and Hutchinson divergences, bits per dimension.

A flow dx/dt = v(t, x) carries the source density p_0 to p_t, and along a trajectory the
log-density changes by minus the divergence of the field (the instantaneous change of
variables; Chen et al. 2018, Thm. 1; Lipman et al. 2023, Sec. 6 and App. C):

    log p_t(x_t) = log p_0(x_0) - int_0^t div v(s, x_s) ds.

`log_likelihood` integrates the augmented state (x, delta) backward from (x, 0) at time t to
time 0 with Diffrax, d delta / ds = div v(s, x_s), so that delta(0) = -int_0^t div v ds and
log p_t(x) = log p_0(x_0) + delta(0), where x_0 is `encode(x)`. With t = 1 it is the model
likelihood log p_1(x1); with 0 < t < 1 the density of an intermediate marginal (Albergo &
Vanden-Eijnden 2023, Sec. 2.3). The source may be any density with a log-density: N(0, I) by
default, or e.g. the 8 Gaussians of the OT-CFM and stochastic-interpolant experiments.

Divergences, per example (the network must treat the examples of a batch independently):
- "exact": the trace of the Jacobian, one forward-mode product per input coordinate (D of
  them, in chunks of `chunk_size` to bound memory). Exact; for small D.
- "hutchinson": E[eps^T (dv/dx) eps] over probes eps with E[eps eps^T] = I (Hutchinson 1989;
  Grathwohl et al. 2019), Rademacher or Gaussian, `num_probes` of them averaged, drawn once
  from a fixed key and held for the whole solve. Unbiased: E[log p] over probes is the exact
  log p; one forward-mode product per probe.

Bits per dimension (`bits_per_dim`, `dequantized_bits_per_dim`): for an image of D discrete
levels x in {0, ..., K - 1}^D modelled in z = low + (high - low) (x + u) / K with uniform
dequantization u ~ U[0, 1)^D (Theis et al. 2016; Ho et al. 2019), the density of y = x + u is
p_y(y) = p_z(z) ((high - low) / K)^D, and -log2 p_y(y) / D bounds the discrete code length
from above in expectation over u. The pixel-scaling term -log2((high - low) / K) is 8 bits
for [0, 1) data and 7 for [-1, 1) with K = 256.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from fm_jax.checks import check_batch_array, check_callable, check_key
from fm_jax.primitives import standard_normal_log_prob
from fm_jax.solvers import SolverSpec, VectorField, encode

__all__ = [
    "DIVERGENCES",
    "PROBES",
    "LogLikelihood",
    "bits_per_dim",
    "dequantized_bits_per_dim",
    "exact_divergence",
    "hutchinson_divergence",
    "log_likelihood",
]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
EXACT_CHUNK = 64  # basis vectors per forward-mode batch of the exact divergence, by default


class LogLikelihood(NamedTuple):
    """log p_t(x) per example, the encoded source point x0, delta = log p_t(x) - log p_0(x0), and the NFE.

    `nfe` counts evaluations of the augmented field (each one a forward pass of the network
    plus its divergence).
    """

    log_prob: jax.Array
    x0: jax.Array
    delta: jax.Array
    nfe: jax.Array
    num_steps: jax.Array


def _flat_dim(x: jax.Array) -> int:
    return math.prod(x.shape[1:])


def exact_divergence(
    vf: VectorField, t: jax.Array, x: jax.Array, chunk_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """(v(t, x), tr dv/dx per example), the trace from one Jacobian-vector product per coordinate.

    The d-th product pushes the d-th basis vector (the same for every example) through the
    whole batch, so it reads the d-th diagonal entry of every example's Jacobian at once.
    `chunk_size` basis vectors are pushed together (min(D, 64) when None): memory grows as
    batch x D x chunk_size.

    Args:
        vf: the field `vf(t, x)`.
        t: the scalar time.
        x: (batch, ...) points.
        chunk_size: basis vectors per forward-mode batch.

    Returns:
        (v, div): v of the shape of x, div of shape (batch,).
    """
    d = _flat_dim(x)
    v, jvp = jax.linearize(lambda y: vf(t, y), x)

    def diagonal_entry(i: jax.Array) -> jax.Array:
        e = jnp.zeros((d,), x.dtype).at[i].set(1.0).reshape(x.shape[1:])
        return jnp.reshape(jvp(jnp.broadcast_to(e, x.shape)), (x.shape[0], d))[:, i]

    entries = jax.lax.map(diagonal_entry, jnp.arange(d), batch_size=chunk_size or min(d, EXACT_CHUNK))
    return v, jnp.sum(entries, axis=0)


def hutchinson_divergence(
    vf: VectorField, t: jax.Array, x: jax.Array, probes: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(v(t, x), mean over probes of eps^T (dv/dx) eps) for probes of shape (K, *x.shape).

    Args:
        vf: the field `vf(t, x)`.
        t: the scalar time.
        x: (batch, ...) points.
        probes: (K, batch, ...) probes with E[eps eps^T] = I.

    Returns:
        (v, div): v of the shape of x, the estimated divergence of shape (batch,).
    """
    v, jvp = jax.linearize(lambda y: vf(t, y), x)
    probes = probes.astype(x.dtype)  # the solver may have promoted the state (e.g. bf16 -> f32)
    quad = jax.vmap(lambda eps: jnp.sum(jnp.reshape(eps * jvp(eps), (x.shape[0], -1)), axis=-1))(probes)
    return v, jnp.mean(quad, axis=0)


def _probes(key: jax.Array, kind: str, num: int, x: jax.Array) -> jax.Array:
    shape = (num, *x.shape)
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, x.dtype)
    return jax.random.normal(key, shape, x.dtype)


def log_likelihood(
    vf: VectorField,
    x: jax.Array,
    source_log_prob: Callable[[jax.Array], jax.Array] = standard_normal_log_prob,
    divergence: str = "exact",
    *,
    key: jax.Array | None = None,
    num_probes: int = 1,
    probe: str = "rademacher",
    t: float = 1.0,
    solver: str | diffrax.AbstractSolver | SolverSpec = "dopri5",
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    chunk_size: int | None = None,
    max_steps: int = 16384,
) -> LogLikelihood:
    """log p_t(x) of the flow of `vf` for a batch x at time t (the data, t = 1, by default).

    `source_log_prob(x0) -> (batch,)` is the log-density at t = 0. `divergence` is "exact" or
    "hutchinson"; Hutchinson needs `key`, and draws `num_probes` probes of kind `probe`
    ("rademacher" or "gaussian"). The solve is adaptive at `solvers.DEFAULT_TOL` unless a
    `SolverSpec`, `steps` or tolerances say otherwise (see `solvers.sample`). `t` is a Python float (static).
    Traceable: call it under `jax.jit`, e.g. `jax.jit(lambda x: log_likelihood(vf, x))`.

    Args:
        vf: the field `vf(t, x)` of the flow.
        x: (batch, ...) points at time t.
        chunk_size: basis vectors per forward-mode batch of the exact divergence.
        max_steps: the most steps an adaptive solve may take.
        The others as above.

    Returns:
        The `LogLikelihood`: log p_t(x) of shape (batch,), x0, delta, the NFE and the steps taken.
    """
    call = "log_likelihood(vf, x, source_log_prob, divergence, key=..., ...)"
    check_callable(vf, "vf", "the field vf(t, x) -> dx/dt", call)
    check_batch_array(x, "x", call, min_ndim=2)
    if not callable(source_log_prob):
        raise ValueError(f"source_log_prob must be a function x0 -> (batch,) log-densities, got {source_log_prob!r}.")
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {DIVERGENCES}.")
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("divergence='hutchinson' draws random probes: pass key=jax.random.key(seed).")
        check_key(key, "key", call)
        if probe not in PROBES:
            raise ValueError(f"Unknown probe {probe!r}; choose one of {PROBES}.")
        if int(num_probes) < 1:
            raise ValueError(f"num_probes must be a positive integer, got {num_probes}.")
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"t must be a Python float in (0, 1] (it is static), got {t!r}.")
    if not 0.0 < float(t) <= 1.0:
        raise ValueError(f"t must lie in (0, 1], got {t}: the log-density at t = 0 is source_log_prob itself.")

    if divergence == "exact":
        div = lambda s, y: exact_divergence(vf, s, y, chunk_size)
    else:
        probes = _probes(key, probe, int(num_probes), x)  # key checked above
        div = lambda s, y: hutchinson_divergence(vf, s, y, probes)

    def augmented(s: jax.Array, state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        y, _ = state
        return div(s, y)

    delta0 = jnp.zeros(x.shape[:1], x.dtype)
    sol = encode(
        augmented,
        (x, delta0),
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        t0=float(t),
        t1=0.0,
        max_steps=max_steps,
    )
    x0, delta = sol.x
    return LogLikelihood(log_prob=source_log_prob(x0) + delta, x0=x0, delta=delta, nfe=sol.nfe, num_steps=sol.num_steps)


def bits_per_dim(log_prob: jax.Array, num_dims: int, log_scale: float = 0.0) -> jax.Array:
    """-log2 of the density per dimension, in the data's own units.

    `log_scale` is log |dz/dy| per dimension for a model of z = scale * y + shift: the data
    density is p_y = p_z scale^D, so bits/dim = -(log p_z + D log_scale) / (D ln 2).

    Args:
        log_prob: log p_z in nats, any shape.
        num_dims: D, the dimensions per example.
        log_scale: as above.

    Returns:
        The bits per dimension, of the shape of log_prob.
    """
    return -(log_prob + num_dims * log_scale) / (num_dims * math.log(2.0))


def dequantized_bits_per_dim(
    key: jax.Array,
    log_prob_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    num_samples: int = 1,
    num_levels: int = 256,
    low: float = -1.0,
    high: float = 1.0,
    estimator: str = "mean",
) -> jax.Array:
    """Bits/dim of integer data x in {0, ..., num_levels - 1} under uniform dequantization, per example.

    Each of `num_samples` draws u ~ U[0, 1) gives z = low + (high - low) (x + u) / num_levels
    and the log-density log p_y = log_prob_fn(z) + D log((high - low) / num_levels) of y = x + u.
    `estimator="mean"` averages the bits over the draws (the usual published figure, an upper
    bound on the discrete code length in expectation); "logmeanexp" averages the densities
    (a tighter bound that approaches the discrete likelihood as num_samples grows).

    Args:
        key: the key of the dequantization noise (first, as in every function that draws).
        log_prob_fn: `log_prob_fn(z) -> (batch,)` log-densities of the model.
        x: (batch, ...) integer levels.
        num_samples, num_levels, estimator: as above.
        low, high: the interval the model's z spans.

    Returns:
        (batch,) bits per dimension.
    """
    call = "dequantized_bits_per_dim(key, log_prob_fn, x, ...)"
    check_key(key, "key", call)
    check_callable(log_prob_fn, "log_prob_fn", "a function z -> (batch,) log-densities", call)
    check_batch_array(x, "x", call, floating=False)
    if estimator not in ("mean", "logmeanexp"):
        raise ValueError(f"Unknown estimator {estimator!r}; choose 'mean' or 'logmeanexp'.")
    if jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x must hold integer levels 0..{num_levels - 1} (got dtype {x.dtype}); dequantization adds the noise."
        )
    d = _flat_dim(x)
    log_scale = math.log((high - low) / num_levels)

    def one_draw(k: jax.Array) -> jax.Array:
        u = jax.random.uniform(k, x.shape)
        z = low + (high - low) * (x.astype(u.dtype) + u) / num_levels
        return log_prob_fn(z) + d * log_scale

    log_p = jax.lax.map(one_draw, jax.random.split(key, int(num_samples)))
    if estimator == "logmeanexp":
        log_p = jax.nn.logsumexp(log_p, axis=0, keepdims=True) - math.log(int(num_samples))
    return jnp.mean(bits_per_dim(log_p, d), axis=0)
