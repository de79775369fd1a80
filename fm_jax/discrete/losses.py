"""Discrete flow-matching losses, built once and called like `cfm_loss`:
`loss(apply, params, key, batch) -> (scalar, metrics)`, with `apply(params, t, x_t, cond)`
returning logits (batch, L, K) of the posterior p_{1|t}(x1 | x_t) (`paths` module).

- "ce": the cross-entropy E_{t, x_t} [-sum_i log p_theta(x1^i | x_t)] / L (Gat et al. 2024,
  eq. 27; Campbell et al. 2024, Sec. 3.3): its minimiser is the true posterior, for every
  scheduler and source. With the masked source the unmasked tokens are carried over and add
  nothing, so it is the masked tokens' cross-entropy.
- "kl": the generalized KL between the conditional probability velocity and the model's,
  D(u, v) = sum_{y != x_t} [u(y) log(u(y) / v(y)) - u(y) + v(y)] per token (Shaul et al. 2024,
  Sec. 4; Gat et al. 2024 App. C). For the mixture path, with c = kappa' / (1 - kappa),
  u(y) = c delta_{x1}(y) off x_t and v(y) = c p_theta(y | x_t), so

      D = c [1 - p_theta(x_t^i | x_t) - 1{x_t^i != x1^i} (1 + log p_theta(x1^i | x_t))],

  non-negative, and 0 exactly where the model puts the data token's mass on it. The weight c
  grows without bound as t -> 1: times are drawn in [0, t_max] (`UniformTime(0, 1 - 1e-3)`
  by default).

`batch` holds the int tokens "x1" (batch, L), optionally "x0" (the "data" source: required)
and "label" (class conditioning, with `label_dropout` for classifier-free guidance).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fm_jax.discrete.paths import MixturePath, log_posterior
from fm_jax.losses import DROP_STREAM, UniformTime, check_label_dropout

__all__ = ["OBJECTIVES", "DiscreteLoss", "dfm_loss"]

OBJECTIVES = ("ce", "kl")
T_MAX = 1.0 - 1e-3  # the default time sampler's end: kappa' / (1 - kappa) stays finite


def check_tokens(x: Any, name: str, path: MixturePath) -> jax.Array:
    """`x` as int32 tokens of shape (batch, L), or a ValueError/TypeError naming `name`."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an integer array of tokens (batch, length); got {type(x).__name__}.")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer token ids in [0, {path.vocab_size}); got dtype {x.dtype}.")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, length); got shape {x.shape}.")
    return jnp.asarray(x, jnp.int32)


@dataclasses.dataclass(frozen=True)
class DiscreteLoss:
    """The callable returned by `dfm_loss`; frozen so that it hashes and compares by value."""

    path: MixturePath
    objective: str = "ce"
    time_sampler: Callable[[jax.Array, int], jax.Array] = UniformTime(0.0, T_MAX)
    label_dropout: float = 0.0
    null_label: int | None = None

    def __call__(self, apply: Callable, params: Any, key: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
        """The loss of one minibatch of token sequences: (scalar, {"loss", "ce"[, "kl"]})."""
        if "x1" not in batch:
            raise KeyError(f"batch needs the tokens under 'x1'; got keys {sorted(batch)}.")
        x1 = check_tokens(batch["x1"], "batch['x1']", self.path)
        labels = batch.get("label")
        k_x0, k_t, k_xt = jax.random.split(key, 3)
        if "x0" in batch:
            x0 = check_tokens(batch["x0"], "batch['x0']", self.path)
            if x0.shape != x1.shape:
                raise ValueError(f"batch['x0'] must have the shape of batch['x1'], {x1.shape}; got {x0.shape}.")
        else:
            x0 = self.path.draw_source(k_x0, x1.shape)
        if self.label_dropout > 0.0:
            if labels is None:
                raise ValueError("label_dropout needs labels: put the class labels in batch['label'].")
            drop = jax.random.bernoulli(jax.random.fold_in(key, DROP_STREAM), self.label_dropout, labels.shape)
            labels = jnp.where(drop, jnp.asarray(self.null_label, labels.dtype), labels)
        t = self.time_sampler(k_t, x1.shape[0])
        x_t = self.path.sample(k_xt, x0, x1, t)
        logits = apply(params, t, x_t, labels)
        logp = log_posterior(self.path, logits, x_t)  # checks the shape
        logp_x1 = jnp.take_along_axis(logp, x1[..., None], axis=-1)[..., 0]
        # Carried-over tokens have log p = 0 on x1 (never -inf: x1 = x_t there).
        ce = -jnp.mean(jnp.where(jnp.isfinite(logp_x1), logp_x1, 0.0))
        if self.objective == "ce":
            return ce, {"loss": ce, "ce": ce}
        p_xt = jnp.exp(
            jnp.take_along_axis(logp, jnp.minimum(x_t, self.path.vocab_size - 1)[..., None], axis=-1)[..., 0]
        )
        p_xt = jnp.where(x_t < self.path.vocab_size, p_xt, 0.0)  # the mask is never a data value
        moved = x_t != x1
        c = self.path.jump_coefficient(t)[:, None]
        kl = jnp.mean(c * (1.0 - p_xt - jnp.where(moved, 1.0 + logp_x1, 0.0)))
        return kl, {"loss": kl, "ce": ce, "kl": kl}


def dfm_loss(
    path: MixturePath,
    objective: str = "ce",
    time_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
    label_dropout: float = 0.0,
    null_label: int | None = None,
) -> DiscreteLoss:
    """Build the discrete flow-matching loss `loss(apply, params, key, batch) -> (scalar, metrics)`.

    Args:
        path: the mixture path (`MixturePath`).
        objective: "ce" or "kl" (`OBJECTIVES`, the module docstring).
        time_sampler: `time_sampler(key, n) -> (n,)` times; `UniformTime(0, 1 - 1e-3)` when None.
        label_dropout: the probability of training a label as `null_label` (classifier-free guidance).
        null_label: the label of the unconditional input; required when label_dropout > 0.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; choose one of {list(OBJECTIVES)}.")
    if not isinstance(path, MixturePath):
        raise TypeError(f"path must be a fm_jax.discrete.MixturePath; got {type(path).__name__}.")
    check_label_dropout(label_dropout, null_label)
    return DiscreteLoss(
        path=path,
        objective=objective,
        time_sampler=UniformTime(0.0, T_MAX) if time_sampler is None else time_sampler,
        label_dropout=float(label_dropout),
        null_label=null_label,
    )
