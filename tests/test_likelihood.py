"""Log-likelihoods, the score from the velocity and SDE sampling against closed-form Gaussian flows."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fm
from fm_jax import likelihood, solvers
from fm_jax.primitives import standard_normal_log_prob

PATH = fm.paths.CondOT()


class RotatedFlow:
    """N(0, I) -> N(mu, R diag(s^2) R^T) in 2D: per-axis Gaussian flows, rotated by R.

    Its Jacobian R diag(c_1, c_2) R^T has off-diagonal entries, so a Rademacher
    Hutchinson estimate of its trace has a non-zero variance (unlike an isotropic flow's).
    """

    def __init__(self, mu=(2.0, -1.0), s=(0.3, 1.5), angle=0.6):
        self.axes = [fm.GaussianFlow(PATH, mu1=m, s1=v) for m, v in zip(mu, s)]
        c, s_ = math.cos(angle), math.sin(angle)
        self.rot = jnp.array([[c, -s_], [s_, c]])

    def velocity(self, t, x):
        y = x @ self.rot  # R^T x, row-wise
        v = jnp.concatenate([f.velocity(t, y[:, i : i + 1]) for i, f in enumerate(self.axes)], axis=1)
        return v @ self.rot.T

    def log_prob(self, t, x):
        y = x @ self.rot
        return sum(f.log_prob(t, y[:, i : i + 1]) for i, f in enumerate(self.axes))

    def sample(self, key, t, n):
        keys = jax.random.split(key, 2)
        y = jnp.concatenate([f.sample(k, t, n, 1) for f, k in zip(self.axes, keys)], axis=1)
        return y @ self.rot.T


def mlp_field(key, d, width=32):
    """A smooth nonlinear time-dependent field whose Jacobian is full."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (d + 1, width)) / math.sqrt(d + 1)
    w2 = jax.random.normal(k2, (width, d)) / math.sqrt(width)
    b = jax.random.normal(k3, (width,)) * 0.1

    def vf(t, x):
        flat = x.reshape(x.shape[0], -1)
        h = jnp.tanh(jnp.concatenate([flat, jnp.full((x.shape[0], 1), t, x.dtype)], 1) @ w1 + b)
        return (h @ w2).reshape(x.shape)

    return vf


@pytest.mark.parametrize("shape, chunk", [((5, 3), None), ((5, 3), 2), ((4, 3, 2, 2), 5)])
def test_exact_divergence_is_the_trace_of_the_jacobian(shape, chunk):
    vf = mlp_field(jax.random.key(0), math.prod(shape[1:]))
    x = jax.random.normal(jax.random.key(1), shape)
    v, div = likelihood.exact_divergence(vf, 0.3, x, chunk_size=chunk)
    single = lambda xi: vf(0.3, xi[None])[0].reshape(-1)
    jac = jax.vmap(jax.jacfwd(single))(x)  # (batch, D, *event)
    trace = jnp.trace(jac.reshape(shape[0], v[0].size, -1), axis1=1, axis2=2)
    np.testing.assert_allclose(div, trace, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v, vf(0.3, x))


@pytest.mark.parametrize("probe", likelihood.PROBES)
def test_hutchinson_divergence_is_unbiased(probe):
    vf = mlp_field(jax.random.key(0), 4)
    x = jax.random.normal(jax.random.key(1), (3, 4))
    _, exact = likelihood.exact_divergence(vf, 0.5, x)
    probes = likelihood._probes(jax.random.key(2), probe, 20_000, x)
    _, per_probe = jax.vmap(lambda p: likelihood.hutchinson_divergence(vf, 0.5, x, p[None]))(probes)
    se = per_probe.std(0) / math.sqrt(per_probe.shape[0])
    assert np.all(se > 0)
    assert np.all(np.abs(per_probe.mean(0) - exact) < 4 * se)
    _, averaged = likelihood.hutchinson_divergence(vf, 0.5, x, probes)
    np.testing.assert_allclose(averaged, per_probe.mean(0), rtol=1e-4, atol=1e-4)


def test_exact_log_likelihood_of_gaussian_flows_to_1e3_nats_per_dim():
    # Isotropic in 8 dims, anisotropic and rotated in 2, and an intermediate time.
    iso = fm.GaussianFlow(PATH, mu1=jnp.linspace(-2, 2, 8), s1=0.5)
    x = iso.sample(jax.random.key(0), 1.0, 256, 8)
    out = jax.jit(lambda x: likelihood.log_likelihood(iso.velocity, x))(x)
    assert np.abs(out.log_prob - iso.log_prob(1.0, x)).max() / 8 < 1e-3
    assert out.nfe > 0

    rot = RotatedFlow()
    for t in (1.0, 0.4):
        x = rot.sample(jax.random.key(1), t, 512)
        out = jax.jit(lambda x: likelihood.log_likelihood(rot.velocity, x, t=t))(x)
        assert np.abs(out.log_prob - rot.log_prob(t, x)).max() / 2 < 1e-3


def test_a_non_gaussian_source_log_density():
    # Source N(mu0, s0^2 I) with its own log-density: log p_1 still matches the closed form.
    flow = fm.GaussianFlow(PATH, mu1=jnp.array([1.0, 2.0]), s1=0.7, mu0=jnp.array([-3.0, 0.5]), s0=2.0)
    source = lambda x0: flow.log_prob(0.0, x0)
    x = flow.sample(jax.random.key(0), 1.0, 256, 2)
    out = likelihood.log_likelihood(flow.velocity, x, source, solver="tsit5", steps=40)
    np.testing.assert_allclose(out.log_prob, flow.log_prob(1.0, x), atol=2e-3)
    standard = likelihood.log_likelihood(flow.velocity, x, solver="tsit5", steps=40)
    assert np.abs(standard.log_prob - out.log_prob).mean() > 1.0  # the source density matters


def test_hutchinson_log_likelihood_within_its_monte_carlo_error():
    rot = RotatedFlow()
    x = rot.sample(jax.random.key(0), 1.0, 2000)
    exact = rot.log_prob(1.0, x)
    for probe in likelihood.PROBES:
        run = jax.jit(
            lambda x, key: likelihood.log_likelihood(
                rot.velocity, x, divergence="hutchinson", key=key, probe=probe, solver="tsit5", steps=20
            )
        )
        err = run(x, jax.random.key(1)).log_prob - exact
        se = float(err.std()) / math.sqrt(err.size)
        assert float(err.std()) > 1e-3, "the probes must make an error for this test to mean anything"
        assert abs(float(err.mean())) < 4 * se
        # More probes, less variance (about 1 / K).
        err16 = (
            jax.jit(
                lambda x, key: likelihood.log_likelihood(
                    rot.velocity,
                    x,
                    divergence="hutchinson",
                    key=key,
                    probe=probe,
                    num_probes=16,
                    solver="tsit5",
                    steps=20,
                )
            )(x, jax.random.key(1)).log_prob
            - exact
        )
        assert float(err16.std()) < 0.4 * float(err.std())
        # A fixed key reproduces the estimate.
        np.testing.assert_array_equal(run(x, jax.random.key(1)).log_prob, run(x, jax.random.key(1)).log_prob)


def test_change_of_variables_matches_the_encode_map_jacobian():
    vf = mlp_field(jax.random.key(3), 2)
    x1 = jax.random.normal(jax.random.key(4), (6, 2))
    kwargs = dict(solver="tsit5", steps=32)
    out = likelihood.log_likelihood(vf, x1, **kwargs)
    encode = lambda x: fm.encode(vf, x, **kwargs).x
    np.testing.assert_allclose(out.x0, encode(x1), atol=1e-6)
    np.testing.assert_allclose(out.log_prob, standard_normal_log_prob(out.x0) + out.delta, rtol=1e-6)
    # delta = log |det d encode / d x1|, from central differences of the encode map.
    h = 1e-2
    cols = [(encode(x1 + h * e) - encode(x1 - h * e)) / (2 * h) for e in jnp.eye(2)]
    jac = jnp.stack(cols, axis=-1)  # (batch, 2, 2)
    logdet = jnp.log(jnp.abs(jnp.linalg.det(jac)))
    assert np.abs(logdet).min() > 0.05  # a field that really changes volume
    np.testing.assert_allclose(out.delta, logdet, atol=1e-3)


def test_jitted_log_likelihood_does_not_recompile():
    flow = fm.GaussianFlow(PATH, mu1=1.0, s1=0.5)
    traces = []

    @jax.jit
    def run(x):
        traces.append(1)
        return likelihood.log_likelihood(flow.velocity, x, divergence="hutchinson", key=jax.random.key(0))

    for seed in range(3):
        run(jax.random.normal(jax.random.key(seed), (64, 2))).log_prob.block_until_ready()
    assert len(traces) == 1


def test_bits_per_dim_of_a_uniform_model_is_the_pixel_depth():
    # A uniform density on [low, high)^D is the uniform distribution on levels: log2(256) = 8 bits.
    x = jax.random.randint(jax.random.key(0), (10, 3, 4, 4), 0, 256)
    for low, high in ((-1.0, 1.0), (0.0, 1.0)):
        uniform = lambda z: jnp.full(z.shape[:1], -math.prod(z.shape[1:]) * math.log(high - low))
        for estimator in ("mean", "logmeanexp"):
            bpd = likelihood.dequantized_bits_per_dim(
                jax.random.key(1), uniform, x, num_samples=3, low=low, high=high, estimator=estimator
            )
            np.testing.assert_allclose(bpd, 8.0, rtol=1e-6)


def test_dequantized_bits_per_dim_of_a_gaussian_model():
    # z ~ N(0, 1) per pixel in [-1, 1] scaling: the mean estimator is the average of -log2 p_y / D.
    x = jax.random.randint(jax.random.key(0), (4, 6), 100, 156)
    key = jax.random.key(2)
    bpd = likelihood.dequantized_bits_per_dim(key, standard_normal_log_prob, x, num_samples=4)
    u = jax.vmap(lambda k: jax.random.uniform(k, x.shape))(jax.random.split(key, 4))
    z = -1.0 + 2.0 * (x + u) / 256
    per_draw = -(standard_normal_log_prob(z.reshape(-1, 6)).reshape(4, 4) + 6 * math.log(2 / 256))
    np.testing.assert_allclose(bpd, per_draw.mean(0) / (6 * math.log(2)), rtol=1e-5)
    tight = likelihood.dequantized_bits_per_dim(key, standard_normal_log_prob, x, num_samples=4, estimator="logmeanexp")
    assert np.all(tight <= bpd + 1e-6)  # Jensen
    assert np.all(np.abs(tight - bpd) < 1e-3)  # a smooth density hardly varies within a level
    np.testing.assert_allclose(likelihood.bits_per_dim(jnp.array(-10.0), 5), 10 / (5 * math.log(2)))
    # log_scale: a model of z = y / 256 gains 8 bits per dimension in the units of y.
    np.testing.assert_allclose(
        likelihood.bits_per_dim(jnp.array(-10.0), 5, math.log(1 / 256)), 10 / (5 * math.log(2)) + 8.0, rtol=1e-6
    )


@pytest.mark.parametrize(
    "path", [fm.paths.CondOT(), fm.paths.ICFM(sigma=0.3), fm.paths.Trigonometric(), fm.paths.VPDiffusion()]
)
def test_score_from_velocity_is_the_exact_score(path):
    flow = fm.GaussianFlow(path, mu1=jnp.array([3.0, -1.0]), s1=0.5)
    score = solvers.score_from_velocity(flow.velocity, path)
    for t in (0.1, 0.5, 0.9):
        x = flow.sample(jax.random.key(0), t, 64, 2)
        np.testing.assert_allclose(score(t, x), flow.score(t, x), rtol=1e-4, atol=1e-4)


def test_sde_sampling_reaches_the_gaussian_target():
    flow = fm.GaussianFlow(PATH, mu1=jnp.array([3.0, -1.0]), s1=0.5)
    score = solvers.score_from_velocity(flow.velocity, PATH)
    x0 = jax.random.normal(jax.random.key(0), (20_000, 2))
    g = lambda t: 1.5 * PATH.noise_scale(t)[0]  # vanishes at t = 1, where the score is singular
    # (solver, steps, samples, covariance tolerance): Euler-Maruyama's O(dt) bias is ~0.007 at 100 steps.
    for solver, steps, n, tol in (("euler", 100, 10_000, 0.02), ("shark", 50, 20_000, 0.01)):
        sol = jax.jit(
            lambda x: solvers.sample_sde(jax.random.key(1), flow.velocity, x, score, g, solver=solver, steps=steps)
        )(x0[:n])
        assert int(sol.nfe) == steps * (2 if solver == "shark" else 1)
        np.testing.assert_allclose(sol.x.mean(0), [3.0, -1.0], atol=0.02)
        np.testing.assert_allclose(np.cov(np.asarray(sol.x).T), 0.25 * np.eye(2), atol=tol)
    # The noise really changes the map: SDE samples are not the ODE's.
    ode = fm.sample(flow.velocity, x0, solver="tsit5", steps=20).x
    assert float(jnp.sqrt(jnp.mean((sol.x - ode) ** 2))) > 0.1


@pytest.mark.parametrize(
    "solver, per_step",
    [("euler", 1), ("heun", 2), ("euler_heun", 1), ("sea", 1), ("sra1", 2), ("shark", 2), ("spark", 3)],
)
def test_sde_nfe_is_the_network_calls_actually_made(solver, per_step):
    from test_solvers import counted

    flow = fm.GaussianFlow(PATH, mu1=1.0, s1=0.5)
    vf, calls = counted(flow.velocity)
    x0 = jax.random.normal(jax.random.key(0), (16, 2))
    g = lambda t: 0.7 * PATH.noise_scale(t)[0]
    # The path as the score: converted from the same velocity call, so one call per drift evaluation.
    sol = jax.jit(lambda x: solvers.sample_sde(jax.random.key(1), vf, x, PATH, g, solver=solver, steps=6))(x0)
    jax.block_until_ready(sol.x)
    assert int(sol.nfe) == 6 * per_step == calls[0]
    assert np.all(np.isfinite(sol.x))


def test_sde_gradients_are_finite_up_to_the_singular_end():
    # heun evaluates the drift at t = 1, where CondOT's score is singular but g = 0.
    flow = fm.GaussianFlow(PATH, mu1=1.0, s1=0.5)
    g = lambda t: 0.7 * PATH.noise_scale(t)[0]
    x0 = jax.random.normal(jax.random.key(0), (8, 2))
    loss = lambda x: jnp.sum(
        solvers.sample_sde(jax.random.key(1), flow.velocity, x, PATH, g, solver="heun", steps=4).x ** 2
    )
    grad = jax.grad(loss)(x0)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_hutchinson_on_bfloat16_points():
    flow = fm.GaussianFlow(PATH, mu1=1.0, s1=0.5)
    x = flow.sample(jax.random.key(0), 1.0, 64, 2).astype(jnp.bfloat16)
    out = likelihood.log_likelihood(
        flow.velocity, x, divergence="hutchinson", key=jax.random.key(1), steps=8, solver="heun"
    )
    np.testing.assert_allclose(out.log_prob, flow.log_prob(1.0, x.astype(jnp.float32)), atol=0.1)


def test_sde_noise_is_one_brownian_path_per_key():
    flow = fm.GaussianFlow(PATH, mu1=1.0, s1=0.5)
    score = solvers.score_from_velocity(flow.velocity, PATH)
    x0 = jax.random.normal(jax.random.key(0), (500, 2))
    run = jax.jit(
        lambda key, steps: solvers.sample_sde(key, flow.velocity, x0, score, 0.8, solver="shark", steps=steps, t1=0.9),
        static_argnums=1,
    )
    a, b = run(jax.random.key(1), 64), run(jax.random.key(1), 64)
    np.testing.assert_array_equal(a.x, b.x)
    # Halving the step refines the same path (strong convergence), unlike a new key.
    fine, other = run(jax.random.key(1), 128), run(jax.random.key(2), 64)
    rms = lambda u, v: float(jnp.sqrt(jnp.mean((u - v) ** 2)))
    assert rms(a.x, fine.x) < 0.01 * rms(a.x, other.x)
    traj = solvers.sample_sde(jax.random.key(1), flow.velocity, x0, score, 0.8, steps=8, save_trajectory=True)
    assert traj.trajectory.shape == (9, 500, 2)
    np.testing.assert_array_equal(traj.trajectory[0], x0)


def test_bad_input():
    flow = fm.GaussianFlow(PATH)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="source_log_prob must be a function"):
        likelihood.log_likelihood(flow.velocity, x, "hutchinson")
    with pytest.raises(ValueError, match="Unknown divergence"):
        likelihood.log_likelihood(flow.velocity, x, divergence="trace")
    with pytest.raises(ValueError, match="pass key="):
        likelihood.log_likelihood(flow.velocity, x, divergence="hutchinson")
    with pytest.raises(ValueError, match="Unknown probe"):
        likelihood.log_likelihood(flow.velocity, x, divergence="hutchinson", key=jax.random.key(0), probe="sphere")
    with pytest.raises(ValueError, match="t must lie in"):
        likelihood.log_likelihood(flow.velocity, x, t=0.0)
    with pytest.raises(ValueError, match="batch-first"):
        likelihood.log_likelihood(flow.velocity, jnp.zeros(2))
    with pytest.raises(ValueError, match="integer levels"):
        likelihood.dequantized_bits_per_dim(jax.random.key(0), standard_normal_log_prob, x)
    score = solvers.score_from_velocity(flow.velocity, PATH)
    with pytest.raises(ValueError, match="Unknown SDE solver"):
        solvers.sample_sde(jax.random.key(0), flow.velocity, x, score, 1.0, solver="dopri5")
    with pytest.raises(ValueError, match="t0 < t1"):
        solvers.sample_sde(jax.random.key(0), flow.velocity, x, score, 1.0, t0=1.0, t1=0.0)


def test_swapped_or_ill_shaped_arguments_are_named():
    flow = fm.GaussianFlow(PATH)
    x = jnp.zeros((4, 2))
    key = jax.random.key(0)
    with pytest.raises(TypeError, match=r"vf must be the field vf\(t, x\) -> dx/dt \(the call is log_likelihood"):
        likelihood.log_likelihood(x, flow.velocity)
    with pytest.raises(TypeError, match=r"x must be a batch-first array.*got the callable"):
        likelihood.log_likelihood(flow.velocity, flow.velocity)
    with pytest.raises(TypeError, match=r"key must be a JAX random key.*got int 3"):
        likelihood.log_likelihood(flow.velocity, x, divergence="hutchinson", key=3)
    with pytest.raises(TypeError, match=r"t must be a Python float in \(0, 1\] \(it is static\)"):
        likelihood.log_likelihood(flow.velocity, x, t=jnp.asarray(1.0))
    levels = jnp.zeros((4, 2), jnp.int32)
    with pytest.raises(
        TypeError,
        match=r"key must be a JAX random key, jax.random.key\(seed\) \(the call is dequantized_bits_per_dim\(key, "
        r"log_prob_fn, x, \.\.\.\)\); got the callable 'standard_normal_log_prob'",
    ):
        likelihood.dequantized_bits_per_dim(
            standard_normal_log_prob, levels, key
        )  # the order before the key came first
    with pytest.raises(TypeError, match=r"x must be a batch-first array.*got a key array"):
        likelihood.dequantized_bits_per_dim(key, standard_normal_log_prob, key)
    with pytest.raises(TypeError, match=r"key must be a JAX random key.*got int 0"):
        likelihood.dequantized_bits_per_dim(0, standard_normal_log_prob, levels)
    assert likelihood.log_likelihood(flow.velocity, x, t=1).log_prob.shape == (4,)  # an int t is a real number
