"""Normalizing flows: exact inverse, log-determinant against the Jacobian, maximum likelihood on a Gaussian."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fm_jax as fm
from fm_jax.models import Flow, functional
from fm_jax.train import RunSpec, load_config

CASES = [
    ((2,), dict(kind="realnvp", num_layers=4, width=16)),
    ((5,), dict(kind="realnvp", num_layers=3, width=16)),
    ((4,), dict(kind="tarflow", num_layers=2, width=16, heads=2, layers=1, token_dim=1)),
    ((6,), dict(kind="tarflow", num_layers=3, width=16, heads=2, layers=1, token_dim=2)),
    ((4, 4, 2), dict(kind="tarflow", num_layers=2, width=16, heads=2, layers=1, patch=2)),
    ((4, 4, 1), dict(kind="realnvp", num_layers=2, width=16)),
]


def perturbed(shape, settings, scale=0.1):
    """A flow away from the identity it starts as: every parameter moved at random."""
    graphdef, state = nnx.split(Flow(shape, **settings, rngs=nnx.Rngs(0)))
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


@pytest.mark.parametrize("shape,settings", CASES)
def test_inverse_and_log_determinant(shape, settings):
    flow = perturbed(shape, settings)
    x = jax.random.normal(jax.random.key(2), (3, *shape))

    @jax.jit
    def check(x):  # one compile instead of many eager calls
        z, logdet = flow.forward(x)
        jacobian = jax.jacfwd(lambda v: flow.forward(v.reshape(1, *shape))[0].reshape(-1))(x[0].reshape(-1))
        return z, logdet, flow.inverse(z), jnp.linalg.slogdet(jacobian)[1]

    z, logdet, x_back, brute = check(x)
    assert float(jnp.max(jnp.abs(z - x))) > 1e-2  # not the identity
    np.testing.assert_allclose(x_back, x, atol=2e-5)
    np.testing.assert_allclose(logdet[0], brute, rtol=1e-4, atol=1e-4)


def test_new_flow_is_the_identity_and_log_prob_is_the_prior():
    flow = Flow((3,), kind="tarflow", width=8, heads=2, layers=1, num_layers=2, prior_std=2.0, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (5, 3))
    z, logdet = flow.forward(x)
    np.testing.assert_array_equal(z, x)
    np.testing.assert_array_equal(logdet, 0.0)
    expected = -0.5 * jnp.sum((x / 2.0) ** 2, 1) - 3 * (0.5 * math.log(2 * math.pi) + math.log(2.0))
    np.testing.assert_allclose(flow.log_prob(x), expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["realnvp", "tarflow"])
def test_maximum_likelihood_recovers_a_gaussian(kind):
    """Fit N(m, S) by maximum likelihood: the flow's density and its samples match the Gaussian's."""
    mean, cov = jnp.array([1.5, -0.5]), jnp.array([[1.0, 0.8], [0.8, 1.0]])
    chol = jnp.linalg.cholesky(cov)
    settings = dict(kind=kind, num_layers=4, width=32) | (dict(heads=2, layers=1) if kind == "tarflow" else {})
    log_prob, params = functional(Flow((2,), **settings, rngs=nnx.Rngs(0)), "log_prob")
    optimizer = optax.adam(1e-2)
    loss = fm.losses.flow_nll_loss()

    @jax.jit
    def step(carry, key):
        params, opt_state = carry
        x1 = mean + jax.random.normal(key, (512, 2)) @ chol.T
        grads = jax.grad(lambda p: loss(log_prob, p, key, {"x1": x1})[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(jax.random.key(0), 1000))
    x = mean + jax.random.normal(jax.random.key(9), (4000, 2)) @ chol.T
    true = jax.scipy.stats.multivariate_normal.logpdf(x, mean, cov)
    # Average log-likelihood within 0.03 nats of the true density's (the entropy).
    assert abs(float(jnp.mean(log_prob(params, x)) - jnp.mean(true))) < 0.03
    samples = functional(Flow((2,), **settings, rngs=nnx.Rngs(0)), "sample")[0](params, jax.random.key(3), 4000)
    np.testing.assert_allclose(jnp.mean(samples, 0), mean, atol=0.08)
    np.testing.assert_allclose(jnp.cov(samples.T), cov, atol=0.1)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="Unknown flow"):
        Flow((2,), kind="glow", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="patches of 3"):
        Flow((4, 4, 1), kind="tarflow", patch=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="do not split"):
        Flow((5,), kind="tarflow", token_dim=2, rngs=nnx.Rngs(0))
    config = load_config("toy2d")
    config.method, config.flow.wdith = "flow", 3
    with pytest.raises(ValueError, match=r"Unknown config.flow fields \['wdith'\]"):
        RunSpec.from_config(config)
    with pytest.raises(ValueError, match="shape"):
        Flow((2,), rngs=nnx.Rngs(0)).log_prob(jnp.zeros((4, 3)))
