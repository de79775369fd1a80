"""The likelihood bound of masked discrete flows: the continuous-time ELBO.

For the mixture path from the masked source, -log p_theta(x1) of the model's exact sampler is
bounded by (Shi et al. 2024, eq. 5; Sahoo et al. 2024, eq. 10; time reversed to this
library's convention, the data at t = 1)

    -log p_theta(x1) <= int_0^1 kappa'(t) / (1 - kappa(t)) E_{x_t ~ p_t(. | x1)}
                        [ sum_{i : x_t^i = mask} -log p_theta(x1^i | x_t) ] dt,

a weighted cross-entropy of the masked tokens. It does not depend on the scheduler (the
substitution s = kappa(t) removes it), and with the true posterior of a factorized target
it equals -log p(x1) exactly. It bounds the likelihood of the exact unmasking sampler
(`sampling`, "unmask"), which reveals tokens in a uniformly random order; it is valid for the
masked source only (for the uniform source the bound has other terms).

`elbo` estimates it per sequence with `num_times` stratified times t_j = (j + u) / M, one
masking of x1 each, in nats; `bits_per_token` divides by L log 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fm_jax.discrete.paths import MixturePath, log_posterior

__all__ = ["bits_per_token", "elbo"]


def elbo(
    posterior: Callable[[jax.Array, jax.Array], jax.Array],
    x1: jax.Array,
    path: MixturePath,
    key: jax.Array,
    num_times: int = 16,
) -> jax.Array:
    """The ELBO bound on -log p(x1) in nats, (batch,), from `num_times` stratified time draws.

    Args:
        posterior: `posterior(t, x_t) -> logits (batch, L, K)`.
        x1: (batch, L) int data tokens.
        path: a mixture path with the masked source.
        key: the key of the times and maskings.
        num_times: M, the time draws per sequence (one posterior call each).
    """
    if path.source != "mask":
        raise ValueError(f"The ELBO here is that of the masked source; this path's source is {path.source!r}.")
    if not (isinstance(num_times, int) and num_times >= 1):
        raise ValueError(f"num_times must be a positive integer, got {num_times!r}.")
    x1 = jnp.asarray(x1, jnp.int32)
    batch = x1.shape[0]
    k_u, k_mask = jax.random.split(key)
    u = jax.random.uniform(k_u, (batch,))
    x0 = path.draw_source(k_mask, x1.shape)

    def term(j: jax.Array, total: jax.Array) -> jax.Array:
        t = (j + u) / num_times
        x_t = path.sample(jax.random.fold_in(k_mask, j), x0, x1, t)
        logp = log_posterior(path, posterior(t, x_t), x_t)
        logp_x1 = jnp.take_along_axis(logp, x1[..., None], axis=-1)[..., 0]
        masked = x_t == path.mask_id
        nll = -jnp.sum(jnp.where(masked, logp_x1, 0.0), axis=-1)
        return total + path.jump_coefficient(t) * nll

    return jax.lax.fori_loop(0, num_times, term, jnp.zeros(batch)) / num_times


def bits_per_token(nats: jax.Array, length: int) -> jax.Array:
    """Nats per sequence as bits per token (bits/dim for images of L pixels)."""
    return nats / (length * math.log(2.0))
