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

`fast_ode_loss(path, encode, beta)` learns the coupling with the field (Lee, Kim & Ye 2023,
eq. 9, in this library's time convention, data at t = 1): the source point of x1 is drawn
from a Gaussian encoder, x0 = mu_phi(x1) + sigma_phi(x1) eps with eps ~ N(0, I), and

    L(theta, phi) = E || v_theta(t, x_t) - u_t ||^2 / d + beta KL(q_phi(. | x1) || N(0, I)) / d,

both terms per dimension, the first through x_t and u_t differentiable in phi. The KL keeps
the x0 marginal near N(0, I), which sampling starts from; as beta grows q_phi is forced to the
prior and the loss becomes I-CFM's. `encode(params, x1, cond) -> (mu, log_sigma)` reads the
same params as the field (`fm_jax.models.CoupledField`).

`flow_nll_loss(noise)` is the maximum-likelihood objective of a normalizing flow (the NFM
teacher; Berthelot et al. 2026): -log p(x1 + eta eps) per dimension, in nats, with
`apply(params, x) -> log p(x)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fm_jax.checks import check_batch_array, check_callable, check_key, describe, is_key
from fm_jax.couplings import Coupling, Independent
from fm_jax.paths import GaussianPath

__all__ = [
    "FastODELoss",
    "FlowNLLLoss",
    "LogitNormalTime",
    "TARGETS",
    "UniformTime",
    "cfm_loss",
    "check_label_dropout",
    "fast_ode_loss",
    "flow_nll_loss",
]

TARGETS = ("velocity", "x1", "eps")
DROP_STREAM = 0xC1A55
_CALL = "loss(apply, params, key, batch)"


def _check_call(apply: Any, key: Any, batch: Any, network: str) -> jax.Array:
    """Check a loss call's arguments (trace-time: types, shapes, dtypes) and return batch["x1"].

    A KeyError for a batch without "x1"; a TypeError or ValueError naming the argument otherwise,
    and saying so when key and batch were swapped.
    """
    if isinstance(key, Mapping) and is_key(batch):
        raise TypeError(f"key and batch are swapped: the call is {_CALL}, with the key third and the dict fourth.")
    check_callable(apply, "apply", network, _CALL)
    check_key(key, "key", _CALL)
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a dict with the data under 'x1' (the call is {_CALL}); got {describe(batch)}.")
    if "x1" not in batch:
        raise KeyError(f"batch needs the data under 'x1'; got keys {sorted(batch)}.")
    x1 = batch["x1"]
    check_batch_array(x1, "batch['x1']", _CALL)
    if "x0" in batch:
        check_batch_array(batch["x0"], "batch['x0']", _CALL)
        if tuple(batch["x0"].shape) != tuple(x1.shape):
            raise ValueError(f"batch['x0'] must have the shape of batch['x1'], {x1.shape}; got {batch['x0'].shape}.")
    labels = batch.get("label")
    if labels is not None and (jnp.ndim(labels) < 1 or jnp.shape(labels)[0] != x1.shape[0]):
        raise ValueError(
            f"batch['label'] must have one entry per example, shape ({x1.shape[0]},); got shape {jnp.shape(labels)}."
        )
    return x1


@dataclasses.dataclass(frozen=True)
class UniformTime:
    """t ~ U[t_min, t_max] (default U[0, 1])."""

    t_min: float = 0.0
    t_max: float = 1.0

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        """Draw n times.

        Args:
            key: the key of the draw.
            n: the number of times.

        Returns:
            (n,) times in [t_min, t_max).
        """
        return jax.random.uniform(key, (n,), minval=self.t_min, maxval=self.t_max)


@dataclasses.dataclass(frozen=True)
class LogitNormalTime:
    """t = sigmoid(m + s n), n ~ N(0, 1): logit-normal times (Esser et al. 2024, Sec. 3.1)."""

    m: float = 0.0
    s: float = 1.0

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        """Draw n times.

        Args:
            key: the key of the draw.
            n: the number of times.

        Returns:
            (n,) logit-normal times.
        """
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

    def __call__(
        self, apply: Callable, params: Any, key: jax.Array, batch: dict
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The loss of one minibatch.

        Args:
            apply: the network, `apply(params, t, x_t, cond)`.
            params: its parameters (a pytree).
            key: the key of x0 (when the batch has none), the coupling, t, z and label dropout.
            batch: "x1", and optionally "x0" and "label".

        Returns:
            (loss, metrics): the scalar loss and a dict of scalars ("loss", and "mse" with the
            source's own metrics where the source adds a penalty).
        """
        x1 = _check_call(apply, key, batch, "the network apply(params, t, x_t, cond)")
        labels = batch.get("label")
        k_x0, k_pair, k_t, k_z = jax.random.split(key, 4)
        x0 = batch["x0"] if "x0" in batch else jax.random.normal(k_x0, x1.shape, x1.dtype)
        x0, x1, labels = self.coupling(k_pair, x0, x1, labels)
        x0, penalty, metrics = self.source(params, x0, x1, labels)
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
        mse = jnp.mean((pred - target) ** 2)
        loss = mse + penalty
        # The regression term is reported apart where the source adds a penalty (fast-ode's KL).
        return loss, {"loss": loss} | ({"mse": mse} | metrics if metrics else {})

    def source(
        self, params: Any, x0: jax.Array, x1: jax.Array, labels: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, dict]:
        """(the source points to regress from, a penalty added to the loss, metrics): x0 as coupled here.

        Args:
            params: the network's parameters.
            x0: (batch, ...) source points as coupled.
            x1: (batch, ...) data points as coupled.
            labels: (batch,) labels as coupled, or None.

        Returns:
            (x0, penalty, metrics): here x0 itself, a zero penalty and no metrics.
        """
        return x0, jnp.zeros(()), {}


@dataclasses.dataclass(frozen=True)
class FastODELoss(CFMLoss):
    """`CFMLoss` whose source points come from a Gaussian encoder trained with the field (`fast_ode_loss`)."""

    encode: Callable | None = None
    beta: float = 1.0

    def source(
        self, params: Any, eps: jax.Array, x1: jax.Array, labels: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, dict]:
        """x0 = mu(x1) + sigma(x1) eps from the encoder, the penalty beta KL / d, and {"kl": KL / d}."""
        # encode is always set by fast_ode_loss; the None default only follows the parent's defaulted fields.
        mu, log_sigma = self.encode(params, x1, labels)  # type: ignore[misc]
        x0 = mu + jnp.exp(log_sigma) * eps
        dims = tuple(range(1, x1.ndim))
        kl = 0.5 * jnp.sum(mu**2 + jnp.exp(2.0 * log_sigma) - 1.0 - 2.0 * log_sigma, axis=dims)
        kl_per_dim = jnp.mean(kl) / (x1.size // x1.shape[0])
        return x0, self.beta * kl_per_dim, {"kl": kl_per_dim}


@dataclasses.dataclass(frozen=True)
class FlowNLLLoss:
    """-log p(x1 + noise eps) / d of a normalizing flow `apply(params, x) -> log p(x)` (nats per dimension)."""

    noise: float = 0.0

    def __call__(
        self, apply: Callable, params: Any, key: jax.Array, batch: dict
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The loss of one minibatch.

        Args:
            apply: the flow's log-density, `apply(params, x) -> (batch,)`.
            params: its parameters (a pytree).
            key: the key of the training noise.
            batch: the data under "x1".

        Returns:
            (loss, {"loss": loss}), the loss in nats per dimension.
        """
        x1 = _check_call(apply, key, batch, "the flow's log-density apply(params, x)")
        noisy = x1 + self.noise * jax.random.normal(key, x1.shape, x1.dtype)
        loss = -jnp.mean(apply(params, noisy)) / (x1.size // x1.shape[0])
        return loss, {"loss": loss}


def flow_nll_loss(noise: float = 0.0) -> FlowNLLLoss:
    """The maximum-likelihood loss of a normalizing flow trained on x1 + noise eps (`noise` >= 0)."""
    if not noise >= 0.0:
        raise ValueError(f"The flow's training noise must be >= 0, got {noise}.")
    return FlowNLLLoss(float(noise))


def fast_ode_loss(
    path: GaussianPath,
    encode: Callable,
    beta: float = 1.0,
    time_sampler: Callable[[jax.Array, int], jax.Array] | None = None,
    label_dropout: float = 0.0,
    null_label: int | None = None,
) -> FastODELoss:
    """The curvature-minimizing loss (Lee, Kim & Ye 2023): velocity regression from encoder-drawn x0, plus beta KL / d.

    The batch's "x0" (or a fresh N(0, I) draw) is the encoder's reparameterization noise eps.

    Args:
        path: the probability path.
        encode: the encoder, `encode(params, x1, cond) -> (mu, log_sigma)`.
        beta: the weight of the KL term, > 0.
        time_sampler: `time_sampler(key, n) -> (n,)` times; `UniformTime()` when None.
        label_dropout, null_label: as in `cfm_loss`.

    Returns:
        The loss, `loss(apply, params, key, batch) -> (scalar, metrics)` with "mse" and "kl" in metrics.
    """
    if not beta > 0.0:
        raise ValueError(f"beta must be positive (it keeps q_phi(x0 | x1) near N(0, I)), got {beta}.")
    base = cfm_loss(path, None, time_sampler, "velocity", label_dropout, null_label)
    return FastODELoss(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, encode=encode, beta=float(beta)
    )


def check_label_dropout(label_dropout: float, null_label: int | None = 0) -> None:
    """A ValueError unless `label_dropout` is in [0, 1), with a `null_label` where it is positive."""
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1) (0 turns it off), got {label_dropout}.")
    if label_dropout > 0.0 and null_label is None:
        raise ValueError("label_dropout > 0 needs null_label: the label the network reads as 'no class'.")


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

    Args:
        path: the probability path.
        coupling: how (x0, x1) are paired; `Independent()` when None.
        time_sampler: `time_sampler(key, n) -> (n,)` times; `UniformTime()` when None.
        target: what the network regresses on, one of `TARGETS`.
        label_dropout: as above.
        null_label: the label of the unconditional input; required when label_dropout > 0.

    Returns:
        The loss, a frozen `CFMLoss`.
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}; choose one of {TARGETS}.")
    check_label_dropout(label_dropout, null_label)
    return CFMLoss(
        path=path,
        coupling=Independent() if coupling is None else coupling,
        time_sampler=UniformTime() if time_sampler is None else time_sampler,
        target=target,
        label_dropout=float(label_dropout),
        null_label=null_label,
    )
