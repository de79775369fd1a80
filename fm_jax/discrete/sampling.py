"""Samplers of discrete flows, with the network calls counted.

`sample(posterior, x0, path, key, steps=N, method=..., corrector=eta)` draws tokens at t = 1
(or at any t1 < 1: the path's marginal there) from tokens x0 at t = 0, where `posterior(t, x_t) -> logits (batch, L, K)` predicts
p_{1|t}(x1 | x_t) (a trained network, or an exact posterior in the tests). Returns
`DiscreteSample(x1, nfe)`.

- "euler" (Gat et al. 2024, Sec. 2.4; Campbell et al. 2024, Alg. 1): N steps on the uniform
  grid t_k = k / N. With the posterior held fixed over a step, a token not yet at its data
  value jumps with probability (kappa(t_{k+1}) - kappa(t_k)) / (1 - kappa(t_k)) (the rate
  kappa' / (1 - kappa) integrated over the step; `MixturePath.jump_probability`) to a token
  drawn from p_{1|t}(. | x_t), which may be its own value. Every token has jumped by the last
  step, whose probability is 1. NFE = N.
- The corrector (`corrector` = eta > 0, masked or uniform source; Gat et al. 2024, Sec. 2.5,
  with the backward velocity of Campbell et al. 2024's detailed-balance noise): the velocity
  (1 + eta) u_fwd - eta u_bwd, where for the mixture path p_t = (1 - kappa) p_0 + kappa
  delta_{x1} the forward velocity is kappa' / (1 - kappa) (delta_{x1} - delta_x) and the
  backward one kappa' / kappa (delta_x - p_0). Both satisfy the path's Kolmogorov equation, so
  the mix keeps the exact posterior's marginals at every t: the forward rate is scaled by
  1 + eta, and every token is redrawn from the source at rate eta kappa' / kappa (masked
  again; or a uniform token), which lets later, better informed steps revise early choices.
  The last step to t = 1 redraws nothing. NFE = N.
- "unmask" (masked source only): the exact sampler of the masked path. Each token draws its
  own reveal time tau_i with P(tau_i <= t) = kappa(t); tokens are revealed one at a time in
  the order of their times, each from the posterior given the tokens revealed before. With
  the true posterior the joint law of the result is exactly the data's. NFE = L.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fm_jax.discrete.paths import MixturePath, posterior_probs

__all__ = ["METHODS", "DiscreteSample", "guided_posterior", "sample"]

METHODS = ("euler", "unmask")
Posterior = Callable[[jax.Array, jax.Array], jax.Array]


class DiscreteSample(NamedTuple):
    """Tokens at t = 1 (batch, L) and the number of posterior (network) calls made."""

    x1: jax.Array
    nfe: jax.Array


def guided_posterior(
    network: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    null_label: int,
    guidance: float,
) -> Posterior:
    """Classifier-free guidance of a class-conditional posterior network, for `sample`.

    `network(t, x_t, labels) -> logits (batch, L, K)` is trained with label dropout, so it
    gives both p(x1 | x_t, c) and, with `null_label`, p(x1 | x_t). The guided posterior of each
    token is p_w ∝ p(. | x_t)^(1 - w) p(. | x_t, c)^w: logits l_null + w (l_c - l_null) before
    the softmax, the continuous side's convention (`fm_jax.solvers.velocity_field`): w = 1 is
    the conditional posterior, w = 0 the unconditional one, w > 1 sharpens towards the class.
    Guiding the normalized posterior (as classifier-free guidance of masked generative models
    does) rather than the rates (Nisonoff et al. 2024, whose geometric mean of rates is not
    normalized) keeps it a distribution, so every sampler here, "unmask" included, takes it.
    Both come from one network call on the batch stacked twice (one NFE, two examples' worth).
    """

    def posterior(t: jax.Array, x: jax.Array) -> jax.Array:
        batch = x.shape[0]
        cond = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))
        both = network(
            jnp.concatenate([t, t]), jnp.concatenate([x, x]), jnp.concatenate([cond, jnp.full_like(cond, null_label)])
        )
        log_cond = jax.nn.log_softmax(both[:batch], axis=-1)
        log_null = jax.nn.log_softmax(both[batch:], axis=-1)
        return log_null + guidance * (log_cond - log_null)

    return posterior


def _draw(key: jax.Array, probs: jax.Array) -> jax.Array:
    """One token per position from probabilities (..., K)."""
    return jax.random.categorical(key, jnp.log(jnp.maximum(probs, 1e-30)), axis=-1).astype(jnp.int32)


def _euler(
    posterior: Posterior, x0: jax.Array, path: MixturePath, key: jax.Array, steps: int, corrector: float, t1: float
) -> tuple[jax.Array, jax.Array]:
    batch = x0.shape[0]
    grid = jnp.linspace(0.0, t1, steps + 1)
    ends = t1 == 1.0  # the last step reaches the data: every token jumps, none is masked again

    def step(k: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, key = carry
        key, k_jump, k_draw, k_back = jax.random.split(key, 4)
        t, t_next = grid[k], grid[k + 1]
        probs = posterior_probs(path, posterior(jnp.full((batch,), t), x), x)
        last = (k == steps - 1) & ends
        eta = jnp.where(last, 0.0, corrector)
        kappa, kappa_next = path.scheduler(t), path.scheduler(t_next)
        # The forward rate c (1 + eta) integrated over the step: 1 - ((1 - kappa') / (1 - kappa))^(1 + eta).
        stay = jnp.clip((1.0 - kappa_next) / jnp.maximum(1.0 - kappa, 1e-12), 0.0, 1.0)
        p_jump = jnp.where(last, 1.0, 1.0 - stay ** (1.0 + eta))
        jump = jax.random.uniform(k_jump, x.shape) < p_jump
        new = jnp.where(jump, _draw(k_draw, probs), x)
        if corrector > 0:
            # The source redraw at rate eta kappa' / kappa, integrated over the step: 1 - (kappa /
            # kappa')^eta. A token that moved forward in this step keeps its move (the masked
            # source's: one masked before it; at t = 0 every token is redrawn, which leaves the
            # source's tokens as they are in law).
            p_back = 1.0 - (kappa / jnp.maximum(kappa_next, 1e-12)) ** eta
            back = jax.random.uniform(k_back, x.shape) < p_back
            moved = (x == path.mask_id) if path.source == "mask" else jump
            source = path.draw_source(jax.random.fold_in(k_back, 1), x.shape)
            new = jnp.where(back & ~moved, source, new)
        return new, key

    x, _ = jax.lax.fori_loop(0, steps, step, (x0, key))
    return x, jnp.asarray(steps, jnp.int32)


def _unmask(
    posterior: Posterior, x0: jax.Array, path: MixturePath, key: jax.Array, t1: float
) -> tuple[jax.Array, jax.Array]:
    batch, length = x0.shape
    k_times, k_draws = jax.random.split(key)
    # Each token's reveal time; tokens not masked in x0 count as revealed at t = 0.
    tau = path.scheduler.inverse(jax.random.uniform(k_times, x0.shape))
    tau = jnp.where(x0 == path.mask_id, tau, 0.0)
    order = jnp.argsort(tau, axis=-1)
    rows = jnp.arange(batch)

    def reveal(k: jax.Array, x: jax.Array) -> jax.Array:
        position = order[:, k]
        t = tau[rows, position]
        probs = posterior_probs(path, posterior(t, x), x)
        token = _draw(jax.random.fold_in(k_draws, k), probs[rows, position])
        reveal = (x[rows, position] == path.mask_id) & (t <= t1)  # a token due after t1 stays masked
        return x.at[rows, position].set(jnp.where(reveal, token, x[rows, position]))

    return jax.lax.fori_loop(0, length, reveal, x0), jnp.asarray(length, jnp.int32)


def sample(
    posterior: Posterior,
    x0: jax.Array,
    path: MixturePath,
    key: jax.Array,
    steps: int = 100,
    method: str = "euler",
    corrector: float = 0.0,
    t1: float = 1.0,
) -> DiscreteSample:
    """Tokens at t = t1 (1: the data) from tokens `x0` (batch, L) at t = 0 (the module docstring).

    Args:
        posterior: `posterior(t, x_t) -> logits (batch, L, K)`, t of shape (batch,).
        x0: (batch, L) int tokens from the path's source (`MixturePath.draw_source`).
        path: the mixture path.
        key: the key of the jumps and draws.
        steps: "euler": the number of steps N (the NFE); "unmask" makes L calls whatever it is.
        method: "euler" or "unmask" (`METHODS`).
        corrector: eta >= 0, the corrector's noise ("euler", masked or uniform source).
        t1: where to stop, in (0, 1]; below 1 the tokens are a draw of the path's marginal at t1
            (some still masked or noise): "euler" takes its N steps on [0, t1], "unmask" reveals
            the tokens whose reveal time is at most t1.

    Returns:
        DiscreteSample(x1, nfe).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown discrete sampler {method!r}; choose one of {list(METHODS)}.")
    x0 = jnp.asarray(x0)
    if x0.ndim != 2 or not jnp.issubdtype(x0.dtype, jnp.integer):
        raise ValueError(f"x0 must be integer tokens of shape (batch, length); got {x0.dtype} {x0.shape}.")
    if corrector < 0:
        raise ValueError(f"corrector (eta) must be non-negative, got {corrector}.")
    if corrector > 0 and (path.source == "data" or method != "euler"):
        raise ValueError(
            'The corrector is implemented for the "euler" sampler of the masked and uniform sources (its '
            f"backward velocity redraws tokens from the source); got method {method!r}, source {path.source!r}."
        )
    if not (isinstance(t1, (int, float)) and 0.0 < t1 <= 1.0):
        raise ValueError(f"t1 must be a number in (0, 1] (where the sampler stops; 1 is the data), got {t1!r}.")
    if method == "unmask":
        if path.source != "mask":
            raise ValueError(f'The "unmask" sampler needs the masked source; this path\'s is {path.source!r}.')
        return DiscreteSample(*_unmask(posterior, x0.astype(jnp.int32), path, key, float(t1)))
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer (the number of Euler steps), got {steps!r}.")
    return DiscreteSample(*_euler(posterior, x0.astype(jnp.int32), path, key, steps, float(corrector), float(t1)))
