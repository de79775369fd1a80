"""Metrics against closed forms: W2 of translations and Gaussians, MMD of Gaussians, path energy and curvature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize

import fm_jax as fm

MU = jnp.array([2.0, -1.0])
S = 0.5


def test_w2_of_a_translation_is_its_length():
    x = np.random.default_rng(0).normal(size=(300, 3))
    delta = np.array([0.3, -2.0, 1.0])
    assert fm.metrics.w2(x, x + delta) == pytest.approx(np.linalg.norm(delta), rel=1e-9)
    assert fm.metrics.w2(x, x[::-1]) == pytest.approx(0.0, abs=1e-7)


def test_w2_equals_the_optimal_assignment_and_is_symmetric():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) * 2 + 1
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert fm.metrics.w2(x, y) == pytest.approx(np.sqrt(cost[rows, cols].mean()), rel=1e-9)
    # Unequal sizes: a transport plan, not an assignment; symmetric in its arguments.
    assert fm.metrics.w2(x, y[:150]) == pytest.approx(fm.metrics.w2(y[:150], x), rel=1e-9)


def test_w2_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        fm.metrics.w2(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="subsample"):
        fm.metrics.w2(np.zeros((10_001, 2)), np.zeros((5, 2)))


def gaussian_mmd2(delta_mu, s, h, d):
    """MMD^2 between N(mu, s^2 I) and N(mu + delta_mu, s^2 I) for k = exp(-|u - v|^2 / (2 h^2))."""
    c = (h**2 / (h**2 + 2 * s**2)) ** (d / 2)
    return 2 * c * (1 - np.exp(-np.sum(np.square(delta_mu)) / (2 * (h**2 + 2 * s**2))))


def test_mmd_matches_the_gaussian_closed_form():
    n, d, s, h = 2000, 2, 0.7, 1.3
    delta = np.array([0.8, 0.0])
    x = s * jax.random.normal(jax.random.key(0), (n, d))
    y = s * jax.random.normal(jax.random.key(1), (n, d)) + delta
    assert float(fm.metrics.mmd2(x, y, bandwidths=h)) == pytest.approx(gaussian_mmd2(delta, s, h, d), abs=0.01)
    # Unbiased: near zero between two samples of one distribution, and a sum of kernels adds up.
    same = [float(fm.metrics.mmd2(x, s * jax.random.normal(jax.random.key(k), (n, d)), bandwidths=h)) for k in (2, 3)]
    assert max(map(abs, same)) < 0.003
    both = float(fm.metrics.mmd2(x, y, bandwidths=jnp.array([h, 2 * h])))
    expected = gaussian_mmd2(delta, s, h, d) + gaussian_mmd2(delta, s, 2 * h, d)
    assert both == pytest.approx(expected, abs=0.015)
    # The median-heuristic default gives a positive value for different distributions.
    assert float(fm.metrics.mmd2(x, y)) > 0.05


def test_constant_field_is_straight():
    c = jnp.array([1.5, -0.5])
    x0 = jax.random.normal(jax.random.key(0), (100, 2))
    m = fm.metrics.trajectory_metrics(lambda t, x: jnp.broadcast_to(c, x.shape), x0, fm.solvers.SolverSpec("euler", 4))
    np.testing.assert_allclose(m.x1, x0 + c, atol=1e-5)
    assert float(m.path_energy) == pytest.approx(float(c @ c), rel=1e-5)
    assert float(m.curvature) == pytest.approx(0.0, abs=1e-5)
    assert int(m.nfe) == 4


def test_displacement_interpolation_has_zero_curvature_and_normalized_path_energy():
    """The straight-line flow of the OT map x -> MU + S x between N(0, I) and N(MU, S^2 I)."""

    def vf(t, x):
        return MU + (S - 1.0) * (x - MU * t) / (1.0 - t + t * S)

    x0 = jax.random.normal(jax.random.key(0), (2000, 2))
    m = fm.metrics.trajectory_metrics(vf, x0, fm.solvers.SolverSpec("dopri5", rtol=1e-7, atol=1e-7))
    np.testing.assert_allclose(m.x1, MU + S * x0, atol=1e-4)
    assert float(m.curvature) == pytest.approx(0.0, abs=1e-4)
    w2_sq = float(jnp.mean(jnp.sum((MU + S * x0 - x0) ** 2, -1)))  # the OT cost of these samples
    assert float(fm.metrics.normalized_path_energy(m.path_energy, w2_sq)) < 1e-4
    # And the population value: W2^2 = |MU|^2 + d (1 - S)^2.
    assert float(m.path_energy) == pytest.approx(float(MU @ MU) + 2 * (1 - S) ** 2, rel=0.02)


def test_independent_coupling_flow_is_curved_by_the_closed_form_amount():
    """Marginal CondOT flow between N(0, I) and N(MU, S^2 I): x_t = t MU + sqrt(V_t) x0, V_t = (1 - t)^2 + t^2 S^2.

    Per trajectory |v|^2 = |MU|^2 + 2 r' MU.x0 + r'^2 |x0|^2 with r = sqrt(V_t), so
    PE = |MU|^2 + 2 (S - 1) mean(MU.x0) + I mean|x0|^2 and C = (I - (S - 1)^2) mean|x0|^2,
    with I = int_0^1 r'(t)^2 dt > (S - 1)^2 (Cauchy-Schwarz): the flow is not straight.
    """
    flow = fm.GaussianFlow(fm.paths.CondOT(), mu1=MU, s1=S)
    x0 = jax.random.normal(jax.random.key(1), (2000, 2))
    m = fm.metrics.trajectory_metrics(flow.velocity, x0, fm.solvers.SolverSpec("tsit5", rtol=1e-7, atol=1e-7))

    def dr(t):
        v = (1 - t) ** 2 + t**2 * S**2
        return (-(1 - t) + t * S**2) / np.sqrt(v)

    integral = scipy.integrate.quad(lambda t: dr(t) ** 2, 0, 1, epsabs=1e-12)[0]
    sq = float(jnp.mean(jnp.sum(x0**2, -1)))
    pe = float(MU @ MU) + 2 * (S - 1) * float(jnp.mean(x0 @ MU)) + integral * sq
    assert float(m.path_energy) == pytest.approx(pe, rel=1e-4)
    assert float(m.curvature) == pytest.approx((integral - (S - 1) ** 2) * sq, rel=1e-3)
    assert float(m.curvature) > 0.05
