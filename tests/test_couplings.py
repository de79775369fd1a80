"""Couplings: exact OT against SciPy, Sinkhorn marginals, Schrodinger-bridge epsilon, labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fm_jax as fm
from fm_jax.primitives import pairwise_sq_distances


def _batch(n, d=2, seed=0, shift=1.0):
    k0, k1 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k0, (n, d)), shift + 2.0 * jax.random.normal(k1, (n, d))


def _scipy_cost(x0, x1):
    cost = np.asarray(pairwise_sq_distances(x0, x1), np.float64)
    r, c = scipy.optimize.linear_sum_assignment(cost)
    return cost[r, c].sum()


@pytest.mark.parametrize("solver", fm.couplings.EXACT_SOLVERS)
@pytest.mark.parametrize("n,d,seed", [(8, 2, 0), (64, 2, 1), (100, 5, 2), (48, 64, 3)])
def test_exact_ot_is_optimal_permutation(n, d, seed, solver):
    x0, x1 = _batch(n, d, seed)
    labels = jnp.arange(n)
    coupling = fm.couplings.ExactOT(solver=solver)
    y0, y1, out_labels = jax.jit(coupling)(jax.random.key(0), x0, x1, labels)
    # x1 and labels are untouched; x0 is a permutation of itself.
    np.testing.assert_array_equal(y1, x1)
    np.testing.assert_array_equal(out_labels, labels)
    perm = coupling.assignment(x0, x1)
    assert sorted(np.asarray(perm).tolist()) == list(range(n))
    np.testing.assert_array_equal(y0, x0[perm])
    ours = float(jnp.sum((y0 - y1) ** 2))
    np.testing.assert_allclose(ours, _scipy_cost(x0, x1), rtol=1e-5)


def test_network_simplex_matches_hungarian_under_vmap_and_classes():
    x0, x1 = jax.vmap(lambda k: jnp.stack(_batch(40, 3, 0)) + jax.random.normal(k, (2, 40, 3)))(
        jax.random.split(jax.random.key(0), 3)
    ).transpose(1, 0, 2, 3)
    labels = jnp.tile(jnp.arange(40) % 3, (3, 1))
    perms = {
        solver: jax.jit(jax.vmap(fm.couplings.ExactOT(class_conditional=True, solver=solver).assignment))(
            x0, x1, labels
        )
        for solver in fm.couplings.EXACT_SOLVERS
    }
    np.testing.assert_array_equal(perms["hungarian"], perms["network_simplex"])
    np.testing.assert_array_equal(jnp.take_along_axis(labels, perms["hungarian"], 1), labels)


def test_exact_ot_equals_scipy_on_random_costs_and_is_equivariant():
    x0, x1 = _batch(32, 3, 7)
    perm = np.asarray(fm.couplings.ExactOT().assignment(x0, x1))
    cost = np.asarray(pairwise_sq_distances(x0, x1), np.float64)
    r, c = scipy.optimize.linear_sum_assignment(cost)
    np.testing.assert_array_equal(perm[c], r)  # unique optimum for continuous random data
    # Shuffling the source points does not change which pairs are formed.
    shuffle = np.asarray(jax.random.permutation(jax.random.key(3), 32))
    y0, _, _ = fm.couplings.ExactOT()(None, x0[shuffle], x1)
    np.testing.assert_allclose(y0, x0[perm])


def test_exact_ot_shortens_pairs_and_is_identity_on_sorted_1d():
    x = jnp.linspace(-3, 3, 16)[:, None]
    y = jnp.linspace(0, 5, 16)[:, None]
    shuffle = jax.random.permutation(jax.random.key(0), 16)
    y0, _, _ = fm.couplings.ExactOT()(None, x[shuffle], y)
    np.testing.assert_allclose(y0, x)  # monotone rearrangement in 1D


def test_class_conditional_exact_ot_pairs_within_classes_optimally():
    n = 60
    x0, x1 = _batch(n, 2, 4)
    labels = jax.random.randint(jax.random.key(5), (n,), 0, 3)
    coupling = fm.couplings.ExactOT(class_conditional=True)
    y0, y1, out = coupling(None, x0, x1, labels)
    perm = np.asarray(coupling.assignment(x0, x1, labels))
    labels = np.asarray(labels)
    # The source point in row i carries the label of data row i: pairs never cross classes.
    np.testing.assert_array_equal(labels[perm], labels)
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        ours = float(jnp.sum((y0[idx] - y1[idx]) ** 2))
        np.testing.assert_allclose(ours, _scipy_cost(x0[idx], x1[idx]), rtol=1e-5)


def test_sinkhorn_plan_has_uniform_marginals_and_near_optimal_cost():
    x0, x1 = _batch(128, 2, 6)
    coupling = fm.couplings.SinkhornOT(epsilon=0.01, relative_epsilon=True, threshold=3e-5)
    pi = coupling.plan(x0, x1)
    np.testing.assert_allclose(pi.sum(1), 1 / 128, rtol=1e-3)
    np.testing.assert_allclose(pi.sum(0), 1 / 128, rtol=1e-3)
    cost = pairwise_sq_distances(x0, x1)
    exact = _scipy_cost(x0, x1) / 128
    assert exact <= float(jnp.sum(pi * cost)) <= 1.1 * exact
    # A large epsilon approaches the independent coupling.
    flat = fm.couplings.SinkhornOT(epsilon=1e4, relative_epsilon=False).plan(x0, x1)
    np.testing.assert_allclose(flat, 1 / 128**2, rtol=0.05)


def test_sinkhorn_relative_epsilon_scales_with_the_mean_cost():
    x0, x1 = _batch(32)
    cost = pairwise_sq_distances(x0, x1)
    rel = fm.couplings.SinkhornOT(epsilon=0.1, relative_epsilon=True)
    np.testing.assert_allclose(rel.absolute_epsilon(cost), 0.1 * jnp.mean(cost), rtol=1e-6)
    # Relative epsilon makes the plan invariant to a rescaling of the data.
    np.testing.assert_allclose(rel.plan(x0, x1), rel.plan(3 * x0, 3 * x1), atol=1e-6)


def test_sinkhorn_samples_pairs_from_the_plan_with_labels():
    n = 16
    x0, x1 = _batch(n, 2, 8)
    labels = jnp.arange(n) + 100
    coupling = fm.couplings.SinkhornOT(epsilon=0.05)
    pi = np.asarray(coupling.plan(x0, x1))
    y0, y1, out = jax.jit(coupling)(jax.random.key(1), x0, x1, labels)
    for row in range(n):
        i = int(np.flatnonzero((np.asarray(x0) == np.asarray(y0[row])).all(1))[0])
        j = int(np.flatnonzero((np.asarray(x1) == np.asarray(y1[row])).all(1))[0])
        assert out[row] == labels[j]
        assert pi[i, j] > 1e-6 / n**2
    # Frequencies of drawn pairs follow the plan.
    i, j = fm.couplings.sample_pairs(jax.random.key(2), jnp.asarray(pi), 200_000)
    freq = np.zeros((n, n))
    np.add.at(freq, (np.asarray(i), np.asarray(j)), 1.0 / 200_000)
    np.testing.assert_allclose(freq, pi / pi.sum(), atol=3e-3)


def test_sinkhorn_hard_assignment_keeps_data_order():
    x0, x1 = _batch(32, 2, 9)
    coupling = fm.couplings.SinkhornOT(epsilon=1e-3, hard=True, threshold=1e-4, max_iterations=20000)
    y0, y1, _ = coupling(None, x0, x1)
    np.testing.assert_array_equal(y1, x1)
    pi = coupling.plan(x0, x1)
    np.testing.assert_array_equal(y0, x0[jnp.argmax(pi, axis=0)])
    # With a small epsilon the hard assignment is the exact one.
    np.testing.assert_allclose(y0, fm.couplings.ExactOT()(None, x0, x1)[0], atol=1e-6)


def test_schrodinger_bridge_uses_two_sigma_squared():
    sb = fm.couplings.SchrodingerBridge(sigma=0.3)
    assert sb.sinkhorn.epsilon == pytest.approx(2 * 0.3**2)
    assert sb.sinkhorn.relative_epsilon is False
    x0, x1 = _batch(24)
    np.testing.assert_allclose(
        sb.sinkhorn.plan(x0, x1),
        fm.couplings.SinkhornOT(epsilon=0.18, relative_epsilon=False).plan(x0, x1),
    )


def test_class_conditional_sinkhorn_never_crosses_classes():
    n = 40
    x0, x1 = _batch(n, 2, 10)
    labels = jnp.arange(n) % 4
    pi = fm.couplings.SinkhornOT(epsilon=0.1, class_conditional=True).plan(x0, x1, labels)
    cross = np.asarray(labels)[:, None] != np.asarray(labels)[None, :]
    assert float(np.asarray(pi)[cross].sum()) < 1e-6
    np.testing.assert_allclose(pi.sum(0), 1 / n, rtol=1e-2)


def test_drawn_pairs_never_cross_classes_in_a_large_batch():
    """Zero-mass entries of a 2048 x 2048 plan are never drawn (float32 round-off must not leak mass)."""
    n = 2048
    x0, x1 = _batch(n, 2, 11)
    labels = jnp.arange(n) % 2
    coupling = fm.couplings.SinkhornOT(epsilon=0.05, class_conditional=True)
    pi = jax.jit(coupling.plan)(x0, x1, labels)
    i, j = jax.jit(fm.couplings.sample_pairs, static_argnums=2)(jax.random.key(0), pi, 100_000)
    assert np.all(np.asarray(labels)[np.asarray(i)] == np.asarray(labels)[np.asarray(j)])


def test_unconverged_sinkhorn_warns():
    x0, x1 = _batch(64, 2, 12)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        jax.block_until_ready(fm.couplings.SchrodingerBridge(sigma=0.03).sinkhorn.plan(x0, x1))
        jax.effects_barrier()


def test_sinkhorn_stats_say_whether_the_plan_converged_and_pair_as_the_coupling_does():
    """`call_with_stats` (what the train step calls) gives the coupling's pairs, its epsilon,
    iterations and convergence flag, and no host warning; the other couplings give no stats."""
    import warnings

    x0, x1 = _batch(64, 2, 12)
    key = jax.random.key(3)
    for sigma, converged in ((1.0, 1.0), (0.03, 0.0)):
        sb = fm.couplings.SchrodingerBridge(sigma=sigma)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unconverged plan is reported by the caller, not here
            pairs, stats = jax.jit(sb.call_with_stats)(key, x0, x1)
            jax.effects_barrier()
        assert float(stats["sinkhorn_converged"]) == converged
        assert float(stats["sinkhorn_epsilon"]) == pytest.approx(2 * sigma**2)
        iterations = float(stats["sinkhorn_iterations"])
        assert (iterations == sb.sinkhorn.max_iterations) == (converged == 0.0) and iterations > 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = sb(key, x0, x1)
        for got, want in zip(pairs[:2], expected[:2]):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    pairs, stats = fm.couplings.ExactOT().call_with_stats(key, x0, x1)
    assert stats == {} and np.array_equal(pairs[0], fm.couplings.ExactOT()(key, x0, x1)[0])


def test_a_schrodinger_bridge_needs_a_positive_sigma():
    for sigma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=r"SchrodingerBridge needs sigma > 0 .*--config.sigma=1"):
            fm.couplings.SchrodingerBridge(sigma=sigma)


def test_independent_is_identity():
    x0, x1 = _batch(8)
    y0, y1, lab = fm.couplings.Independent()(jax.random.key(0), x0, x1, jnp.ones(8))
    np.testing.assert_array_equal(y0, x0)
    np.testing.assert_array_equal(y1, x1)


def test_couplings_reject_bad_input():
    x0, x1 = _batch(8)
    with pytest.raises(ValueError, match="Unknown exact OT solver 'lsa'"):
        fm.couplings.ExactOT(solver="lsa")
    with pytest.raises(ValueError, match="same shape"):
        fm.couplings.ExactOT()(None, x0[:4], x1)
    with pytest.raises(ValueError, match="needs labels"):
        fm.couplings.ExactOT(class_conditional=True)(None, x0, x1)
    with pytest.raises(ValueError, match="labels have"):
        fm.couplings.SinkhornOT()(jax.random.key(0), x0, x1, jnp.zeros(3))


@pytest.mark.parametrize("hard", [False, True])
def test_online_sinkhorn_gives_the_dense_plans_pairs_without_an_n_by_n_array(hard):
    x0, x1 = _batch(64, 3, 9)
    labels = jnp.arange(64)
    dense, online = fm.couplings.SinkhornOT(hard=hard), fm.couplings.SinkhornOT(hard=hard, online=16)
    solved = dense.solve(x0, x1), online.solve(x0, x1)
    np.testing.assert_allclose(solved[0].f, solved[1].f, atol=1e-4)
    np.testing.assert_allclose(solved[0].g, solved[1].g, atol=1e-4)
    assert float(solved[0].epsilon) == pytest.approx(float(solved[1].epsilon), rel=1e-5)
    assert solved[1].plan is None
    # The same pairs: the potentials give the plan's rows, and the draws use the same uniforms.
    for a, b in zip(
        jax.jit(dense)(jax.random.key(5), x0, x1, labels), jax.jit(online)(jax.random.key(5), x0, x1, labels)
    ):
        np.testing.assert_array_equal(a, b)
    # Memory: the online solve and draw never hold the n x n plan or cost.
    n = 2048
    big = jax.random.normal(jax.random.key(0), (n, 2))
    memory = jax.jit(online).lower(jax.random.key(0), big, big + 1.0).compile().memory_analysis()
    assert memory.temp_size_in_bytes < n * n * 4 / 8


def test_online_sinkhorn_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="online=k"):
        fm.couplings.SinkhornOT(online=-1)
    with pytest.raises(ValueError, match="class_conditional=True"):
        fm.couplings.SinkhornOT(online=8, class_conditional=True)
    with pytest.raises(ValueError, match="never forms the n x n plan"):
        fm.couplings.SinkhornOT(online=8).plan(*_batch(8))
