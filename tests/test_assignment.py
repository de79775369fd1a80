"""The auction assignment solver: SciPy's optimum within its certified gap on random, tied,
duplicated and masked costs; always a permutation; deterministic; vmap and shard_map equal
to one set at a time; one compile."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.sharding import Mesh, PartitionSpec

from fm_jax.assignment import auction
from fm_jax.primitives import pairwise_sq_distances

solve = jax.jit(auction)


def _points(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), (1.0 + 2.0 * rng.normal(size=(n, d))).astype(np.float32)


def _optimum(cost, allowed=None):
    cost = np.asarray(cost, np.float64)
    if allowed is not None:
        cost = np.where(np.asarray(allowed), cost, 1e18)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return cost[rows, cols].sum()


def _check(cost, result, allowed=None, rtol=1e-6):
    """A permutation (within the allowed pairs) whose cost is SciPy's optimum within the
    certified gap, the gap within its tolerance."""
    n = cost.shape[0]
    perm = np.asarray(result.perm)
    assert sorted(perm.tolist()) == list(range(n))
    if allowed is not None:
        assert np.asarray(allowed)[perm, np.arange(n)].all()
    ours = np.asarray(cost, np.float64)[perm, np.arange(n)].sum()
    best = _optimum(cost, allowed)
    np.testing.assert_allclose(float(result.cost), ours, rtol=1e-5, atol=1e-5)
    assert bool(result.converged)
    # The certificate: the cost exceeds the optimum by at most the gap (up to float32 sums).
    slack = 1e-6 * abs(best) + 1e-5
    assert ours - best <= float(result.gap) + slack
    assert ours - best <= rtol * abs(best) + slack
    return ours, best


@pytest.mark.parametrize(
    "n,d,seed", [(1, 2, 0), (2, 2, 1), (3, 2, 2), (17, 2, 3), (128, 2, 4), (128, 3072, 5), (1024, 2, 6)]
)
def test_auction_equals_scipy_on_random_costs(n, d, seed):
    x0, x1 = _points(n, d, seed)
    cost = pairwise_sq_distances(jnp.asarray(x0), jnp.asarray(x1))
    result = solve(cost)
    _check(cost, result)
    assert int(result.rounds) >= 1 and int(result.phases) >= 1


@pytest.mark.parametrize("n", [5, 64, 200])
def test_auction_on_tied_integer_costs(n):
    # Few distinct values: many optimal assignments, and every bid meets ties.
    cost = jnp.asarray(np.random.default_rng(n).integers(0, 4, size=(n, n)), jnp.float32)
    _check(cost, solve(cost))
    # All costs equal: any permutation is optimal; the solve still ends at once.
    flat = solve(jnp.ones((n, n)))
    assert sorted(np.asarray(flat.perm).tolist()) == list(range(n)) and float(flat.gap) <= 1e-30


def test_auction_on_duplicated_points():
    x0, x1 = _points(96, 2, 7)
    x0 = np.repeat(x0[:24], 4, axis=0)  # every source point four times
    cost = pairwise_sq_distances(jnp.asarray(x0), jnp.asarray(x1))
    _check(cost, solve(cost))
    # The data itself as the source: the identity is optimal. (Its cost is the trace, ~1e-6 and
    # not 0: |x|^2 + |y|^2 - 2 x.y rounds in float32, by an amount that depends on the CPU's
    # instructions.)
    same = pairwise_sq_distances(jnp.asarray(x1), jnp.asarray(x1))
    result = solve(same)
    _check(same, result)
    assert np.asarray(result.perm).tolist() == list(range(len(x1)))
    assert float(result.cost) == pytest.approx(float(jnp.trace(same)), abs=1e-6)


@pytest.mark.parametrize("n,classes", [(60, 3), (256, 10), (33, 33)])
def test_auction_with_a_class_mask(n, classes):
    x0, x1 = _points(n, 2, n)
    labels = np.random.default_rng(classes).integers(0, classes, size=n)
    allowed = jnp.asarray(labels[:, None] == labels[None, :])
    cost = pairwise_sq_distances(jnp.asarray(x0), jnp.asarray(x1))
    _check(cost, solve(cost, allowed), allowed)


def test_auction_meets_one_part_in_a_million_of_the_optimum():
    # The README's figure: the relative cost gap to the exact optimum (POT and SciPy agree).
    for n, d, seed in [(256, 2, 10), (256, 3072, 11), (512, 16, 12)]:
        x0, x1 = _points(n, d, seed)
        cost = pairwise_sq_distances(jnp.asarray(x0), jnp.asarray(x1))
        ours, best = _check(cost, solve(cost))
        assert (ours - best) / best <= 1e-6


def test_auction_returns_a_permutation_when_the_round_limit_is_hit():
    x0, x1 = _points(64, 2, 8)
    cost = pairwise_sq_distances(jnp.asarray(x0), jnp.asarray(x1))
    result = jax.jit(functools.partial(auction, max_rounds=3))(cost)
    assert sorted(np.asarray(result.perm).tolist()) == list(range(64))
    assert not bool(result.converged)
    assert float(result.cost) >= _optimum(cost) - 1e-3


def test_auction_is_deterministic_and_compiles_once():
    solver = jax.jit(lambda cost: auction(cost))  # a function of its own, so its cache counts only these calls
    costs = [pairwise_sq_distances(*map(jnp.asarray, _points(48, 2, s))) for s in range(3)]
    first = [np.asarray(solver(c).perm) for c in costs]
    again = [np.asarray(solver(c).perm) for c in costs]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert solver._cache_size() == 1


def test_auction_vmap_and_shard_map_equal_one_set_at_a_time():
    sets = 8
    x0, x1 = zip(*[_points(40, 3, 20 + s) for s in range(sets)], strict=True)
    costs = jax.vmap(pairwise_sq_distances)(jnp.asarray(np.stack(x0)), jnp.asarray(np.stack(x1)))
    single = [solve(c) for c in costs]
    batched = jax.jit(jax.vmap(auction))(costs)
    mesh = Mesh(np.asarray(jax.devices()[:sets]), ("data",))
    sharded = jax.jit(
        jax.shard_map(
            lambda c: jax.vmap(auction)(c), mesh=mesh, in_specs=PartitionSpec("data"), out_specs=PartitionSpec("data")
        )
    )(costs)
    for s, one in enumerate(single):
        for result in (batched, sharded):
            np.testing.assert_array_equal(result.perm[s], one.perm)
            np.testing.assert_allclose(result.gap[s], one.gap, rtol=1e-6)
            assert int(result.rounds[s]) == int(one.rounds)


def test_auction_rejects_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        auction(jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="allowed must have"):
        auction(jnp.zeros((3, 3)), jnp.ones((2, 2), bool))
