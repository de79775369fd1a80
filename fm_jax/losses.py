"""Conditional flow-matching objectives built from a path, a coupling and a time sampler.

    L(theta) = E_{t, (x0, x1) ~ coupling, z} || f_theta(t, x_t, c) - target ||^2

with target u_t (velocity; Lipman et al. 2023, eq. 9; Tong et al. 2024, eq. 10), x1 (data
prediction) or eps = (a x0 + g z) / s (noise prediction). Regressing on the conditional
target has the same gradients as regressing on the marginal one, so the minimizer is the
conditional expectation of the target given x_t (Lipman et al. 2023, Thm. 2). Networks
trained on x1 or eps are turned into velocity fields for sampling by
`solvers.velocity_field(..., path=path, prediction=target)`.

`loss = cfm_loss(path, coupling, time_sampler=UniformTime(), target="velocity")` is built
once and called as `loss(apply, params, key, batch) -> (scalar, metrics)`, where
`apply(params, t, x_t, cond)` is the network and `batch` is a dict with "x1" (data), and
optionally "x0" (source samples; N(0, I) when absent) and "label" (passed to the network
as `cond` and carried through the coupling).

Classifier-free guidance (Ho & Salimans 2022) trains one network for the conditional and the
unconditional field: with `label_dropout=p`, each label is replaced by `null_label` (the
network's "no class" input) with probability p after the coupling, so the same network also
learns E[u_t | x_t]. `solvers.velocity_field(..., guidance=w)` combines the two at sampling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fm_jax.couplings import Coupling, Independent
from fm_jax.paths import GaussianPath

__all__ = ["LogitNormalTime", "TARGETS", "UniformTime", "cfm_loss"]

TARGETS = ("velocity", "x1", "eps")
DROP_STREAM = 0xC1A55


@dataclasses.dataclass(frozen=True)
class UniformTime:
    """t ~ U[t_min, t_max] (default U[0, 1])."""

    t_min: float = 0.0
    t_max: float = 1.0

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        return jax.random.uniform(key, (n,), minval=self.t_min, maxval=self.t_max)


@dataclasses.dataclass(frozen=True)
class LogitNormalTime:
    """t = sigmoid(m + s n), n ~ N(0, 1): logit-normal times (Esser et al. 2024, Sec. 3.1)."""

    m: float = 0.0
    s: float = 1.0

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        return jax.nn.sigmoid(self.m + self.s * jax.random.normal(key, (n,)))


@dataclasses.dataclass(frozen=True)
class CFMLoss:
    """The callable returned by `cfm_loss`; frozen so that it hashes and compares by value."""

    path: GaussianPath
    coupling: Coupling
    time_sampler: Callable[[jax.Array, int], jax.Array]
    target: str
    label_dropout: float = 0.0
    null_label: int | None = None

    def __call__(self, apply: Callable, params: Any, key: jax.Array, batch: dict):
        if "x1" not in batch:
            raise KeyError(f"batch needs the data under 'x1'; got keys {sorted(batch)}.")
        x1 = batch["x1"]
        labels = batch.get("label")
        k_x0, k_pair, k_t, k_z = jax.random.split(key, 4)
        x0 = batch["x0"] if "x0" in batch else jax.random.normal(k_x0, x1.shape, x1.dtype)
        x0, x1, labels = self.coupling(k_pair, x0, x1, labels)
        if self.label_dropout > 0.0:
            if labels is None:
                raise ValueError("label_dropout needs labels: put the class labels in batch['label'].")
            # A key of its own, so that the draws of t, z and x0 do not depend on the option.
            drop = jax.random.bernoulli(jax.random.fold_in(key, DROP_STREAM), self.label_dropout, labels.shape)
            labels = jnp.where(drop, jnp.asarray(self.null_label, labels.dtype), labels)
        t = jnp.clip(self.time_sampler(k_t, x1.shape[0]), *self.path.t_range)
        sample = self.path.sample(k_z, x0, x1, t)
        if self.target == "velocity":
            target = sample.u_t
        elif self.target == "x1":
            target = x1
        else:
            target = self.path.eps(t, x0, sample.z)
        pred = apply(params, t, sample.x_t, labels)
        if pred.shape != target.shape:
            raise ValueError(f"The network returned shape {pred.shape}; the target has shape {target.shape}.")
        loss = jnp.mean((pred - target) ** 2)
        return loss, {"loss": loss}


def cfm_loss(
    path: GaussianPath,
    coupling: Coupling | None = None,
    time_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
    target: str = "velocity",
    label_dropout: float = 0.0,
    null_label: int | None = None,
) -> CFMLoss:
    """Build the conditional flow-matching loss `loss(apply, params, key, batch) -> (scalar, metrics)`.

    `label_dropout` in [0, 1): the probability of training a label as `null_label` (for
    classifier-free guidance; the null label is the network's unconditional input).
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1) (0 turns it off), got {label_dropout}.")
    if label_dropout > 0.0 and null_label is None:
        raise ValueError("label_dropout > 0 needs null_label: the label the network reads as 'no class'.")
    return CFMLoss(
        path=path,
        coupling=Independent() if coupling is None else coupling,
        time_sampler=UniformTime() if time_sampler is None else time_sampler,
        target=target,
        label_dropout=float(label_dropout),
        null_label=null_label,
    )
