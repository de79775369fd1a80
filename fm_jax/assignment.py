"""Exact linear assignment on parallel hardware: the epsilon-scaling auction algorithm with Jacobi bidding.

Given a cost C (n, n), find the permutation sigma minimizing sum_i C[i, sigma(i)]. Optax's
Hungarian algorithm solves this in O(n^3) as a long sequential loop of scalar operations,
which is what bounds it on a GPU or TPU; POT's network simplex runs on a host core. The
auction algorithm (Bertsekas 1988, "The auction algorithm: a distributed relaxation method
for the assignment problem"; the synchronous "Jacobi" variant in which every unassigned
person bids at once, Bertsekas & Castanon 1991, "Parallel synchronous and asynchronous
implementations of the auction algorithm") does each round as a few dense (bidders x n)
array operations, and needs far fewer rounds than the Hungarian algorithm has loop trips.

The rows of C are persons, its columns objects with prices p. Person i values object j at
-(C_ij + p_j). In a round, every unassigned person i bids for its best object j* and raises
its price by (best value - second best value) + epsilon; each object goes to its highest
bidder, whose previous owner (if any) becomes unassigned. Every assigned person then holds
an object within epsilon of its best ("epsilon-complementary slackness", eps-CS), and a
round ends with the prices of all objects bid for raised by at least epsilon, so a phase
ends with everyone assigned. Epsilon scaling (Bertsekas 1992, "Auction algorithms for
network flow problems") runs phases with epsilon divided by `scaling` each time, keeping
the prices and the pairs that still satisfy eps-CS at the new epsilon.

Each phase after the first starts by lowering the prices of held columns as far as eps-CS
allows (`_reprice`), so that most pairs stay assigned from one phase to the next. A round
bids through the smallest of a ladder of bidder buckets (n, n/2, ..., 1) that holds every
unassigned row, so the rounds at the end of a phase, with few bidders, cost O(bucket x n).

The bound this module guarantees. For any prices p, the dual value
D = sum_i min_j (C_ij + p_j) - sum_j p_j is a lower bound on the optimal cost (weak duality
of the assignment LP), so the primal cost P of the returned permutation satisfies

    P - OPT <= gap = P - D = sum_i [C_i,sigma(i) + p_sigma(i) - min_j (C_ij + p_j)],

every term of which is at most epsilon under eps-CS. The solver stops when
gap <= rtol * LB + atol, LB the best lower bound D met so far, and returns the gap: with the
default rtol = 1e-7, the returned cost is within 1e-7 of the optimum, relative, plus atol,
which is n times the cost's float resolution (one rounding per row), the most the
arithmetic of that dtype can certify. `converged` is False only if the phase or round limits
were hit; the result is a permutation in every case (unassigned rows take the free columns
in order).

Sequential depth, what bounds the solver on an accelerator, is the number of its dependent
steps: `rounds` (bidding rounds over all phases) plus `phases`; `AuctionResult` reports both.
The loops take fewer trips than that (a trip with one bidder left runs
`SINGLE_ROUNDS_PER_TRIP` single bids).

Hand-written: no maintained JAX (or NumPy) library has a parallel assignment solver; optax
has only the sequential Hungarian algorithm, and ott-jax only entropic OT.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["AuctionResult", "auction"]


class AuctionResult(NamedTuple):
    """The solution of `auction` and its certificate.

    Attributes:
        perm: (n,) int32, perm[j] = the row assigned to column j (rows of C are persons).
        cost: the primal cost sum_j C[perm[j], j].
        gap: the certified duality gap: cost - OPT <= gap.
        rounds: bidding rounds run (all phases), each a dependent step: with `phases`, the
            sequential depth of the solve (the loops take fewer trips: see `SINGLE_ROUNDS_PER_TRIP`).
        phases: epsilon-scaling phases run.
        converged: whether gap <= rtol * |lower bound on OPT| + atol was reached within the limits.
    """

    perm: jax.Array
    cost: jax.Array
    gap: jax.Array
    rounds: jax.Array
    phases: jax.Array
    converged: jax.Array


def _bucket_sizes(n: int) -> tuple[int, ...]:
    """Bidder-batch sizes, largest first: n, then n / 2, n / 4, ... down to one row.

    A round computes bids for the smallest bucket that holds every unassigned row, so a round
    with few bidders (the end of a phase is a chain of single bidders) costs O(bucket x n),
    not O(n^2).
    """
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // 2))
    return tuple(sizes)


def _slacks(cost: jax.Array, prices: jax.Array, owned: jax.Array) -> jax.Array:
    """Per row i: C_i,owned(i) + p_owned(i) - min_j (C_ij + p_j) >= 0, the row's term of the gap
    (cost is +inf where a pair is not allowed)."""
    reduced = cost + prices[None, :]
    held = jnp.take_along_axis(reduced, owned[:, None], axis=1)[:, 0]
    return held - jnp.min(reduced, axis=1)


def _reprice(cost: jax.Array, prices: jax.Array, owner: jax.Array, owned: jax.Array, eps: jax.Array) -> jax.Array:
    """Lower the prices of held columns so that more pairs satisfy eps-CS at a new epsilon.

    Column j held by row i is lowered toward the price at which i is within eps of its best
    (T_j), but never below the price at which another row would come to prefer j by more
    than eps (L_j): lowering prices only raises what rows hold, so every pair that satisfied
    eps-CS still does. Any prices are a valid start for an auction phase; this one keeps most
    pairs assigned from one phase to the next, where plain epsilon scaling unassigns most.
    """
    n = cost.shape[0]
    values = cost + prices[None, :]
    own = jnp.arange(n)[None, :] == owned[:, None]
    held_cost = jnp.take_along_axis(cost, owned[:, None], axis=1)[:, 0]
    best_other = jnp.min(jnp.where(own, jnp.inf, values), axis=1)
    target = best_other + eps - held_cost  # per row: the price its column may keep
    lowered = jnp.minimum(prices, target[owner])
    held = held_cost + lowered[owned]
    floor = jnp.max(jnp.where(own, -jnp.inf, held[:, None] - eps - cost), axis=0)
    return jnp.minimum(prices, jnp.maximum(lowered, floor))


class _Bidding(NamedTuple):
    """One set's round: its reduced cost, epsilon and increment cap, and the assignment state.

    owner[j] is the row holding column j and owned[i] the column row i holds, -1 for none;
    left is the number of unassigned rows, and only an `active` set bids.
    """

    cost: jax.Array
    eps: jax.Array
    cap: jax.Array
    prices: jax.Array
    owner: jax.Array
    owned: jax.Array
    left: jax.Array
    active: jax.Array


def _bid(r: _Bidding, values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(best column, bid) along the last axis of the values: the best column's price raised by
    the margin over the second best (at most `cap`) plus eps (Bertsekas 1988)."""
    best = jnp.argmax(values, axis=-1)
    first = jnp.take_along_axis(values, best[..., None], axis=-1)[..., 0]
    others = jnp.where(jnp.arange(values.shape[-1]) == best[..., None], -jnp.inf, values)
    bid = r.prices[best] + jnp.minimum(first - jnp.max(others, axis=-1), r.cap) + r.eps
    # The price must rise even where eps is below the price's float resolution.
    return best, jnp.maximum(bid, jnp.nextafter(r.prices[best], jnp.inf))


def _bids(size: int, r: _Bidding) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One set's Jacobi round over `size` bidder slots: every unassigned row bids, each column
    goes to its highest bidder, whose previous owner is unassigned. Returns the new
    (prices, owner, owned, count)."""
    n = r.cost.shape[0]
    rows = jnp.nonzero(r.owned < 0, size=size, fill_value=0)[0]
    valid = (jnp.arange(size) < r.left) & r.active
    best, bid = _bid(r, -(r.cost[rows] + r.prices[None, :]))  # values -inf where not allowed
    bid = jnp.where(valid, bid, -jnp.inf)
    top = jax.ops.segment_max(bid, best, num_segments=n)
    # Ties go to the lowest row, so the result is deterministic.
    winner = jax.ops.segment_min(jnp.where(valid & (bid == top[best]), rows, n), best, num_segments=n)
    sold = winner < n
    owned = r.owned.at[jnp.where(sold & (r.owner >= 0), r.owner, n)].set(-1, mode="drop")
    owned = owned.at[jnp.where(sold, winner, n)].set(jnp.arange(n), mode="drop")
    count = r.left - jnp.sum(sold & (r.owner < 0))  # a sale of a free column assigns one more row
    return jnp.where(sold, top, r.prices), jnp.where(sold, winner, r.owner), owned, count


def _single_bid(r: _Bidding) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """`_bids` for one bidder, without the conflict resolution a single bid does not need (the
    end of a phase is a long chain of single-bidder rounds). Returns the new
    (prices, owner, owned, count) and whether it bid."""
    n = r.cost.shape[0]
    row = jnp.argmax(r.owned < 0)
    best, bid = _bid(r, -(r.cost[row] + r.prices))
    live = r.active & (r.left > 0)
    previous = r.owner[best]
    owned = r.owned.at[jnp.where(live & (previous >= 0), previous, n)].set(-1, mode="drop")
    owned = owned.at[jnp.where(live, row, n)].set(best, mode="drop")
    owner = r.owner.at[jnp.where(live, best, n)].set(row, mode="drop")
    prices = r.prices.at[jnp.where(live, best, n)].set(bid, mode="drop")
    return prices, owner, owned, r.left - (live & (previous < 0)), live


def _complete(owner: jax.Array, owned: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Give the rows left unassigned (only after a round limit) the free columns in order."""
    n = owner.shape[0]
    free_rows = jnp.argsort(owned >= 0, stable=True)  # unassigned rows first
    free_cols = jnp.argsort(owner >= 0, stable=True)  # unowned columns first
    k = jnp.arange(n)
    missing = jnp.sum(owned < 0)
    owned = owned.at[jnp.where(k < missing, free_rows, n)].set(free_cols, mode="drop")
    owner = owner.at[jnp.where(k < missing, free_cols, n)].set(free_rows, mode="drop")
    return owner, owned


SINGLE_ROUNDS_PER_TRIP = 4


def _round(size: int) -> Callable[[_Bidding], tuple[jax.Array, ...]]:
    """A round of a batch of sets through bucket `size`: the new (prices, owner, owned, count)
    and the rounds each set ran. With one bidder, a trip of the loop runs
    `SINGLE_ROUNDS_PER_TRIP` rounds (each a no-op once its set is assigned): fewer trips, each
    of which costs a loop-condition test (a device-to-host sync on a GPU)."""
    if size > 1:
        return lambda r: (*jax.vmap(functools.partial(_bids, size))(r), r.active.astype(jnp.int32))

    def singles(r: _Bidding) -> tuple[jax.Array, ...]:
        rounds = jnp.zeros_like(r.left)
        for _ in range(SINGLE_ROUNDS_PER_TRIP):
            prices, owner, owned, count, bid = jax.vmap(_single_bid)(r)
            r = r._replace(prices=prices, owner=owner, owned=owned, left=count)
            rounds = rounds + bid
        return r.prices, r.owner, r.owned, r.left, rounds

    return singles


class _Problem(NamedTuple):
    """One set's reduced cost and the constants of its solve."""

    reduced: jax.Array  # (n, n) cost with row and column minima removed, +inf where not allowed
    constant: jax.Array  # cost(perm) = reduced(perm) + constant for every allowed perm
    spread: jax.Array  # the largest allowed reduced cost
    atol: jax.Array  # n times the float resolution of the cost


def _prepare(cost: jax.Array, allowed: jax.Array) -> _Problem:
    """Row then column reductions: the optimum is unchanged, every entry lies in [0, spread] and
    each column has a zero, so prices stay within a few spreads of 0, where float resolution
    is finest."""
    n = cost.shape[0]
    row_min = jnp.min(jnp.where(allowed, cost, jnp.inf), axis=1, keepdims=True)
    reduced = cost - row_min
    col_min = jnp.min(jnp.where(allowed, reduced, jnp.inf), axis=0, keepdims=True)
    reduced = jnp.where(allowed, reduced - col_min, jnp.inf)
    scale = jnp.max(jnp.where(allowed, jnp.abs(cost), 0.0))
    return _Problem(
        reduced=reduced,
        constant=jnp.sum(row_min) + jnp.sum(col_min),
        spread=jnp.max(jnp.where(allowed, reduced, -jnp.inf)),
        atol=n * jnp.finfo(cost.dtype).eps * jnp.maximum(scale, jnp.finfo(cost.dtype).tiny),
    )


class _Phase(NamedTuple):
    """The state carried from one epsilon phase to the next (per set)."""

    prices: jax.Array
    owner: jax.Array
    owned: jax.Array
    eps: jax.Array
    lower: jax.Array  # the best dual lower bound on the optimal cost so far
    rounds: jax.Array
    phases: jax.Array
    done: jax.Array


def _tolerance(problem: _Problem, lower: jax.Array, rtol: float) -> jax.Array:
    return rtol * jnp.abs(lower) + problem.atol


def _end_phase(problem: _Problem, phase: _Phase, final: jax.Array, rtol: float, scaling: float) -> _Phase:
    """After a phase's rounds: the dual bound, the stopping test, and the next phase's start."""
    n = problem.reduced.shape[0]
    owner, owned = jax.tree.map(
        lambda a, b: jnp.where(final, a, b), _complete(phase.owner, phase.owned), (phase.owner, phase.owned)
    )
    prices, assigned = phase.prices, owned >= 0
    # Weak duality: any prices give a lower bound on the optimal cost.
    dual = jnp.sum(jnp.min(problem.reduced + prices, axis=1)) - jnp.sum(prices)
    lower = jnp.maximum(phase.lower, dual + problem.constant)
    tol = _tolerance(problem, lower, rtol)
    slack = jnp.where(assigned, _slacks(problem.reduced, prices, jnp.maximum(owned, 0)), 0.0)
    done = final | (jnp.all(assigned) & (jnp.sum(slack) <= tol))
    eps = jnp.maximum(phase.eps / scaling, tol / n)
    prices = jnp.where(done, prices, _reprice(problem.reduced, prices, owner, owned, eps))
    slack = jnp.where(assigned, _slacks(problem.reduced, prices, jnp.maximum(owned, 0)), 0.0)
    # The next phase keeps the pairs that satisfy eps-CS at the smaller epsilon.
    keep = done | (assigned & (slack <= eps))
    owner = jnp.where((owner >= 0) & keep[jnp.maximum(owner, 0)], owner, -1)
    owned = jnp.where(keep, owned, -1)
    return _Phase(prices, owner, owned, eps, lower, phase.rounds, phase.phases + 1, done)


def _solve(
    cost: jax.Array, allowed: jax.Array, rtol: float, scaling: float, max_phases: int, max_rounds: int
) -> AuctionResult:
    """The auction on a batch of sets, cost (b, n, n): the rounds of all sets run together, each
    round bidding through the smallest bucket that holds every set's unassigned rows."""
    n = cost.shape[1]
    buckets = _bucket_sizes(n)
    problem = jax.vmap(_prepare)(cost, allowed)
    cap = jnp.maximum(problem.spread, jnp.finfo(cost.dtype).tiny)  # a bid raises a price by at most the spread

    def rounds(phase: _Phase) -> _Phase:
        def active(count: jax.Array, phase_rounds: jax.Array) -> jax.Array:
            return ~phase.done & (count > 0) & (phase_rounds < max_rounds)

        # The unassigned count never rises within a phase, so the rounds run bucket by bucket,
        # largest first, each bucket in a loop of its own: no conditional in the loop body
        # (a conditional's operands, the cost among them, can be copied on every trip).
        state = (phase.prices, phase.owner, phase.owned, jnp.sum(phase.owned < 0, axis=1), phase.rounds * 0)
        for level, size in enumerate(buckets):
            smaller = buckets[level + 1] if level + 1 < len(buckets) else 0
            state = jax.lax.while_loop(
                _more(active, smaller), _step(_round(size), problem, phase.eps, cap, active), state
            )
        prices, owner, owned, _, phase_rounds = state
        return phase._replace(prices=prices, owner=owner, owned=owned, rounds=phase.rounds + phase_rounds)

    def run_phase(phase: _Phase) -> _Phase:
        final = (phase.eps <= _tolerance(problem, phase.lower, rtol) / n) | (phase.phases + 1 >= max_phases)
        after = rounds(phase)
        ended = jax.vmap(functools.partial(_end_phase, rtol=rtol, scaling=scaling))(problem, after, final)
        # A set already solved keeps its state while the others run.
        return jax.tree.map(lambda old, new: jnp.where(_expand(phase.done, old), old, new), phase, ended)

    # Built from the cost, so that inside shard_map the loop state varies over the mesh as the cost does.
    zeros = jax.lax.full_like(cost[:, 0, :], 0)
    none = jax.lax.full_like(cost[:, 0, :], -1, jnp.int32)
    init = _Phase(
        prices=zeros,
        owner=none,
        owned=none,
        eps=jnp.maximum(problem.spread / scaling, jnp.finfo(cost.dtype).tiny),
        lower=problem.constant,  # the dual value of zero prices
        rounds=none[:, 0] * 0,
        phases=none[:, 0] * 0,
        done=none[:, 0] > 0,
    )
    phase = jax.lax.while_loop(lambda phase: jnp.any(~phase.done), run_phase, init)
    slack = jax.vmap(_slacks)(problem.reduced, phase.prices, phase.owned)
    gap = jnp.sum(slack, axis=1)
    perm = phase.owner
    cost_of = jnp.sum(jnp.take_along_axis(cost, perm[:, None, :], axis=1)[:, 0], axis=1)
    return AuctionResult(
        perm=perm,
        cost=cost_of,
        gap=gap,
        rounds=phase.rounds,
        phases=phase.phases,
        converged=gap <= jax.vmap(functools.partial(_tolerance, rtol=rtol))(problem, phase.lower),
    )


_State = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]  # prices, owner, owned, count, rounds


def _step(
    bids: Callable[[_Bidding], tuple[jax.Array, ...]],
    problem: _Problem,
    eps: jax.Array,
    cap: jax.Array,
    active: Callable[[jax.Array, jax.Array], jax.Array],
) -> Callable[[_State], _State]:
    """A trip of a bucket's loop: the round for the sets still bidding."""

    def step(state: _State) -> _State:
        prices, owner, owned, count, phase_rounds = state
        live = active(count, phase_rounds)
        prices, owner, owned, count, ran = bids(_Bidding(problem.reduced, eps, cap, prices, owner, owned, count, live))
        return prices, owner, owned, count, phase_rounds + ran

    return step


def _more(active: Callable[[jax.Array, jax.Array], jax.Array], smaller: int) -> Callable[[_State], jax.Array]:
    """A bucket's loop runs while some set bidding has more unassigned rows than the next bucket holds."""
    return lambda state: jnp.any(active(state[3], state[4]) & (state[3] > smaller))


def _expand(flag: jax.Array, like: jax.Array) -> jax.Array:
    return flag.reshape(flag.shape + (1,) * (like.ndim - flag.ndim))


def auction(
    cost: jax.Array,
    allowed: jax.Array | None = None,
    *,
    rtol: float = 1e-7,
    scaling: float = 6.0,
    max_phases: int = 64,
    max_rounds: int | None = None,
) -> AuctionResult:
    """The min-cost assignment of a square cost by the epsilon-scaling Jacobi auction.

    Jits, runs inside `shard_map`, and under `jax.vmap` solves the sets together (one loop of
    rounds, each set's bids through the same bucket); the result depends only on the cost
    (ties go to the lowest index).

    Args:
        cost: (n, n) finite costs; rows are assigned to columns.
        allowed: optional (n, n) bool, False where row i may not take column j (e.g. across
            classes). The allowed pairs must hold a complete assignment.
        rtol: the duality gap to reach, relative: cost - OPT <= rtol * |lower bound| + atol.
        scaling: the factor epsilon is divided by between phases.
        max_phases: at most this many epsilon phases.
        max_rounds: at most this many bidding rounds per phase (default 50 n + 1000).

    Returns:
        An `AuctionResult`: perm[j] = the row assigned to column j, the cost, the gap, the
        rounds and phases run, and whether the gap reached the tolerance.
    """
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"auction needs a square (n, n) cost, got shape {cost.shape}.")
    if allowed is not None and allowed.shape != cost.shape:
        raise ValueError(f"allowed must have the cost's shape {cost.shape}, got {allowed.shape}.")
    n = cost.shape[0]
    cost = cost.astype(cost.dtype if jnp.issubdtype(cost.dtype, jnp.floating) else jnp.float32)
    allowed = jnp.ones((n, n), bool) if allowed is None else allowed.astype(bool)
    solve = functools.partial(
        _solve,
        rtol=rtol,
        scaling=scaling,
        max_phases=max_phases,
        max_rounds=50 * n + 1000 if max_rounds is None else max_rounds,
    )

    @jax.custom_batching.custom_vmap
    def one(cost: jax.Array, allowed: jax.Array) -> AuctionResult:
        return jax.tree.map(lambda x: x[0], solve(cost[None], allowed[None]))

    @one.def_vmap
    def batched(
        axis_size: int, in_batched: list[bool], cost: jax.Array, allowed: jax.Array
    ) -> tuple[AuctionResult, AuctionResult]:
        cost = cost if in_batched[0] else jnp.broadcast_to(cost, (axis_size, *cost.shape))
        allowed = allowed if in_batched[1] else jnp.broadcast_to(allowed, (axis_size, *allowed.shape))
        result = solve(cost, allowed)
        return result, jax.tree.map(lambda _: True, result)

    return one(cost, allowed)
