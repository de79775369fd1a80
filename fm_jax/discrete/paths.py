"""Mixture paths over tokens: schedulers kappa(t), sources, x_t, and the probability velocity.

A sequence of L tokens takes values in {0, ..., K-1}; the masked source adds the mask token,
id K. The mixture path (Gat et al. 2024, Sec. 2.3; Campbell et al. 2024, Sec. 3.2) moves
each token independently from its source value x0^i to its data value x1^i:

    p_t(x^i | x0, x1) = (1 - kappa(t)) delta_{x0^i}(x^i) + kappa(t) delta_{x1^i}(x^i),

with a scheduler kappa increasing from kappa(0) = 0 to kappa(1) = 1. Its conditional
probability velocity, u_t(y | x, x1) = kappa'(t) / (1 - kappa(t)) (delta_{x1}(y) - delta_x(y)),
generates it for any source; its expectation under the posterior p_{1|t}(x1^i | x_t),

    u_t^i(y | x_t) = kappa'(t) / (1 - kappa(t)) (p_{1|t}(y | x_t) - delta_{x_t^i}(y)),

generates the marginal path (Gat et al. 2024, Thm. 3 for the factorized velocity). Each row
sums to zero over y and is non-negative off the diagonal: it is a rate matrix row. A network
that predicts the posterior (logits over the K data tokens) therefore defines the sampler.

Sources: "mask" (every x0 is the mask token; Shi et al. 2024, Sahoo et al. 2024 call this
masked diffusion), "uniform" (x0 uniform over the K tokens), "data" (x0 given, e.g. another
data set: the path then runs data to data). With the masked source the true posterior
carries unmasked tokens over (x1^i = x_t^i wherever x_t^i is not the mask), and
`posterior_probs` imposes that on a network's prediction.

Schedulers and paths are frozen dataclasses: they hash and compare by value, so a path can be
a static argument of `jax.jit`; kappa' comes from forward-mode autodiff.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from fm_jax.registry import Registry

__all__ = [
    "SCHEDULERS",
    "SOURCES",
    "Cosine",
    "MixturePath",
    "Polynomial",
    "Scheduler",
    "log_posterior",
    "posterior_probs",
]

SOURCES = ("mask", "uniform", "data")


@dataclasses.dataclass(frozen=True)
class Scheduler:
    """kappa(t): the probability that a token has reached its data value by time t."""

    def __call__(self, t: jax.Array) -> jax.Array:
        raise NotImplementedError

    def inverse(self, kappa: jax.Array) -> jax.Array:
        """The time at which the scheduler reaches `kappa` (for drawing each token's jump time)."""
        raise NotImplementedError

    def derivative(self, t: jax.Array) -> jax.Array:
        """kappa'(t), by forward-mode autodiff."""
        t = jnp.asarray(t, jnp.result_type(float))
        return jax.jvp(self.__call__, (t,), (jnp.ones_like(t),))[1]


SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler", fold_case=True)


@SCHEDULERS.register("polynomial")
@dataclasses.dataclass(frozen=True)
class Polynomial(Scheduler):
    """kappa(t) = t^n (n = 1: the linear scheduler; Gat et al. 2024 use n = 2 and 3 on code and text)."""

    n: float = 1.0

    def __post_init__(self) -> None:
        if not self.n > 0:
            raise ValueError(f"Polynomial scheduler exponent n must be positive, got {self.n}.")

    def __call__(self, t: jax.Array) -> jax.Array:
        return jnp.asarray(t, jnp.result_type(float)) ** self.n

    def inverse(self, kappa: jax.Array) -> jax.Array:
        return jnp.asarray(kappa, jnp.result_type(float)) ** (1.0 / self.n)


@SCHEDULERS.register("cosine")
@dataclasses.dataclass(frozen=True)
class Cosine(Scheduler):
    """kappa(t) = 1 - cos(pi t / 2): slow to leave the source, fast to reach the data."""

    def __call__(self, t: jax.Array) -> jax.Array:
        return 1.0 - jnp.cos(0.5 * math.pi * jnp.asarray(t, jnp.result_type(float)))

    def inverse(self, kappa: jax.Array) -> jax.Array:
        return jnp.arccos(1.0 - jnp.asarray(kappa, jnp.result_type(float))) / (0.5 * math.pi)


def _onehot(x: jax.Array, n: int) -> jax.Array:
    return jax.nn.one_hot(x, n, dtype=jnp.float32)


@dataclasses.dataclass(frozen=True)
class MixturePath:
    """The mixture path from a source to the data over K tokens (the module docstring).

    Args:
        vocab_size: K, the number of data tokens.
        source: "mask", "uniform" or "data" (`SOURCES`).
        scheduler: kappa(t); linear (`Polynomial(1.0)`) by default.
    """

    vocab_size: int
    source: str = "mask"
    scheduler: Scheduler = Polynomial(1.0)

    def __post_init__(self) -> None:
        if not (isinstance(self.vocab_size, int) and self.vocab_size >= 2):
            raise ValueError(f"vocab_size must be an integer of at least 2, got {self.vocab_size!r}.")
        if self.source not in SOURCES:
            raise ValueError(f"Unknown source {self.source!r}; choose one of {list(SOURCES)}.")

    @property
    def mask_id(self) -> int:
        """The mask token's id, K (only tokens of the masked source take it)."""
        return self.vocab_size

    @property
    def num_states(self) -> int:
        """The values a token of x_t takes: K + 1 with the mask, else K (a network's input vocabulary)."""
        return self.vocab_size + (self.source == "mask")

    def draw_source(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """x0 of the "mask" or "uniform" source, int32 tokens of `shape` (a "data" source is given)."""
        if self.source == "mask":
            return jnp.full(shape, self.mask_id, jnp.int32)
        if self.source == "uniform":
            return jax.random.randint(key, shape, 0, self.vocab_size, jnp.int32)
        raise ValueError('A "data" source draws nothing: pass x0 (batch["x0"]) from the source data set.')

    def sample(self, key: jax.Array, x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
        """x_t: each token is x1^i with probability kappa(t), else x0^i; x0, x1 (batch, ...), t (batch,)."""
        kappa = self.scheduler(t).reshape(t.shape + (1,) * (x1.ndim - 1))
        return jnp.where(jax.random.uniform(key, x1.shape) < kappa, x1, x0).astype(jnp.int32)

    def jump_coefficient(self, t: jax.Array) -> jax.Array:
        """kappa'(t) / (1 - kappa(t)): the rate at which a token not yet at x1 jumps to it."""
        return self.scheduler.derivative(t) / (1.0 - self.scheduler(t))

    def velocity(self, t: jax.Array, x_t: jax.Array, probs: jax.Array) -> jax.Array:
        """The probability velocity u_t(y | x_t), (batch, L, num_states), from posterior probabilities
        p_{1|t}(y | x_t), (batch, L, K) (`posterior_probs`); t (batch,)."""
        rate = self.jump_coefficient(t).reshape(t.shape + (1,) * (x_t.ndim))
        pad = self.num_states - self.vocab_size  # the mask is never a data value: p_{1|t}(mask) = 0
        p = jnp.pad(probs, [(0, 0)] * (probs.ndim - 1) + [(0, pad)])
        return rate * (p - _onehot(x_t, self.num_states))

    def jump_probability(self, t: jax.Array, t_next: jax.Array) -> jax.Array:
        """The probability that a token not yet at its data value jumps over [t, t_next] when the
        posterior is held fixed: the rate integrated exactly, (kappa(t_next) - kappa(t)) / (1 - kappa(t)),
        which h kappa'(t) / (1 - kappa(t)) approximates to first order and which is 1 when t_next = 1."""
        k, k_next = self.scheduler(t), self.scheduler(t_next)
        return jnp.clip((k_next - k) / jnp.maximum(1.0 - k, 1e-12), 0.0, 1.0)


def posterior_probs(path: MixturePath, logits: jax.Array, x_t: jax.Array) -> jax.Array:
    """p_{1|t}(y | x_t), (batch, L, K), from a network's logits (batch, L, K): softmax, and with the
    masked source the unmasked tokens carried over (their posterior is delta_{x_t^i})."""
    if logits.shape[-1] != path.vocab_size or logits.shape[:-1] != x_t.shape:
        raise ValueError(
            f"The posterior must return logits of shape {(*x_t.shape, path.vocab_size)} (batch, length, K) "
            f"for tokens x_t of shape {x_t.shape}; got {logits.shape}."
        )
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if path.source != "mask":
        return probs
    unmasked = (x_t != path.mask_id)[..., None]
    return jnp.where(unmasked, _onehot(jnp.minimum(x_t, path.vocab_size - 1), path.vocab_size), probs)


def log_posterior(path: MixturePath, logits: jax.Array, x_t: jax.Array) -> jax.Array:
    """log p_{1|t}(y | x_t) as `posterior_probs`, computed in log space (-inf where it is 0)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if path.source != "mask":
        return logp
    unmasked = (x_t != path.mask_id)[..., None]
    carried = jnp.where(_onehot(jnp.minimum(x_t, path.vocab_size - 1), path.vocab_size) > 0, 0.0, -jnp.inf)
    return jnp.where(unmasked, carried, logp)
