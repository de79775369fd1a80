"""Paths: u_t is the time derivative of x_t, endpoints, prediction conversions."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fm_jax as fm
from fm_jax.paths import PREDICTIONS

T = jnp.array([0.05, 0.2, 0.37, 0.5, 0.63, 0.8, 0.95])


def _data(n=None, d=3, seed=0):
    n = len(T) if n is None else n
    k0, k1, kz = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k0, (n, d)), 2.0 + jax.random.normal(k1, (n, d)), jax.random.normal(kz, (n, d)))


def test_velocity_is_finite_difference_of_x_t(path):
    with jax.enable_x64(True):
        x0, x1, z = (np.asarray(v, np.float64) for v in _data())
        t = np.asarray(T, np.float64)
        h = 1e-5
        x_plus, _ = path.interpolate(t + h, x0, x1, z)
        x_minus, _ = path.interpolate(t - h, x0, x1, z)
        _, u_t = path.interpolate(t, x0, x1, z)
        np.testing.assert_allclose(u_t, (x_plus - x_minus) / (2 * h), rtol=1e-6, atol=1e-6)


# (a, b, g) at t = 0 and t = 1 as each path's paper defines them.
def _endpoints(path):
    if isinstance(path, fm.paths.CondOT):
        return (1, 0, 0), (path.sigma_min, 1, 0)
    if isinstance(path, fm.paths.VPDiffusion):
        return (
            math.sqrt(1 - math.exp(-0.5 * (path.beta_min + path.beta_max))),
            math.exp(-0.25 * (path.beta_min + path.beta_max)),
            0,
        ), (0, 1, 0)
    if isinstance(path, fm.paths.VEDiffusion):
        return (path.sigma_max, 1, 0), (path.sigma_min, 1, 0)
    if isinstance(path, (fm.paths.ICFM, fm.paths.Trigonometric)):
        return (1, 0, path.sigma), (0, 1, path.sigma)
    return (1, 0, 0), (0, 1, 0)


def test_endpoints(path):
    x0, x1, z = _data(2)
    (a0, b0, g0), (a1, b1, g1) = _endpoints(path)
    for t, (a, b, g) in ((0.0, (a0, b0, g0)), (1.0, (a1, b1, g1))):
        x_t, _ = path.interpolate(jnp.full((2,), t), x0, x1, z)
        np.testing.assert_allclose(x_t, a * x0 + b * x1 + g * z, rtol=1e-5, atol=1e-5)


def test_noise_free_paths_hit_x0_and_x1():
    x0, x1, _ = _data(2)
    for path in (
        fm.paths.CondOT(),
        fm.paths.ICFM(),
        fm.paths.Trigonometric(),
        fm.paths.Cosine(),
        fm.paths.LinearVP(),
        fm.paths.Polynomial(3.0),
        fm.paths.BrownianBridge(0.0),
    ):
        x_start, _ = path.interpolate(jnp.zeros(2), x0, x1, jnp.zeros_like(x0))
        x_end, _ = path.interpolate(jnp.ones(2), x0, x1, jnp.zeros_like(x0))
        np.testing.assert_allclose(x_start, x0, atol=1e-6)
        np.testing.assert_allclose(x_end, x1, atol=1e-6)


def test_brownian_bridge_hits_both_ends_exactly():
    x0, x1, z = _data(2)
    path = fm.paths.BrownianBridge(sigma=2.0)
    np.testing.assert_allclose(path.interpolate(jnp.zeros(2), x0, x1, z)[0], x0, atol=1e-6)
    np.testing.assert_allclose(path.interpolate(jnp.ones(2), x0, x1, z)[0], x1, atol=1e-6)


@pytest.mark.parametrize("src,dst", list(itertools.permutations(PREDICTIONS, 2)))
def test_conversions_invert_each_other(path, src, dst):
    with jax.enable_x64(True):
        _, x_t, pred = (np.asarray(v, np.float64) for v in _data())
        t = np.asarray(T, np.float64)
        there = path.convert(pred, t, x_t, src=src, dst=dst)
        back = path.convert(there, t, x_t, src=dst, dst=src)
        np.testing.assert_allclose(back, pred, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "path",
    [
        fm.paths.CondOT(sigma_min=0.05),
        fm.paths.ICFM(sigma=0.4),
        fm.paths.Trigonometric(),
        fm.paths.VPDiffusion(),
        fm.paths.BrownianBridge(0.7),
        fm.paths.Polynomial(2.0),
    ],
    ids=repr,
)
def test_conversions_match_closed_form_gaussian(path):
    """N(0, I) -> N(mu, s^2 I): the exact marginal velocity converts to the exact E[x1 | x_t] and score."""
    flow = fm.GaussianFlow(path, mu1=jnp.array([1.5, -0.5, 0.25]), s1=0.6)
    _, x, _ = _data()
    v = flow.velocity(T, x)
    np.testing.assert_allclose(
        path.convert(v, T, x, "velocity", "x1"), flow.x1_posterior_mean(T, x), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(path.convert(v, T, x, "velocity", "score"), flow.score(T, x), rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["condot", "icfm", "trigonometric", "brownianbridge"]),
    sigma=st.floats(0.05, 1.0),
    mu=st.floats(-3.0, 3.0),
    s1=st.floats(0.1, 2.0),
    t=st.floats(0.05, 0.95),
)
def test_velocity_converts_to_the_posterior_mean_for_random_gaussians(name, sigma, mu, s1, t):
    """Property: for any N(0, I) -> N(mu, s1^2 I), v_t converts to E[x1 | x_t] and back."""
    path = fm.paths.get_path(name, **({"sigma_min": sigma / 10} if name == "condot" else {"sigma": sigma}))
    flow = fm.GaussianFlow(path, mu1=jnp.array([mu, 0.0]), s1=s1)
    times = jnp.full((16,), t)
    x = flow.sample(jax.random.key(0), t, 16, 2)
    v = flow.velocity(times, x)
    x1_hat = path.convert(v, times, x, "velocity", "x1")
    np.testing.assert_allclose(x1_hat, flow.x1_posterior_mean(times, x), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(path.convert(x1_hat, times, x, "x1", "velocity"), v, rtol=1e-3, atol=1e-3)


def test_get_path_builds_by_name():
    assert fm.paths.get_path("ICFM", sigma=0.2) == fm.paths.ICFM(sigma=0.2)
    assert fm.paths.get_path("vpdiffusion") == fm.paths.VPDiffusion()
    with pytest.raises(ValueError, match="Unknown path 'ot'"):
        fm.paths.get_path("ot")
    with pytest.raises(ValueError, match="takes \\['sigma_min'\\]"):
        fm.paths.get_path("condot", sigma=0.1)


def test_sample_draws_noise_only_for_noisy_paths():
    x0, x1, _ = _data()
    s = fm.paths.CondOT().sample(jax.random.key(1), x0, x1, T)
    assert not np.any(s.z)
    s = fm.paths.ICFM(sigma=0.5).sample(jax.random.key(1), x0, x1, T)
    assert np.std(s.z) > 0.5
    x_t, u_t = fm.paths.ICFM(sigma=0.5).interpolate(T, x0, x1, s.z)
    np.testing.assert_allclose(s.x_t, x_t)
    np.testing.assert_allclose(s.u_t, u_t)


def test_eps_target_is_standard_normal_and_reconstructs_x_t(path):
    x0, x1, z = _data()
    x_t, _ = path.interpolate(T, x0, x1, z)
    eps = path.eps(T, x0, z)
    s, _ = path.noise_scale(T)
    np.testing.assert_allclose(x_t, path.b(T)[:, None] * x1 + s[:, None] * eps, rtol=1e-5, atol=1e-5)
    # For x0, z ~ N(0, I) the noise target has unit variance at every t: s is the right scale.
    t = jnp.full((20_000,), 0.3)
    k0, kz = jax.random.split(jax.random.key(5))
    eps = path.eps(t, jax.random.normal(k0, (20_000, 2)), jax.random.normal(kz, (20_000, 2)))
    np.testing.assert_allclose(np.var(np.asarray(eps)), 1.0, atol=0.03)


def test_noise_scale_derivative_is_finite_where_the_noise_vanishes():
    """Hand-derived s'(t): CondOT s = 1 - (1 - sigma_min) t; trigonometric s = cos(pi t / 2), s'(1) = -pi / 2."""
    t = jnp.array([0.0, 0.5, 1.0])
    for sigma_min in (0.0, 0.1):
        s, ds = fm.paths.CondOT(sigma_min).noise_scale(t)
        np.testing.assert_allclose(s, 1 - (1 - sigma_min) * t, atol=1e-7)
        np.testing.assert_allclose(ds, -(1 - sigma_min) * np.ones(3), atol=1e-7)
    _, ds = fm.paths.Trigonometric().noise_scale(t)
    np.testing.assert_allclose(ds, -0.5 * math.pi * np.sin(0.5 * math.pi * np.asarray(t)), atol=1e-6)
    s, ds = fm.paths.ICFM(sigma=0.5).noise_scale(t)  # s = sqrt((1 - t)^2 + 1/4)
    np.testing.assert_allclose(ds, -(1 - np.asarray(t)) / np.sqrt((1 - np.asarray(t)) ** 2 + 0.25), atol=1e-6)


def test_conversions_at_the_ends_of_the_conditional_ot_path():
    """Hand-derived on x_t = (1 - t) x0 + t x1: v = x1 - x0, so at t = 0 (x_t = x0) x1 = v + x_t,
    and at t = 1 (x_t = x1) v = x_t - eps; these stay finite where other directions are singular."""
    path = fm.paths.CondOT()
    _, x, v = _data(n=4)
    zero, one = jnp.zeros(4), jnp.ones(4)
    np.testing.assert_allclose(path.convert(v, zero, x, "velocity", "x1"), v + x, atol=1e-6)
    np.testing.assert_allclose(path.convert(v, zero, x, "velocity", "eps"), x, atol=1e-6)
    np.testing.assert_allclose(path.convert(v, one, x, "eps", "velocity"), x - v, atol=1e-6)
    np.testing.assert_allclose(path.convert(v, one, x, "eps", "x1"), x, atol=1e-6)


def test_paths_are_hashable_values():
    assert fm.paths.CondOT(0.1) == fm.paths.CondOT(0.1)
    assert hash(fm.paths.ICFM(0.2)) == hash(fm.paths.ICFM(0.2))
    assert fm.paths.CondOT(0.1) != fm.paths.CondOT(0.2)


def test_bad_input_is_named():
    x0, x1, _ = _data()
    with pytest.raises(ValueError, match="shape"):
        fm.paths.CondOT().interpolate(jnp.zeros(3), x0, x1)
    with pytest.raises(ValueError, match="pass z"):
        fm.paths.ICFM(0.1).interpolate(T, x0, x1)
    with pytest.raises(ValueError, match="Unknown prediction"):
        fm.paths.CondOT().convert(x0, T, x1, "velocity", "noise")
