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

Couplings made by a frozen teacher map (NFM, reflow) are in `fm_jax.distillation`.

`ExactOT(class_conditional=True)` and `SinkhornOT(class_conditional=True)` pair points only
within a class: the source point in row i takes the label of data row i (the source is
drawn independently of the data, so this splits it at random) and the cost between
different classes is made prohibitive. Conditioned on a class, the source marginal stays
the source distribution, so a class-conditional model can start from N(0, I).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax import assignment, host_ot
from fm_jax.primitives import pairwise_sq_distances
from fm_jax.registry import Registry

__all__ = [
    "AUTO_SOLVERS",
    "EXACT_SOLVERS",
    "LAYOUTS",
    "Coupling",
    "ExactOT",
    "Independent",
    "SchrodingerBridge",
    "SinkhornOT",
    "SinkhornSolution",
    "auto_solver",
    "check_pairs",
    "sample_pairs",
]


def check_pairs(x0: jax.Array, x1: jax.Array, labels: jax.Array | None, class_conditional: bool) -> None:
    """Raise a ValueError unless (x0, x1, labels) is a valid minibatch for a coupling.

    Args:
        x0: (n, ...) source points.
        x1: (n, ...) data points, of the shape of x0.
        labels: (n,) labels of the data points, or None.
        class_conditional: whether the coupling needs the labels.
    """
    if x0.shape != x1.shape:
        raise ValueError(
            f"A minibatch coupling needs x0 and x1 of the same shape, got {x0.shape} and "
            f"{x1.shape}; draw as many source points as data points."
        )
    if labels is not None and labels.shape[0] != x1.shape[0]:
        raise ValueError(f"labels have {labels.shape[0]} rows but x1 has {x1.shape[0]}.")
    if class_conditional and labels is None:
        raise ValueError("class_conditional=True needs labels: call coupling(key, x0, x1, labels).")


def _same_class(labels: jax.Array) -> jax.Array:
    """allowed[i, j]: source row i (which takes the label of data row i) may pair with data row j."""
    return labels[:, None] == labels[None, :]


def _penalized(cost: jax.Array, allowed: jax.Array | None) -> jax.Array:
    """The cost with a prohibitive penalty where a pair is not allowed (for solvers without a mask)."""
    if allowed is None:
        return cost
    # Any assignment with one forbidden pair costs more than any with none.
    penalty = (jnp.max(cost) + 1.0) * cost.shape[0]
    return jnp.where(allowed, cost, penalty)


def _warn_if_unconverged(converged: np.ndarray | jax.Array, eps: np.ndarray | jax.Array, max_iterations: int) -> None:
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
    """
    return _inverse_cdf_at(jax.random.uniform(key, shape + (1,), weights.dtype), weights)


def _inverse_cdf_at(u: jax.Array, weights: jax.Array) -> jax.Array:
    """`_inverse_cdf` for given uniforms u (shape + (1,)). Entries of zero weight are never
    drawn: the search runs on the running maximum of the cumulative sum taken at positive
    entries only, which is flat across zero entries however the sum rounds."""
    cdf = jnp.cumsum(weights, axis=-1)
    edges = jax.lax.cummax(jnp.where(weights > 0, cdf, 0.0), axis=weights.ndim - 1)
    total = edges[..., -1:]
    u = u * total
    u = jnp.minimum(u, jnp.nextafter(total, jnp.zeros_like(total)))  # u < total: never past the last positive entry
    if weights.ndim == 1:
        return jnp.searchsorted(edges, u[..., 0], side="right")
    return jax.vmap(lambda e, v: jnp.searchsorted(e, v, side="right"))(edges, u)[..., 0]


def sample_pairs(key: jax.Array, pi: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """Draw `num` index pairs (i, j) with probability pi_ij / sum(pi), with replacement.

    In two stages, i from the row sums of pi and then j from row i, so that each cumulative
    sum runs over n entries rather than n^2 (in float32 the n^2 masses of a large plan fall
    below the resolution of one cumulative sum); the second stage takes `DRAW_CHUNK` draws at
    a time. Zero-mass pairs (across classes) are never drawn.

    Args:
        key: the key of the draws.
        pi: (n, m) nonnegative plan.
        num: the number of pairs.

    Returns:
        (i, j), each of shape (num,): row and column indices into pi.
    """
    k_i, k_j = jax.random.split(key)
    i = _inverse_cdf(k_i, jnp.sum(pi, axis=1), (num,))
    # Row i of the plan for each draw, DRAW_CHUNK draws at a time: the drawn rows take
    # DRAW_CHUNK x m floats rather than num x m (a plan split over devices by rows stays split).
    u = jax.random.uniform(k_j, (num, 1), pi.dtype)
    j = jax.lax.map(lambda args: _inverse_cdf_at(args[1], pi[args[0]]), (i, u), batch_size=DRAW_CHUNK)
    return i, j


LAYOUTS = ("gathered", "rows", "examples")
DRAW_CHUNK = 1024  # draws per chunk of `sample_pairs`' second stage


class Coupling:
    """Base class: `__call__(key, x0, x1, labels=None) -> (x0, x1, labels)`.

    `layout` says how a train step lays out a global batch sharded over devices for the
    coupling (`fm_jax.train.step.couple_global`), as one of `LAYOUTS`:

    - "gathered": every device holds the whole batch (a sequential or host solver);
    - "rows": x0 stays split over the devices by rows and x1 is gathered, so that XLA's
      partitioner splits the n x n cost and the solve over its rows (dense Sinkhorn: each
      device iterates on n / D rows, memory and time per device divided by D);
    - "examples": nothing is gathered (a per-example map: a teacher's).

    Any layout gives the pairs of one device, up to floating-point reassociation.
    """

    @property
    def layout(self) -> str:
        """How a sharded global batch is laid out for this coupling: one of `LAYOUTS`."""
        return "gathered"

    def __call__(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """Pair a source and a data minibatch.

        Args:
            key: the key of a random coupling (unused by deterministic ones).
            x0: (n, ...) source points.
            x1: (n, ...) data points, of the shape of x0.
            labels: (n,) labels of the data points, or None.

        Returns:
            (x0, x1, labels): the pairs to regress on, labels following the data points.
        """
        raise NotImplementedError

    def call_with_stats(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array | None], dict[str, jax.Array]]:
        """`(self(key, x0, x1, labels), stats)`: the pairs and scalar diagnostics of the solve
        (`SinkhornOT`: whether it converged and its epsilon; none for the others). A train step
        calls this, so that it can log and report the diagnostics instead of a warning per call."""
        return self(key, x0, x1, labels), {}


@dataclasses.dataclass(frozen=True)
class Independent(Coupling):
    """Pairs as drawn: the product coupling q(x0) q(x1)."""

    @property
    def layout(self) -> str:
        return "examples"

    def __call__(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        check_pairs(x0, x1, labels, False)
        return x0, x1, labels


def _network_simplex(cost: jax.Array, allowed: jax.Array | None) -> jax.Array:
    return host_ot.network_simplex(_penalized(cost, allowed))


def _hungarian(cost: jax.Array, allowed: jax.Array | None) -> jax.Array:
    import optax

    rows, cols = optax.assignment.hungarian_algorithm(_penalized(cost, allowed))
    # rows is 0..n-1 for a square cost; invert so that the data order is kept.
    return jnp.zeros_like(cols).at[cols].set(rows)


def _auction(cost: jax.Array, allowed: jax.Array | None) -> jax.Array:
    return assignment.auction(cost, allowed).perm


# Exact assignment solvers, (cost (n, n), allowed (n, n) bool or None) -> perm with
# (x0[perm[j]], x1[j]) optimal among the allowed pairs.
EXACT_SOLVERS: Registry[Callable[[jax.Array, jax.Array | None], jax.Array]] = Registry(
    "exact OT solver", {"hungarian": _hungarian, "network_simplex": _network_simplex, "auction": _auction}
)


# `solver="auto"`: the fastest exact solver per platform. On a CPU the host network simplex is
# 10-30x faster than the on-device solvers at n = 256-4096 (results/couplings.md); on a GPU or
# TPU the auction, whose sequential depth is 1/100-1/1000 of the Hungarian algorithm's
# (results/couplings.md) and which avoids a host round trip per call.
AUTO_SOLVERS = {"cpu": "network_simplex", "gpu": "auction", "tpu": "auction"}


def auto_solver(platform: str | None = None) -> str:
    """The exact solver `solver="auto"` picks on `platform` (default: JAX's default backend)."""
    platform = jax.default_backend() if platform is None else platform
    return AUTO_SOLVERS.get(platform, "auction")


@dataclasses.dataclass(frozen=True)
class ExactOT(Coupling):
    """Exact minibatch OT for the squared Euclidean cost: x0 is permuted to its optimal partner of each x1.

    Solvers (`EXACT_SOLVERS`), each returning an optimal permutation; `solver="auto"` is
    replaced at construction by the one `auto_solver()` picks for the default platform:
    - `"auction"`: the epsilon-scaling Jacobi auction of `fm_jax.assignment`, on the device
      inside jit, written for parallel hardware (each round is a few dense array operations;
      the rounds, its sequential depth, are far fewer than the Hungarian algorithm's loop
      trips). Its cost is certified within rtol = 1e-7 (relative) of the optimum.
    - `"hungarian"`: optax's Hungarian algorithm, on the device inside jit; O(n^3) as a long
      sequential loop of scalar operations.
    - `"network_simplex"`: POT's exact network simplex on the host through
      `jax.pure_callback` (`fm_jax.host_ot`: the sets of a vmapped call solved in parallel on
      the host's cores), the fastest on a CPU (see the README's timing table).
    """

    class_conditional: bool = False
    solver: str = "auto"

    def __post_init__(self) -> None:
        if self.solver == "auto":
            object.__setattr__(self, "solver", auto_solver())
        elif self.solver not in EXACT_SOLVERS:
            raise ValueError(f"Unknown exact OT solver {self.solver!r}; choose one of {['auto', *EXACT_SOLVERS]}.")

    def assignment(self, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """perm such that (x0[perm[j]], x1[j]) is the optimal pairing.

        Args:
            x0: (n, ...) source points.
            x1: (n, ...) data points.
            labels: (n,) labels of the data points; required when `class_conditional`.

        Returns:
            perm, (n,) int32 indices into x0.
        """
        return EXACT_SOLVERS[self.solver](*self._problem(x0, x1, labels))

    def _problem(self, x0: jax.Array, x1: jax.Array, labels: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """(cost, allowed): the squared distances and, when class-conditional, the same-class mask."""
        check_pairs(x0, x1, labels, self.class_conditional)
        allowed = _same_class(labels) if self.class_conditional else None  # type: ignore[arg-type]
        return pairwise_sq_distances(x0, x1), allowed

    def __call__(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        perm = self.assignment(jax.lax.stop_gradient(x0), jax.lax.stop_gradient(x1), labels)
        return x0[perm], x1, labels

    def call_with_stats(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array | None], dict[str, jax.Array]]:
        """The pairs and, for the auction solver, {"auction_rounds": its sequential depth,
        "auction_gap": the certified duality gap relative to the cost}; none for the others."""
        if self.solver != "auction":
            return self(key, x0, x1, labels), {}
        result = assignment.auction(*self._problem(jax.lax.stop_gradient(x0), jax.lax.stop_gradient(x1), labels))
        stats = {
            "auction_rounds": result.rounds.astype(jnp.float32),
            "auction_gap": (result.gap / jnp.maximum(jnp.abs(result.cost), jnp.finfo(result.cost.dtype).tiny)).astype(
                jnp.float32
            ),
        }
        return (x0[result.perm], x1, labels), stats


def _ott_online_compat() -> None:
    """ott-jax 0.6.0's online geometries chunk their cost with `ott.utils.batched_vmap`, which
    flattens its arguments with `is_leaf=jax.interpreters.batching.is_vmappable`, a function
    jax 0.10 removed. It returned True only for types registered as custom vmappables (none
    here), so `lambda x: False` is exactly the behavior ott-jax expects."""
    from jax.interpreters import batching

    if "is_vmappable" not in vars(batching):
        batching.is_vmappable = lambda x: False  # type: ignore[attr-defined]


class SinkhornSolution(NamedTuple):
    """What `SinkhornOT.solve` returns: the plan (None with `online`, which never forms it), the
    dual potentials f (rows, x0) and g (columns, x1) with plan_ij = exp((f_i + g_j - C_ij) / eps),
    whether Sinkhorn met its threshold (an unconverged plan's marginals are not uniform), the
    absolute epsilon and the iterations run."""

    plan: jax.Array | None
    f: jax.Array
    g: jax.Array
    converged: jax.Array
    epsilon: jax.Array
    iterations: jax.Array


@dataclasses.dataclass(frozen=True)
class SinkhornOT(Coupling):
    """Entropic OT (ott-jax Sinkhorn) on the squared Euclidean cost.

    epsilon is absolute, or relative to the mean pairwise cost when `relative_epsilon`.
    Pairs are drawn from the plan with replacement (as in Tong et al. 2024), or with
    `hard=True` each data point x1_j takes the source point argmax_i pi_ij.

    `online=k` (k > 0) bounds the memory for large batches: ott-jax's online point-cloud
    geometry recomputes the cost k rows at a time in every Sinkhorn iteration, and the pairs
    are drawn from the dual potentials k rows (or columns) at a time, so no n x n array is
    formed: O(n k) memory instead of O(n^2), for about twice the arithmetic of the dense
    solve per iteration. Not with `class_conditional` (its penalty is a dense cost).
    """

    epsilon: float = 0.05
    relative_epsilon: bool = True
    hard: bool = False
    class_conditional: bool = False
    threshold: float = 1e-3
    max_iterations: int = 2000
    online: int = 0

    def __post_init__(self) -> None:
        if self.online < 0:
            raise ValueError(
                f"SinkhornOT(online=k) needs k >= 0 rows per chunk (0: the dense solve), got {self.online}."
            )
        if self.online and self.class_conditional:
            raise ValueError(
                "SinkhornOT(online=k) has no dense cost to penalize across classes: use online=0 with "
                "class_conditional=True."
            )

    @property
    def layout(self) -> str:
        """ "rows" for the dense solve (the partitioner splits the cost and the iterations over
        the rows of x0); the online geometry's chunked loop is not split, so it is "gathered"."""
        return "gathered" if self.online else "rows"

    def absolute_epsilon(self, cost: jax.Array) -> jax.Array:
        """The absolute entropic regularization for a cost matrix.

        Args:
            cost: (n, m) cost matrix.

        Returns:
            The scalar epsilon: `epsilon` times the mean cost when `relative_epsilon`, else `epsilon`.
        """
        return self.epsilon * jnp.mean(cost) if self.relative_epsilon else jnp.asarray(self.epsilon)

    def solve(self, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None) -> SinkhornSolution:
        """The entropic plan (or, with `online`, only its potentials) and the solve's diagnostics.
        Silent: `plan` and calling the coupling warn when it did not converge,
        `call_with_stats` returns the flag."""
        from ott.geometry import costs, geometry, pointcloud  # ott-jax loads with the first Sinkhorn solve
        from ott.solvers import linear
        from ott.solvers.linear import sinkhorn

        check_pairs(x0, x1, labels, self.class_conditional)
        geom: geometry.Geometry
        if self.online:
            _ott_online_compat()
            a, b = x0.reshape(x0.shape[0], -1), x1.reshape(x1.shape[0], -1)
            # The mean of |a_i - b_j|^2 over all pairs, in closed form (no n x n array).
            mean = jnp.mean(jnp.sum(a**2, 1)) + jnp.mean(jnp.sum(b**2, 1)) - 2.0 * jnp.sum(a.mean(0) * b.mean(0))
            eps = self.epsilon * mean if self.relative_epsilon else jnp.asarray(self.epsilon)
            geom = pointcloud.PointCloud(a, b, cost_fn=costs.SqEuclidean(), batch_size=self.online, epsilon=eps)
        else:
            cost = pairwise_sq_distances(x0, x1)
            eps = self.absolute_epsilon(cost)
            if self.class_conditional:
                cost = _penalized(cost, _same_class(labels))  # type: ignore[arg-type]  # check_pairs raised if labels is None
            # ott-jax annotates epsilon as a Python float; it takes a (traced) scalar array too.
            geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)  # type: ignore[arg-type]
        out = linear.solve(geom, threshold=self.threshold, max_iterations=self.max_iterations)
        assert isinstance(out, sinkhorn.SinkhornOutput)  # full rank: linear.solve's default
        return SinkhornSolution(
            plan=None if self.online else out.matrix,
            f=out.f,
            g=out.g,
            converged=jnp.asarray(out.converged),
            epsilon=eps,
            iterations=jnp.asarray(out.n_iters),
        )

    def plan(self, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """The entropic transport plan pi (n x n, total mass 1, uniform marginals); warns on the
        host when Sinkhorn did not converge.

        Args:
            x0: (n, ...) source points.
            x1: (n, ...) data points.
            labels: (n,) labels of the data points; required when `class_conditional`.

        Returns:
            pi, (n, n), rows indexing x0 and columns x1.
        """
        if self.online:
            raise ValueError("SinkhornOT(online=k) never forms the n x n plan; use online=0 for plan().")
        solution = self.solve(x0, x1, labels)
        jax.debug.callback(_warn_if_unconverged, solution.converged, solution.epsilon, self.max_iterations)
        return solution.plan  # type: ignore[return-value]  # dense: the plan is there

    def _pairs(
        self, key: jax.Array, solution: SinkhornSolution, x0: jax.Array, x1: jax.Array, labels: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        if solution.plan is not None:
            pi = solution.plan
            if self.hard:
                return x0[jnp.argmax(pi, axis=0)], x1, labels
            i, j = sample_pairs(key, pi, x1.shape[0])
            return x0[i], x1[j], None if labels is None else labels[j]
        i, j = _online_pairs(key, solution, x0, x1, self.online, self.hard)
        return x0[i], x1[j], None if labels is None else labels[j]

    def __call__(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        solution = self.solve(jax.lax.stop_gradient(x0), jax.lax.stop_gradient(x1), labels)
        jax.debug.callback(_warn_if_unconverged, solution.converged, solution.epsilon, self.max_iterations)
        return self._pairs(key, solution, x0, x1, labels)

    def call_with_stats(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array | None], dict[str, jax.Array]]:
        """The pairs and {"sinkhorn_converged": 1.0 or 0.0, "sinkhorn_epsilon": the absolute
        epsilon, "sinkhorn_iterations": the iterations run}, without the host warning of `plan`
        (the caller reports)."""
        solution = self.solve(jax.lax.stop_gradient(x0), jax.lax.stop_gradient(x1), labels)
        stats = {
            "sinkhorn_converged": solution.converged.astype(jnp.float32),
            "sinkhorn_epsilon": solution.epsilon.astype(jnp.float32),
            "sinkhorn_iterations": solution.iterations.astype(jnp.float32),
        }
        return self._pairs(key, solution, x0, x1, labels), stats


def _online_pairs(
    key: jax.Array, solution: SinkhornSolution, x0: jax.Array, x1: jax.Array, chunk: int, hard: bool
) -> tuple[jax.Array, jax.Array]:
    """(i, j) index pairs from the potentials alone, `chunk` rows or columns of the plan at a time.

    hard: column j takes argmax_i pi_ij = argmax_i (f_i - C_ij). Else, as `sample_pairs` does
    with a dense plan, i from the plan's row sums and then j from row i.
    """
    a, b = x0.reshape(x0.shape[0], -1), x1.reshape(x1.shape[0], -1)
    f, g, eps = solution.f, solution.g, solution.epsilon

    def row_logits(i: jax.Array) -> jax.Array:  # log pi_i. (up to f_i / eps), over the columns
        return (g - jnp.sum((a[i] - b) ** 2, axis=-1)) / eps

    if hard:
        j_all = jnp.arange(b.shape[0])
        i = jax.lax.map(lambda j: jnp.argmax(f - jnp.sum((a - b[j]) ** 2, axis=-1)), j_all, batch_size=chunk)
        return i, j_all
    k_i, k_j = jax.random.split(key)
    rows = jnp.arange(a.shape[0])
    log_rows = jax.lax.map(lambda i: f[i] / eps + jax.nn.logsumexp(row_logits(i)), rows, batch_size=chunk)
    i = _inverse_cdf(k_i, jnp.exp(log_rows - jnp.max(log_rows)), (b.shape[0],))
    # The uniforms `sample_pairs` draws for the second stage: the same pairs as the dense plan's.
    u = jax.random.uniform(k_j, (b.shape[0], 1), f.dtype)

    def draw(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        row, v = args
        logits = row_logits(row)
        return _inverse_cdf_at(v, jnp.exp(logits - jnp.max(logits)))

    j = jax.lax.map(draw, (i, u), batch_size=chunk)
    return i, j


@dataclasses.dataclass(frozen=True)
class SchrodingerBridge(Coupling):
    """Static Schrodinger bridge of sigma W: entropic OT with absolute eps = 2 sigma^2 (Tong et al.
    2024); `online=k` as in `SinkhornOT`."""

    sigma: float = 1.0
    hard: bool = False
    class_conditional: bool = False
    online: int = 0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(
                f"SchrodingerBridge needs sigma > 0 (epsilon = 2 sigma^2), got {self.sigma}; SB-CFM's "
                "default is sigma = 1 (--config.sigma=1)."
            )

    @property
    def layout(self) -> str:
        return self.sinkhorn.layout

    @property
    def sinkhorn(self) -> SinkhornOT:
        """The `SinkhornOT` coupling this bridge is, with absolute epsilon 2 sigma^2."""
        return SinkhornOT(
            epsilon=2.0 * self.sigma**2,
            relative_epsilon=False,
            hard=self.hard,
            class_conditional=self.class_conditional,
            online=self.online,
        )

    def __call__(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        return self.sinkhorn(key, x0, x1, labels)

    def call_with_stats(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array | None], dict[str, jax.Array]]:
        return self.sinkhorn.call_with_stats(key, x0, x1, labels)
