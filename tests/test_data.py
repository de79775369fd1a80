"""Toy 2D densities: the published definitions, checked by their moments and supports."""

import math

import jax
import numpy as np
import pytest

import fm_jax as fm
from fm_jax.data import toy2d

N = 40_000


def draw(name, seed=0, n=N):
    return np.asarray(jax.jit(toy2d.sample, static_argnums=(0, 2))(name, jax.random.key(seed), n))


@pytest.mark.parametrize("name", sorted(toy2d.DENSITIES))
def test_every_density_is_jittable_float32_and_random(name):
    a, b = draw(name, 0, 1000), draw(name, 1, 1000)
    assert a.shape == (1000, 2) and a.dtype == np.float32 and np.all(np.isfinite(a))
    assert not np.allclose(a, b)


def test_eight_gaussians_match_torchcfm():
    """Radius-5 centres at k pi / 4, equal weights, per-coordinate std 0.1^(1/4) ~ 0.562."""
    x = draw("8gaussians")
    centres = 5 * np.stack([np.cos(np.arange(8) * math.pi / 4), np.sin(np.arange(8) * math.pi / 4)], -1)
    k = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(k, minlength=8) / N, 1 / 8, atol=0.01)
    np.testing.assert_allclose((x - centres[k]).std(0), 0.1**0.25, rtol=0.03)


def test_moons_match_torchdyn_scaled():
    """Mean of torchdyn's moons: arcs (0, 2/pi) and (1, 1/2 - 2/pi), offset mean 0.1 on both axes; then 3 x - 1."""
    x = draw("moons")
    expected = 3 * (np.array([0.5, 0.25]) + 0.1) - 1
    np.testing.assert_allclose(x.mean(0), expected, atol=0.05)  # 4 standard errors
    # Every point is on one of the arcs after undoing the scaling, up to the (1, 1) offset in [0, 0.2).
    p = (x + 1) / 3
    upper, lower = np.zeros(N, bool), np.zeros(N, bool)
    for o in np.linspace(0, 0.2, 41):  # the offset, on a grid
        q = p - o
        upper |= (np.abs(np.linalg.norm(q, axis=1) - 1) < 0.01) & (q[:, 1] > -0.01)
        lower |= (np.abs(np.linalg.norm(q - [1.0, 0.5], axis=1) - 1) < 0.01) & (q[:, 1] < 0.51)
    on_arc = (upper, lower)
    assert np.all(upper | lower)
    np.testing.assert_allclose(on_arc[0].mean(), 0.5, atol=0.02)
    # A reference sample built as torchdyn does (evenly spaced angles) has the same law.
    a_out, a_in = np.linspace(0, math.pi, 1000), np.linspace(0, math.pi, 1000)
    ref = np.concatenate([np.stack([np.cos(a_out), np.sin(a_out)], 1), np.stack([1 - np.cos(a_in), 0.5 - np.sin(a_in)], 1)])
    ref = 3 * (ref + 0.2 * np.random.default_rng(0).random((2000, 1))) - 1
    baseline = fm.metrics.w2(x[:2000], x[2000:4000])  # two samples of one law
    assert fm.metrics.w2(x[:2000], ref) < 1.5 * baseline


def test_checkerboard_fills_the_dark_squares_uniformly():
    x = draw("checkerboard")
    assert np.all(np.abs(x) <= 4)
    parity = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2
    assert np.all(parity == 1)
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=4, range=[[-4, 4], [-4, 4]])[0]
    np.testing.assert_allclose(counts[counts > 0] / N, 1 / 8, atol=0.01)
    assert (counts > 0).sum() == 8


def test_scurve_and_spirals_are_centred_and_symmetric():
    for name in ("scurve", "spirals"):
        x = draw(name)
        np.testing.assert_allclose(x.mean(0), 0, atol=0.05)
        # Point symmetric about the origin: x and -x have the same law.
        baseline = fm.metrics.w2(x[:2000], x[4000:6000])
        assert fm.metrics.w2(x[:2000], -x[2000:4000]) < 1.5 * baseline


def test_unknown_density_names_the_choices():
    with pytest.raises(ValueError, match="Unknown density 'moon'.*moons"):
        toy2d.sample("moon", jax.random.key(0), 10)
