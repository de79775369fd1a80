"""Host OT solves: the sets of a vmapped call reach the host in one callback and are solved in
parallel threads, with bitwise the pairs of one thread, each an optimal assignment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fm_jax as fm
from fm_jax import host_ot
from fm_jax.primitives import pairwise_sq_distances


@pytest.fixture(autouse=True)
def default_threads():
    yield
    host_ot.set_threads(None)


def _costs(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(*shape, n, 2)).astype(np.float32)
    x1 = (1.0 + 2.0 * rng.normal(size=(*shape, n, 2))).astype(np.float32)
    return x0, x1


def test_parallel_solves_equal_one_thread_and_are_optimal():
    x0, x1 = _costs((3, 4), 50)
    costs = np.asarray(jax.vmap(jax.vmap(pairwise_sq_distances))(x0, x1), np.float64)
    perms = {}
    for count in (1, 2, 5):
        host_ot.set_threads(count)
        perms[count] = host_ot.assignments(costs)
    np.testing.assert_array_equal(perms[1], perms[2])
    np.testing.assert_array_equal(perms[1], perms[5])
    assert perms[1].shape == (3, 4, 50) and perms[1].dtype == np.int32
    for cost, perm in zip(costs.reshape(-1, 50, 50), perms[1].reshape(-1, 50), strict=True):
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[perm, np.arange(50)].sum(), cost[rows, cols].sum(), rtol=1e-12)


def test_a_vmapped_call_reaches_the_host_once(monkeypatch):
    calls = []
    solve = host_ot.assignments
    monkeypatch.setattr(host_ot, "assignments", lambda costs: calls.append(costs.shape) or solve(costs))
    host_ot.set_threads(2)
    x0, x1 = _costs((6,), 32, seed=1)
    coupling = fm.couplings.ExactOT(solver="network_simplex")
    batched = np.asarray(jax.jit(jax.vmap(coupling.assignment))(jnp.asarray(x0), jnp.asarray(x1)))
    assert calls == [(6, 32, 32)]
    single = [np.asarray(coupling.assignment(jnp.asarray(a), jnp.asarray(b))) for a, b in zip(x0, x1, strict=True)]
    np.testing.assert_array_equal(batched, np.stack(single))


def test_thread_counts_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="positive integer"):
        host_ot.set_threads(0)
    monkeypatch.setenv("FM_JAX_HOST_THREADS", "3")
    assert host_ot.threads() == 3
    host_ot.set_threads(1)
    assert host_ot.threads() == 1
    host_ot.set_threads(None)
    monkeypatch.setenv("FM_JAX_HOST_THREADS", "many")
    with pytest.raises(ValueError, match="FM_JAX_HOST_THREADS must be a positive integer"):
        host_ot.threads()
