"""Minibatch couplings: how (x0, x1) pairs are drawn from a source and a data minibatch.

A coupling is a frozen dataclass called as `coupling(key, x0, x1, labels=None)` and
returning `(x0, x1, labels)`: the pairs to regress on, with the labels of the data points
carried through. All couplings run inside `jax.jit`.

- `Independent`: the pairs as given (I-CFM; Lipman et al. 2023; Tong et al. 2024, Sec. 3.2).
- `ExactOT`: the exact minibatch optimal assignment for the squared Euclidean cost (OT-CFM,
  Tong et al. 2024, Sec. 3.3; Pooladian et al. 2023). The data order is kept and the source
  points are permuted, so no point is repeated or dropped.
- `SinkhornOT`: the entropic plan pi_eps of ott-jax's Sinkhorn solver; pairs are drawn
  from pi_eps (with replacement), or `hard=True` pairs each data point with the source point
  of largest plan mass.
- `SchrodingerBridge(sigma)`: `SinkhornOT` with eps = 2 sigma^2, the static Schrodinger
  bridge of the Brownian motion sigma W (SB-CFM, Tong et al. 2024, Prop. 3.4). Use it with
  `paths.BrownianBridge(sigma)`.

Couplings made by a teacher map (`TeacherCoupling`), deterministic given the data:

- `nf_coupling`: Normalized Flow Matching (Berthelot et al. 2026): each data point with its
  latent under a frozen normalizing flow f trained on x + eta eps, x0 = f(x1 + eta eps) / sigma_f
  (sigma_f the flow's prior std, so that x0 ~ N(0, I) for a perfect teacher).
- `reflow_coupling`: reflow (rectified flow; Liu et al. 2023): the teacher is a trained flow
  matching field and its ODE the map: backward, x0 = Phi_{1->0}(x1) (each data point with the
  source point the teacher sends to it), or forward, x1 = Phi_{0->1}(x0) (each source point
  with the teacher's sample from it, as in Liu et al.; the data batch is then not used).

The teacher's parameters are held by the coupling and enter the train step as constants.

`ExactOT(class_conditional=True)` and `SinkhornOT(class_conditional=True)` pair points only
within a class: the source point in row i takes the label of data row i (the source is
drawn independently of the data, so this splits it at random) and the cost between
different classes is made prohibitive. Conditioned on a class, the source marginal stays
the source distribution, so a class-conditional model can start from N(0, I).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import ot
from ott.geometry import geometry
from ott.solvers import linear

from fm_jax import solvers

__all__ = [
    "EXACT_SOLVERS",
    "Coupling",
    "ExactOT",
    "Independent",
    "SchrodingerBridge",
    "SinkhornOT",
    "TeacherCoupling",
    "nf_coupling",
    "pairwise_sq_distances",
    "reflow_coupling",
    "sample_pairs",
]

TEACHER_SIDES = ("x0", "x1")
REFLOW_DIRECTIONS = ("backward", "forward")


EXACT_SOLVERS = ("hungarian", "network_simplex")


def pairwise_sq_distances(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """C_ij = ||x0_i - x1_j||^2 for batch-first arrays of any trailing shape."""
    x0 = x0.reshape(x0.shape[0], -1)
    x1 = x1.reshape(x1.shape[0], -1)
    sq0 = jnp.sum(x0**2, axis=1)
    sq1 = jnp.sum(x1**2, axis=1)
    cross = jnp.dot(x0, x1.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(sq0[:, None] + sq1[None, :] - 2.0 * cross, 0.0)


def _check(x0, x1, labels, class_conditional: bool):
    if x0.shape != x1.shape:
        raise ValueError(
            f"A minibatch coupling needs x0 and x1 of the same shape, got {x0.shape} and "
            f"{x1.shape}; draw as many source points as data points."
        )
    if labels is not None and labels.shape[0] != x1.shape[0]:
        raise ValueError(f"labels have {labels.shape[0]} rows but x1 has {x1.shape[0]}.")
    if class_conditional and labels is None:
        raise ValueError("class_conditional=True needs labels: call coupling(key, x0, x1, labels).")


def _class_cost(cost: jax.Array, labels: jax.Array) -> jax.Array:
    """Cost with a prohibitive penalty between source row i (label of data row i) and data row j of another class."""
    different = labels[:, None] != labels[None, :]
    # Any assignment with one cross-class pair costs more than any within-class one.
    penalty = (jnp.max(cost) + 1.0) * cost.shape[0]
    return jnp.where(different, penalty, cost)


def _warn_if_unconverged(converged, eps, max_iterations: int) -> None:
    """Host side: an unconverged Sinkhorn plan has wrong marginals; say so instead of using it silently."""
    if not np.all(converged):
        warnings.warn(
            f"Sinkhorn did not converge in {max_iterations} iterations at epsilon = {np.max(eps):.3g}: "
            "the plan's marginals are not uniform. Raise epsilon (or sigma) or max_iterations.",
            RuntimeWarning,
            stacklevel=2,
        )


def _inverse_cdf(key: jax.Array, weights: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Indices into the last axis of `weights` (shape + (n,), or (n,) shared by all draws),
    drawn with probability proportional to the weights.

    By inverting the cumulative weights: O(n) work and one uniform per draw, where Gumbel-max
    (`jax.random.categorical`) needs n random numbers per draw, which dominates on a CPU.
    Entries of zero weight are never drawn: the search runs on the running maximum of the
    cumulative sum taken at positive entries only, which is flat across zero entries however
    the sum rounds.
    """
    cdf = jnp.cumsum(weights, axis=-1)
    edges = jax.lax.cummax(jnp.where(weights > 0, cdf, 0.0), axis=weights.ndim - 1)
    total = edges[..., -1:]
    u = jax.random.uniform(key, shape + (1,), weights.dtype) * total
    u = jnp.minimum(u, jnp.nextafter(total, jnp.zeros_like(total)))  # u < total: never past the last positive entry
    if weights.ndim == 1:
        return jnp.searchsorted(edges, u[..., 0], side="right")
    return jax.vmap(lambda e, v: jnp.searchsorted(e, v, side="right"))(edges, u)[..., 0]


def sample_pairs(key: jax.Array, pi: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """Draw `num` index pairs (i, j) with probability pi_ij / sum(pi), with replacement.

    In two stages, i from the row sums of pi and then j from row i, so that each cumulative
    sum runs over n entries rather than n^2 (in float32 the n^2 masses of a large plan fall
    below the resolution of one cumulative sum). Zero-mass pairs (across classes) are never drawn.
    """
    k_i, k_j = jax.random.split(key)
    i = _inverse_cdf(k_i, jnp.sum(pi, axis=1), (num,))
    j = _inverse_cdf(k_j, pi[i], (num,))
    return i, j


class Coupling:
    """Base class: `__call__(key, x0, x1, labels=None) -> (x0, x1, labels)`.

    `on_host` is true for couplings that call back into the host (a CPU solver): a training
    driver runs those outside its multi-device step (`fm_jax.train.batches`).
    """

    on_host = False

    def __call__(self, key, x0, x1, labels=None):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Independent(Coupling):
    """Pairs as drawn: the product coupling q(x0) q(x1)."""

    def __call__(self, key, x0, x1, labels=None):
        _check(x0, x1, labels, False)
        return x0, x1, labels


def _network_simplex_assignment(cost: np.ndarray) -> np.ndarray:
    """Host side: perm[j] = the source row paired with data column j, by POT's network simplex."""
    n = cost.shape[0]
    weights = np.full(n, 1.0 / n)
    plan = ot.emd(weights, weights, np.asarray(cost, np.float64), numItermax=max(100_000, 50 * n * n))
    # A vertex of the assignment polytope: a permutation matrix scaled by 1 / n.
    return np.argmax(plan, axis=0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ExactOT(Coupling):
    """Exact minibatch OT for the squared Euclidean cost: x0 is permuted to its optimal partner of each x1.

    `solver="hungarian"`: optax's Hungarian algorithm, on the device inside jit (O(n^3); no
    host round trip, the choice on accelerators). `solver="network_simplex"`: POT's exact
    network simplex on the host through `jax.pure_callback`, 2-30x faster on a CPU (see the
    README's timing table). Both return an optimal permutation.
    """

    class_conditional: bool = False
    solver: str = "hungarian"

    def __post_init__(self):
        if self.solver not in EXACT_SOLVERS:
            raise ValueError(f"Unknown exact OT solver {self.solver!r}; choose one of {EXACT_SOLVERS}.")

    @property
    def on_host(self) -> bool:
        return self.solver == "network_simplex"

    def assignment(self, x0, x1, labels=None) -> jax.Array:
        """perm such that (x0[perm[j]], x1[j]) is the optimal pairing."""
        _check(x0, x1, labels, self.class_conditional)
        cost = pairwise_sq_distances(x0, x1)
        if self.class_conditional:
            cost = _class_cost(cost, labels)
        if self.solver == "network_simplex":
            shape = jax.ShapeDtypeStruct(cost.shape[:1], jnp.int32)
            return jax.pure_callback(_network_simplex_assignment, shape, cost, vmap_method="sequential")
        rows, cols = optax.assignment.hungarian_algorithm(cost)
        # rows is 0..n-1 for a square cost; invert so that the data order is kept.
        return jnp.zeros_like(cols).at[cols].set(rows)

    def __call__(self, key, x0, x1, labels=None):
        perm = self.assignment(jax.lax.stop_gradient(x0), jax.lax.stop_gradient(x1), labels)
        return x0[perm], x1, labels


@dataclasses.dataclass(frozen=True)
class SinkhornOT(Coupling):
    """Entropic OT (ott-jax Sinkhorn) on the squared Euclidean cost.

    epsilon is absolute, or relative to the mean pairwise cost when `relative_epsilon`.
    Pairs are drawn from the plan with replacement (as in Tong et al. 2024), or with
    `hard=True` each data point x1_j takes the source point argmax_i pi_ij.
    """

    epsilon: float = 0.05
    relative_epsilon: bool = True
    hard: bool = False
    class_conditional: bool = False
    threshold: float = 1e-3
    max_iterations: int = 2000

    def absolute_epsilon(self, cost: jax.Array) -> jax.Array:
        return self.epsilon * jnp.mean(cost) if self.relative_epsilon else jnp.asarray(self.epsilon)

    def plan(self, x0, x1, labels=None) -> jax.Array:
        """The entropic transport plan pi (n x n, total mass 1, uniform marginals)."""
        _check(x0, x1, labels, self.class_conditional)
        cost = pairwise_sq_distances(x0, x1)
        eps = self.absolute_epsilon(cost)
        if self.class_conditional:
            cost = _class_cost(cost, labels)
        geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)
        out = linear.solve(geom, threshold=self.threshold, max_iterations=self.max_iterations)
        jax.debug.callback(_warn_if_unconverged, out.converged, eps, self.max_iterations)
        return out.matrix

    def __call__(self, key, x0, x1, labels=None):
        pi = self.plan(jax.lax.stop_gradient(x0), jax.lax.stop_gradient(x1), labels)
        n = x1.shape[0]
        if self.hard:
            return x0[jnp.argmax(pi, axis=0)], x1, labels
        i, j = sample_pairs(key, pi, n)
        return x0[i], x1[j], None if labels is None else labels[j]


@dataclasses.dataclass(frozen=True)
class SchrodingerBridge(Coupling):
    """Static Schrodinger bridge of sigma W: entropic OT with absolute eps = 2 sigma^2 (Tong et al. 2024)."""

    sigma: float = 1.0
    hard: bool = False
    class_conditional: bool = False

    @property
    def sinkhorn(self) -> SinkhornOT:
        return SinkhornOT(
            epsilon=2.0 * self.sigma**2,
            relative_epsilon=False,
            hard=self.hard,
            class_conditional=self.class_conditional,
        )

    def __call__(self, key, x0, x1, labels=None):
        return self.sinkhorn(key, x0, x1, labels)


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherCoupling(Coupling):
    """Pairs made by a frozen teacher map `teacher(params, key, x, labels) -> x'`.

    `side="x0"`: x0 = teacher(x1), each data point with its teacher image; `side="x1"`:
    x1 = teacher(x0), each source point with its teacher image. The teacher sees no gradient.
    Compared by identity (it holds arrays).
    """

    teacher: Callable
    params: Any
    side: str = "x0"

    def __post_init__(self):
        if self.side not in TEACHER_SIDES:
            raise ValueError(f"Unknown teacher side {self.side!r}; choose one of {TEACHER_SIDES}.")

    def __call__(self, key, x0, x1, labels=None):
        _check(x0, x1, labels, False)
        params = jax.lax.stop_gradient(self.params)
        if self.side == "x0":
            return jax.lax.stop_gradient(self.teacher(params, key, x1, labels)).astype(x0.dtype), x1, labels
        return x0, jax.lax.stop_gradient(self.teacher(params, key, x0, labels)).astype(x1.dtype), labels


def nf_coupling(forward: Callable, params: Any, noise: float = 0.0, prior_std: float = 1.0) -> TeacherCoupling:
    """NFM pairs: x0 = f(x1 + noise eps) / prior_std, with `forward(params, x) -> (z, logdet)` the flow's data-to-latent map."""
    if not noise >= 0.0 or not prior_std > 0.0:
        raise ValueError(f"noise must be >= 0 and prior_std > 0, got {noise} and {prior_std}.")

    def teacher(params, key, x1, labels):
        z, _ = forward(params, x1 + noise * jax.random.normal(key, x1.shape, x1.dtype))
        return z / prior_std

    return TeacherCoupling(teacher, params, "x0")


def reflow_coupling(apply: Callable, params: Any, direction: str = "backward", solver: str = "dopri5",
                    steps: int | None = None, rtol: float = 1e-4, atol: float = 1e-4) -> TeacherCoupling:
    """Reflow pairs from a trained field `apply(params, t, x, cond)`, its ODE integrated `direction`
    ("backward": x0 from x1; "forward": x1 from x0) with `solver` at `steps` fixed steps or tolerances."""
    if direction not in REFLOW_DIRECTIONS:
        raise ValueError(f"Unknown reflow direction {direction!r}; choose one of {REFLOW_DIRECTIONS}.")
    ode = {"steps": steps} if steps else {"rtol": rtol, "atol": atol}
    integrate = solvers.encode if direction == "backward" else solvers.sample

    def teacher(params, key, x, labels):
        return integrate(solvers.velocity_field(apply, params, cond=labels), x, solver=solver, **ode).x

    return TeacherCoupling(teacher, params, "x0" if direction == "backward" else "x1")
