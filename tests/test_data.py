"""Toy 2D densities: the published definitions, checked by their moments and supports, and
their log-densities, checked against the samplers; one table holds both."""

import dataclasses
import functools
import math

import jax
import numpy as np
import pytest

import fm_jax as fm
from fm_jax.data import toy2d

N = 40_000


def draw(name, seed=0, n=N):
    return np.asarray(jax.jit(toy2d.sample, static_argnums=(1, 2))(jax.random.key(seed), name, n))


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
    ref = np.concatenate(
        [np.stack([np.cos(a_out), np.sin(a_out)], 1), np.stack([1 - np.cos(a_in), 0.5 - np.sin(a_in)], 1)]
    )
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


def test_sample_takes_the_key_first():
    """`sample(key, name, n)`: the name given first is refused with the call spelled out."""
    with pytest.raises(TypeError, match=r"key must be a JAX random key.*toy2d.sample\(key, name, n\).*str 'moons'"):
        toy2d.sample("moons", jax.random.key(0), 10)


def test_unknown_density_names_the_choices():
    with pytest.raises(ValueError, match="Unknown density 'moon'.*moons"):
        toy2d.sample(jax.random.key(0), "moon", 10)


# Log-densities: normalised, of the law sampled, jittable.

# A box around each density's support (beyond it the mass is < 1e-6), in cells of CELL.
BOXES = {
    "normal": (-5.0, 5.0, -5.0, 5.0),
    "8gaussians": (-8.0, 8.0, -8.0, 8.0),
    "moons": (-4.5, 6.0, -3.0, 3.0),
    "scurve": (-3.0, 3.0, -5.0, 5.0),
    "checkerboard": (-4.0, 4.0, -4.0, 4.0),
    "spirals": (-5.5, 5.5, -5.5, 5.5),
}
CELL = 0.5
# Midpoints per cell along x and y: fine against the 0.1 noise of the smooth densities. For moons, whose
# density has 1 / sqrt singularities along lines of direction (1, 1), unequal spacings along x and y
# make the grid's values of x - y fine (CELL / (40 * 53) apart) instead of CELL / 40.
SUBGRID = {"moons": (40, 53)}
N_HIST = 200_000
log_prob = jax.jit(toy2d.log_prob, static_argnums=0)  # one compilation per density and shape


@functools.cache
def samples(name):
    return draw(name, 1, N_HIST)


@functools.cache
def cell_probabilities(name):
    """The probability of each CELL x CELL cell of the box under exp(log_prob), by the midpoint rule."""
    x0, x1, y0, y1 = BOXES[name]
    sx, sy = SUBGRID.get(name, (5, 6))
    hx, hy = CELL / sx, CELL / sy
    nx, ny = round((x1 - x0) / CELL), round((y1 - y0) / CELL)
    xs, ys = x0 + hx * (np.arange(nx * sx) + 0.5), y0 + hy * (np.arange(ny * sy) + 0.5)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    log_p = np.asarray(log_prob(name, grid), np.float64)
    return (np.exp(log_p) * hx * hy).reshape(nx, sx, ny, sy).sum((1, 3))


@pytest.mark.parametrize("name", sorted(toy2d.DENSITIES))
def test_log_prob_integrates_to_one(name):
    # Moons' singular lines leave an O(sqrt(h)) error; 1e-2 still fails a dropped factor of 2.
    tol = 1e-2 if name == "moons" else 1e-4
    np.testing.assert_allclose(cell_probabilities(name).sum(), 1.0, atol=tol)


@pytest.mark.parametrize("name", sorted(toy2d.DENSITIES))
def test_log_prob_is_the_density_sampled(name):
    """Histogram of 200k samples against the cell probabilities of exp(log_prob): total variation
    ~0.01 from sampling alone; a density that is not the sampler's (a wrong scale, weight, Jacobian)
    is far off. And every sample has a finite log-density."""
    x = samples(name)
    # (The quadrature of the curves costs 2e4 x 4e3 Gaussians for 2e4 points: a subset of their samples.)
    some = x[:20_000] if name in ("scurve", "spirals") else x
    assert np.all(np.isfinite(np.asarray(log_prob(name, some))))
    probs = cell_probabilities(name)
    x0, x1, y0, y1 = BOXES[name]
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=probs.shape, range=[[x0, x1], [y0, y1]])[0]
    assert counts.sum() == N_HIST  # the box holds the samples
    tv = 0.5 * np.abs(counts / N_HIST - probs).sum()
    assert tv < 0.03, tv


def test_moons_normalisation_by_monte_carlo():
    """E_p[1 / p(y)] is the area of the support of p: independent of the singular lines, with
    finite variance (p is bounded below on its support); a wrong factor scales it."""
    x = samples("moons")
    mc = np.mean(np.exp(-np.asarray(log_prob("moons", x), np.float64)))
    x0, x1, y0, y1 = BOXES["moons"]
    h = 0.005
    xs, ys = np.arange(x0 + h / 2, x1, h), np.arange(y0 + h / 2, y1, h)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    area = np.isfinite(np.asarray(log_prob("moons", grid))).sum() * h * h
    np.testing.assert_allclose(mc, area, rtol=0.01)


@pytest.mark.parametrize("name", ["scurve", "spirals"])
def test_curve_quadrature_matches_a_fine_float64_one(name):
    """The fixed quadrature of the noisy curves against 16k nodes per arm in float64: < 1e-3 relative."""
    x = samples(name)[:257].copy()
    x[128:] += 0.15 * np.random.default_rng(0).standard_normal(x[128:].shape)  # and off the curve
    x = x.astype(np.float64)
    k = 16_384
    h = 3 * math.pi / k
    if name == "scurve":
        u = -1.5 * math.pi + h * (np.arange(k) + 0.5)
        m, log_w = 2 * np.stack([np.sin(u), np.sign(u) * (np.cos(u) - 1)], -1), np.full(k, -np.log(k))
    else:
        t = h * (np.arange(k) + 0.5)
        arm = 0.5 * t[:, None] * np.stack([-np.cos(t), np.sin(t)], -1)
        m, log_w = np.concatenate([arm, -arm]), np.tile(np.log(t * h / (3 * math.pi) ** 2), 2)
    z = log_w - 50.0 * ((x[:, None, :] - m[None]) ** 2).sum(-1)
    top = z.max(1)
    ref = top + np.log(np.exp(z - top[:, None]).sum(1)) - np.log(2 * math.pi * 0.01)
    got = np.asarray(log_prob(name, x.astype(np.float32)), np.float64)
    np.testing.assert_allclose(np.exp(got - ref), 1.0, atol=1e-3)


@pytest.mark.parametrize("name", sorted(toy2d.DENSITIES))
def test_log_prob_is_jittable_float32(name):
    x = samples(name)[:257]  # not a multiple of the quadrature's chunk
    out = np.asarray(log_prob(name, x))
    assert out.shape == (257,) and out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(np.asarray(log_prob(name, x[::-1])), out[::-1], rtol=1e-6)  # row by row


def test_log_prob_closed_forms_and_supports():
    x = np.array([[0.0, 0.0], [1.0, -2.0]], np.float32)
    np.testing.assert_allclose(log_prob("normal", x), [-math.log(2 * math.pi), -2.5 - math.log(2 * math.pi)], rtol=1e-6)
    # The centre of a mixture component: its own term dominates.
    var = 0.1**0.5
    centre = np.array([[5.0, 0.0]], np.float32)
    np.testing.assert_allclose(log_prob("8gaussians", centre), [-math.log(8 * 2 * math.pi * var)], rtol=1e-5)
    # Dark squares as sampled, floor(x / 2) + floor(y / 2) odd: [-4, -2) x [-2, 0) dark, [-4, -2) x [-4, -2)
    # light, ...; half-open at 4.
    board = np.array([[-3.0, -1.0], [-3.0, -3.0], [3.0, -3.0], [1.0, -3.0], [4.0, -3.0], [1.0, 3.999]], np.float32)
    dark, light = -math.log(32), -np.inf
    np.testing.assert_array_equal(log_prob("checkerboard", board), np.float32([dark, light, dark, light, light, dark]))
    # Moons: outside the band, -inf; on the upper arc at a = pi / 2 with offset 0.1, the single preimage
    # has |h'| = |sin a + cos a| = 1, so p = 1 / (2 pi 0.2 9).
    far = np.array([[0.0, 5.0], [-1.0, -1.0]], np.float32)
    assert np.all(log_prob("moons", far) == -np.inf)
    top = 3 * np.array([[0.1, 1.1]], np.float32) - 1
    np.testing.assert_allclose(log_prob("moons", top), [-math.log(2 * math.pi * 0.2 * 9)], rtol=1e-5)


def test_unknown_log_prob_names_the_choices():
    with pytest.raises(ValueError, match="Unknown density 'moon'.*moons"):
        toy2d.log_prob("moon", np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"Unknown density 'Moons'; choose one of \['normal', '8gaussians', 'moons'"):
        toy2d.DENSITIES["Moons"]  # names are case-sensitive, listed in the table's order


def test_one_record_per_density():
    """`DENSITIES[name]` holds the name's sampler and log-density together, and `sample` and
    `log_prob` read that record (not another name's)."""
    assert toy2d.DENSITIES.names == ["normal", "8gaussians", "moons", "scurve", "checkerboard", "spirals"]
    key = jax.random.key(0)
    x = 3.0 * np.asarray(draw("normal", 3, 64))
    for name, toy in toy2d.DENSITIES.items():
        assert isinstance(toy, toy2d.Toy2D)
        np.testing.assert_array_equal(toy2d.sample(key, name, 8), toy.sample(key, 8))
        np.testing.assert_array_equal(toy2d.log_prob(name, x), toy.log_prob(x))
    records = list(toy2d.DENSITIES.values())
    assert len({id(t.sample) for t in records}) == len({id(t.log_prob) for t in records}) == len(records)
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].log_prob = records[1].log_prob


def test_densities_carry_their_log_prob(tmp_path):
    src, tgt = fm.data.densities("normal", "moons")
    x = np.zeros((3, 2), np.float32)
    np.testing.assert_array_equal(tgt.log_prob(x), toy2d.log_prob("moons", x))
    np.testing.assert_allclose(src.log_prob(x), toy2d.log_prob("normal", x), rtol=1e-6)
    path = tmp_path / "cloud.npy"
    np.save(path, np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32))
    src, tgt = fm.data.densities("normal", f"file:{path}")
    assert tgt.log_prob is None and src.dim == 3
    z = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(jax.jit(src.log_prob)(z), np.full(4, -1.5 - 1.5 * math.log(2 * math.pi)), rtol=1e-6)
