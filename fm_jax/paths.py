"""Gaussian probability paths: x_t, the conditional velocity u_t, and prediction conversions.

Every path here is one instance of the general Gaussian interpolant

    x_t = a(t) x0 + b(t) x1 + g(t) z,        u_t = a'(t) x0 + b'(t) x1 + g'(t) z,

with x0 the source sample, x1 the data sample and z ~ N(0, I) independent of both
(Albergo & Vanden-Eijnden 2023, eq. 2.1; Tong et al. 2024, Sec. 3). Time runs from the
source (t = 0) to the data (t = 1). The schedules a, b, g are scalar functions of t; their
time derivatives come from JAX forward-mode autodiff, never from hand-written formulas.

A path is a frozen dataclass: two paths with the same parameters compare equal and hash
equal, so a path can be a static argument of `jax.jit` without recompiling. To define a
new path, subclass `GaussianPath` and implement `a`, `b` and (if not zero) `g`.

Prediction conversions (`GaussianPath.convert`) relate the four quantities a network may
be trained to predict at (t, x_t): the velocity E[u_t | x_t], the data E[x1 | x_t], the
noise E[eps | x_t] and the score grad log p_t(x_t). They rest on the pointwise identity

    x_t = b(t) x1 + s(t) eps,    s(t) = sqrt(a(t)^2 + g(t)^2),   eps = (a x0 + g z) / s,

and on E[a' x0 + g' z | x_t] = s' E[eps | x_t]. The second holds for every coupling when
g = 0 (then eps = x0, the "x0-prediction"), and for g != 0 when x0 ~ N(0, I) is drawn
independently of x1. The score conversion, score = -E[eps | x_t] / s, needs a standard
normal source drawn independently of x1 (Lipman et al. 2023; Song et al. 2021).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from fm_jax.registry import Registry

if TYPE_CHECKING:
    from collections.abc import Callable

# How far a loss keeps t from an end where the path's velocity is singular (`GaussianPath.t_range`).
SINGULAR_END_MARGIN = 1e-5

__all__ = [
    "PREDICTIONS",
    "BrownianBridge",
    "CondOT",
    "Cosine",
    "GaussianPath",
    "ICFM",
    "LinearVP",
    "PathSample",
    "Polynomial",
    "Trigonometric",
    "VEDiffusion",
    "VPDiffusion",
    "PATHS",
    "get_path",
]

PREDICTIONS = ("velocity", "x1", "eps", "score")


class PathSample(NamedTuple):
    """One draw from a path: times, the point x_t, its conditional velocity u_t, the noise z."""

    t: jax.Array
    x_t: jax.Array
    u_t: jax.Array
    z: jax.Array


def _expand(c: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a per-example coefficient of shape (batch,) against x of shape (batch, ...)."""
    c = jnp.asarray(c, x.dtype)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _value_and_derivative(fn: Callable[[jax.Array], jax.Array], t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """fn(t) and d fn / dt for an elementwise schedule, by forward-mode autodiff."""
    t = jnp.asarray(t, jnp.result_type(float))
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))


@dataclasses.dataclass(frozen=True)
class GaussianPath:
    """x_t = a(t) x0 + b(t) x1 + g(t) z. Subclasses define the schedules a, b and g."""

    def a(self, t: jax.Array) -> jax.Array:
        """Coefficient of the source sample x0: a(t) elementwise, for times t of any shape."""
        raise NotImplementedError

    def b(self, t: jax.Array) -> jax.Array:
        """Coefficient of the data sample x1: b(t) elementwise, for times t of any shape."""
        raise NotImplementedError

    def g(self, t: jax.Array) -> jax.Array:
        """Standard deviation of the extra noise z: g(t) elementwise (zero unless overridden), for t of any shape."""
        return jnp.zeros_like(t)

    @property
    def has_noise(self) -> bool:
        """Whether g is not identically zero; paths without noise skip z entirely."""
        return type(self).g is not GaussianPath.g

    @property
    def t_range(self) -> tuple[float, float]:
        """The times a loss trains on: [0, 1], less an end where a schedule's derivative is
        singular (u_t is infinite there, and U[0, 1) draws t = 0 once in ~10^7 draws)."""
        return (0.0, 1.0)

    # -- schedules and their derivatives -------------------------------------------------
    def coefficients(
        self, t: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
        """(a, b, g) and their time derivatives (a', b', g') at t, by autodiff.

        Args:
            t: times, any shape.

        Returns:
            ((a, b, g), (a', b', g')), each of the shape of t.
        """
        a, da = _value_and_derivative(self.a, t)
        b, db = _value_and_derivative(self.b, t)
        g, dg = _value_and_derivative(self.g, t)
        return (a, b, g), (da, db, dg)

    def noise_scale(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """s(t) = sqrt(a^2 + g^2), the std of x_t around b(t) x1 for a N(0, I) source, and s'(t).

        Without noise s = a and s' = a' (schedules keep a >= 0), finite even where a = 0;
        with noise s' = (a a' + g g') / s, since autodiff through the square root would
        give 0 / 0 wherever s vanishes.

        Args:
            t: times, any shape.

        Returns:
            (s, s'), each of the shape of t.
        """
        (a, _, g), (da, _, dg) = self.coefficients(t)
        if not self.has_noise:
            return a, da
        s = jnp.sqrt(a**2 + g**2)
        return s, (a * da + g * dg) / s

    # -- sampling ------------------------------------------------------------------------
    def interpolate(
        self, t: jax.Array, x0: jax.Array, x1: jax.Array, z: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Deterministic (x_t, u_t) for times t of shape (batch,). z is required iff has_noise.

        Args:
            t: (batch,) times.
            x0: (batch, ...) source samples.
            x1: (batch, ...) data samples, of the shape of x0.
            z: (batch, ...) standard normal noise; required iff `has_noise`.

        Returns:
            (x_t, u_t), each of the shape of x1.
        """
        t = jnp.asarray(t)
        if t.ndim != 1 or t.shape[0] != x1.shape[0]:
            raise ValueError(
                f"t must have shape (batch,) = ({x1.shape[0]},), got {t.shape}; draw one time per example."
            )
        if x0.shape != x1.shape:
            raise ValueError(f"x0 and x1 must have the same shape, got {x0.shape} and {x1.shape}.")
        (a, b, g), (da, db, dg) = self.coefficients(t)
        x_t = _expand(a, x0) * x0 + _expand(b, x1) * x1
        u_t = _expand(da, x0) * x0 + _expand(db, x1) * x1
        if self.has_noise:
            if z is None:
                raise ValueError(f"{type(self).__name__} has noise g(t) != 0: pass z ~ N(0, I).")
            x_t = x_t + _expand(g, z) * z
            u_t = u_t + _expand(dg, z) * z
        return x_t, u_t

    def sample(self, key: jax.Array, x0: jax.Array, x1: jax.Array, t: jax.Array) -> PathSample:
        """Draw z ~ N(0, I) (when the path has noise) and return (t, x_t, u_t, z).

        Args:
            key: the key of z.
            x0: (batch, ...) source samples.
            x1: (batch, ...) data samples.
            t: (batch,) times.

        Returns:
            The `PathSample`; z is zeros when the path has no noise.
        """
        z = jax.random.normal(key, x1.shape, x1.dtype) if self.has_noise else jnp.zeros_like(x1)
        x_t, u_t = self.interpolate(t, x0, x1, z)
        return PathSample(jnp.asarray(t), x_t, u_t, z)

    def eps(self, t: jax.Array, x0: jax.Array, z: jax.Array | None = None) -> jax.Array:
        """The noise eps = (a x0 + g z) / s, the regression target of an eps-prediction.

        Args:
            t: (batch,) times.
            x0: (batch, ...) source samples.
            z: (batch, ...) the noise of `interpolate`; required iff `has_noise`.

        Returns:
            eps, of the shape of x0.
        """
        (a, _, g), _ = self.coefficients(t)
        s, _ = self.noise_scale(t)
        noise = _expand(a, x0) * x0
        if self.has_noise:
            # z is required iff has_noise, a precondition mypy cannot follow through the property.
            noise = noise + _expand(g, z) * z  # type: ignore[arg-type, operator]
        return noise / _expand(s, x0)

    # -- conversions between predictions -------------------------------------------------
    def convert(self, pred: jax.Array, t: jax.Array, x_t: jax.Array, src: str, dst: str) -> jax.Array:
        """Convert a prediction at (t, x_t) between 'velocity', 'x1', 'eps' and 'score'.

        With s = sqrt(a^2 + g^2): x_t = b x1_hat + s eps_hat, v = b' x1_hat + s' eps_hat,
        score = -eps_hat / s. Each direction is the exact inverse of the other; the
        conversions are singular where b = 0 (x1 from eps, t = 0), where s = 0 (eps from
        x1, t = 1 when sigma_min = 0) or where b' s - s' b = 0. See the module docstring
        for when they hold.

        Args:
            pred: (batch, ...) the prediction to convert.
            t: (batch,) times.
            x_t: (batch, ...) the points the prediction was made at.
            src: what `pred` is, one of `PREDICTIONS`.
            dst: what to convert it to, one of `PREDICTIONS`.

        Returns:
            The `dst` prediction, of the shape of x_t.
        """
        for name in (src, dst):
            if name not in PREDICTIONS:
                raise ValueError(f"Unknown prediction {name!r}; choose one of {PREDICTIONS}.")
        if src == dst:
            return pred
        (_, b, _), (_, db, _) = self.coefficients(t)
        s, ds = self.noise_scale(t)
        b, db, s, ds = (_expand(c, x_t) for c in (b, db, s, ds))
        # Everything passes through the pair (x1_hat, eps_hat).
        if src == "x1":
            x1_hat = pred
            eps_hat = (x_t - b * pred) / s
        elif src == "eps":
            eps_hat = pred
            x1_hat = (x_t - s * pred) / b
        elif src == "score":
            eps_hat = -s * pred
            x1_hat = (x_t - s * eps_hat) / b
        else:  # velocity: v = b' x1 + s' (x_t - b x1) / s  =>  x1 = (s v - s' x_t) / (b' s - s' b)
            x1_hat = (s * pred - ds * x_t) / (db * s - ds * b)
            eps_hat = (x_t - b * x1_hat) / s
        if dst == "x1":
            return x1_hat
        if dst == "eps":
            return eps_hat
        if dst == "score":
            return -eps_hat / s
        return db * x1_hat + ds * eps_hat


@dataclasses.dataclass(frozen=True)
class CondOT(GaussianPath):
    """Conditional optimal-transport path (Lipman et al. 2023, eq. 20).

    mu_t = t x1, sigma_t = 1 - (1 - sigma_min) t:  x_t = (1 - (1 - sigma_min) t) x0 + t x1,
    u_t = x1 - (1 - sigma_min) x0. At t = 1, x_t = x1 + sigma_min x0.
    """

    sigma_min: float = 0.0

    def a(self, t: jax.Array) -> jax.Array:
        return 1.0 - (1.0 - self.sigma_min) * t

    def b(self, t: jax.Array) -> jax.Array:
        return t


@dataclasses.dataclass(frozen=True)
class ICFM(GaussianPath):
    """Independent CFM path (Tong et al. 2024, eq. 14): x_t = (1 - t) x0 + t x1 + sigma z, u_t = x1 - x0."""

    sigma: float = 0.0

    def a(self, t: jax.Array) -> jax.Array:
        return 1.0 - t

    def b(self, t: jax.Array) -> jax.Array:
        return t

    def g(self, t: jax.Array) -> jax.Array:
        return jnp.full_like(t, self.sigma)

    @property
    def has_noise(self) -> bool:
        return self.sigma != 0.0


@dataclasses.dataclass(frozen=True)
class BrownianBridge(GaussianPath):
    """Brownian-bridge path of SB-CFM (Tong et al. 2024, Prop. 3.4 / eq. 21).

    x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) z,
    u_t = x1 - x0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) z, singular at t in {0, 1}.
    Pair it with `couplings.SchrodingerBridge(sigma)` (entropic OT with eps = 2 sigma^2).
    """

    sigma: float = 1.0

    def a(self, t: jax.Array) -> jax.Array:
        return 1.0 - t

    def b(self, t: jax.Array) -> jax.Array:
        return t

    def g(self, t: jax.Array) -> jax.Array:
        return self.sigma * jnp.sqrt(t * (1.0 - t))

    @property
    def has_noise(self) -> bool:
        return self.sigma != 0.0

    @property
    def t_range(self) -> tuple[float, float]:
        return (SINGULAR_END_MARGIN, 1.0 - SINGULAR_END_MARGIN) if self.has_noise else (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Trigonometric(GaussianPath):
    """Trigonometric interpolant (Albergo & Vanden-Eijnden 2023, Sec. 3.1; Tong et al.'s VP-CFM).

    x_t = cos(pi t / 2) x0 + sin(pi t / 2) x1 (+ sigma z for VP-CFM with sigma > 0).
    """

    sigma: float = 0.0

    def a(self, t: jax.Array) -> jax.Array:
        return jnp.cos(0.5 * math.pi * t)

    def b(self, t: jax.Array) -> jax.Array:
        return jnp.sin(0.5 * math.pi * t)

    def g(self, t: jax.Array) -> jax.Array:
        return jnp.full_like(t, self.sigma)

    @property
    def has_noise(self) -> bool:
        return self.sigma != 0.0


@dataclasses.dataclass(frozen=True)
class VPDiffusion(GaussianPath):
    """Variance-preserving diffusion path (Lipman et al. 2023, eq. 19; Song et al. 2021).

    With T(s) = beta_min s + (beta_max - beta_min) s^2 / 2 and alpha_s = exp(-T(s) / 2),
    mu_t = alpha_{1-t} x1 and sigma_t = sqrt(1 - alpha_{1-t}^2): x_t = sigma_t x0 + alpha_{1-t} x1.
    The source end is only approximately noise: b(0) = exp(-(beta_min + beta_max) / 4) (~0.0066).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def _alpha(self, t: jax.Array) -> jax.Array:
        s = 1.0 - t
        return jnp.exp(-0.5 * (self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2))

    def a(self, t: jax.Array) -> jax.Array:
        return jnp.sqrt(1.0 - self._alpha(t) ** 2)

    def b(self, t: jax.Array) -> jax.Array:
        return self._alpha(t)


@dataclasses.dataclass(frozen=True)
class VEDiffusion(GaussianPath):
    """Variance-exploding diffusion path (Lipman et al. 2023, eq. 18; Song et al. 2021).

    sigma_s = sigma_min (sigma_max / sigma_min)^s, x_t = x1 + sigma_{1-t} x0: at t = 0 the
    source is N(x1, sigma_max^2 I), approximately N(0, sigma_max^2 I) for a large sigma_max;
    at t = 1, x_t = x1 + sigma_min x0.
    """

    sigma_min: float = 0.01
    sigma_max: float = 80.0

    def a(self, t: jax.Array) -> jax.Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (1.0 - t)

    def b(self, t: jax.Array) -> jax.Array:
        return jnp.ones_like(t)


@dataclasses.dataclass(frozen=True)
class Cosine(GaussianPath):
    """Cosine schedule (Nichol & Dhariwal 2021) mapped to t = 0 source, t = 1 data.

    With f(s) = cos^2((s + offset) / (1 + offset) * pi / 2) and abar(s) = f(s) / f(0):
    x_t = sqrt(1 - abar(1 - t)) x0 + sqrt(abar(1 - t)) x1. Exact endpoints; a' is singular at t = 1.
    """

    offset: float = 0.008

    def _abar(self, t: jax.Array) -> jax.Array:
        f = lambda s: jnp.cos((s + self.offset) / (1.0 + self.offset) * 0.5 * math.pi) ** 2
        return jnp.clip(f(1.0 - t) / f(0.0), 0.0, 1.0)

    def a(self, t: jax.Array) -> jax.Array:
        return jnp.sqrt(1.0 - self._abar(t))

    def b(self, t: jax.Array) -> jax.Array:
        return jnp.sqrt(self._abar(t))

    @property
    def t_range(self) -> tuple[float, float]:
        return (0.0, 1.0 - SINGULAR_END_MARGIN)


@dataclasses.dataclass(frozen=True)
class LinearVP(GaussianPath):
    """Linear variance-preserving schedule: x_t = sqrt(1 - t^2) x0 + t x1 (a^2 + b^2 = 1)."""

    def a(self, t: jax.Array) -> jax.Array:
        return jnp.sqrt(1.0 - t**2)

    def b(self, t: jax.Array) -> jax.Array:
        return t


@dataclasses.dataclass(frozen=True)
class Polynomial(GaussianPath):
    """Polynomial (convex) schedule: x_t = (1 - t^n) x0 + t^n x1; n = 1 is the linear interpolant."""

    n: float = 2.0

    def a(self, t: jax.Array) -> jax.Array:
        return 1.0 - t**self.n

    def b(self, t: jax.Array) -> jax.Array:
        return t**self.n


# The paths by class name, case-insensitive.
PATHS: Registry[type[GaussianPath]] = Registry(
    "path",
    {
        cls.__name__: cls
        for cls in (CondOT, ICFM, BrownianBridge, Trigonometric, VPDiffusion, VEDiffusion, Cosine, LinearVP, Polynomial)
    },
    fold_case=True,
)


def get_path(name: str, **params: float) -> GaussianPath:
    """A path from its class name, case-insensitive (`PATHS`): `get_path("condot", sigma_min=1e-4)`.

    Args:
        name: the class name, e.g. "condot".
        **params: the path's fields.

    Returns:
        The path; a ValueError names the fields for a parameter the path does not have.
    """
    cls = PATHS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - fields
    if unknown:
        raise ValueError(f"{cls.__name__} has no parameter(s) {sorted(unknown)}; it takes {sorted(fields)}.")
    return cls(**params)
