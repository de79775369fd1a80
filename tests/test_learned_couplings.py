"""Learned and distilled couplings: the fast-ode loss, NFM pairs from a flow teacher, reflow pairs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fm_jax import distillation, losses, paths
from fm_jax.models import MLP, CoupledField, Flow, GaussianEncoder, functional
from fm_jax.solvers import SolverSpec
from fm_jax.train import build_loss


def _fast_ode(dim=3, seed=0):
    model = CoupledField(MLP(dim, 16, 2, rngs=nnx.Rngs(seed)), GaussianEncoder(dim, 16, 2, rngs=nnx.Rngs(seed + 1)))
    apply, params = functional(model)
    return apply, functional(model, "encode")[0], params


def _batch(dim=3, n=64):
    x1 = jax.random.normal(jax.random.key(5), (n, dim)) * 2.0 + 1.0
    return {"x1": x1, "x0": jax.random.normal(jax.random.key(6), (n, dim))}


def test_fast_ode_at_the_prior_is_icfm():
    """A new encoder is the prior N(0, I): the loss is I-CFM's on the same draws, and the KL is 0."""
    apply, encode, params = _fast_ode()
    batch, key = _batch(), jax.random.key(0)
    value, parts = losses.fast_ode_loss(paths.ICFM(0.1), encode, beta=3.0)(apply, params, key, batch)
    icfm, _ = losses.cfm_loss(paths.ICFM(0.1))(apply, params, key, batch)
    np.testing.assert_allclose(value, icfm, rtol=1e-6)
    assert float(parts["kl"]) == 0.0


def test_fast_ode_kl_and_reparameterization():
    """The KL term is the closed form per dimension, and the encoder's gradient matches finite differences."""
    apply, encode, params = _fast_ode()
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    batch, key = _batch(), jax.random.key(0)
    loss = losses.fast_ode_loss(paths.ICFM(0.0), encode, beta=2.0)
    mu, log_sigma = encode(params, batch["x1"])
    kl = 0.5 * jnp.mean(jnp.sum(mu**2 + jnp.exp(2 * log_sigma) - 1 - 2 * log_sigma, 1)) / 3
    np.testing.assert_allclose(loss(apply, params, key, batch)[1]["kl"], kl, rtol=1e-5)
    # Directional derivative along the encoder's output bias, by autodiff and by central differences.
    direction = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, float("encoder" in str(path) and "out" in str(path) and "bias" in str(path))),
        params,
    )
    f = lambda s: loss(apply, jax.tree.map(lambda p, d: p + s * d, params, direction), key, batch)[0]
    grad = jax.grad(f)(0.0)
    h = 1e-2
    np.testing.assert_allclose(grad, (f(h) - f(-h)) / (2 * h), rtol=2e-3)
    assert abs(float(grad)) > 1e-3


def test_large_beta_forces_the_prior():
    """Minimizing over the encoder with a large beta drives q(x0 | x1) to N(0, I): the loss reduces to I-CFM."""
    apply, encode, params = _fast_ode()
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
    loss = losses.fast_ode_loss(paths.ICFM(0.0), encode, beta=1e3)
    optimizer = optax.adam(1e-2)
    batch = _batch()

    def step(carry, key):
        params, state = carry
        grads = jax.grad(lambda p: loss(apply, p, key, batch)[0])(params)
        grads = jax.tree_util.tree_map_with_path(  # the encoder alone moves
            lambda path, g: g if "encoder" in str(path) else jnp.zeros_like(g), grads
        )
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(params, updates), state), None

    kl0 = float(loss(apply, params, jax.random.key(0), batch)[1]["kl"])
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(jax.random.key(3), 300))
    value, parts = loss(apply, params, jax.random.key(0), batch)
    icfm, _ = losses.cfm_loss(paths.ICFM(0.0))(apply, params, jax.random.key(0), batch)
    assert float(parts["kl"]) < 1e-3 * kl0
    np.testing.assert_allclose(parts["mse"], icfm, rtol=0.02)


def test_nfm_with_an_identity_teacher_is_the_identity_pairing():
    forward, params = functional(Flow((2,), rngs=nnx.Rngs(0)), "forward")  # a new flow is the identity
    x0, x1 = jax.random.normal(jax.random.key(0), (2, 32, 2))
    labels = jnp.arange(32)
    y0, y1, out = distillation.nf_coupling(forward, params)(jax.random.key(1), x0, x1, labels)
    np.testing.assert_allclose(y0, x1, atol=1e-6)
    np.testing.assert_array_equal(y1, x1)
    np.testing.assert_array_equal(out, labels)
    # With noise eta and prior std sigma_f: x0 = (x1 + eta eps) / sigma_f.
    y0, _, _ = distillation.nf_coupling(forward, params, noise=0.5, prior_std=2.0)(jax.random.key(1), x0, x1)
    eps = jax.random.normal(jax.random.key(1), x1.shape)
    np.testing.assert_allclose(y0, (x1 + 0.5 * eps) / 2.0, atol=1e-6)


def _linear_field(params, t, x, cond=None):
    return params["a"] * x + params["b"]


def _flow_map(params, x, t):
    """The exact flow of dx/dt = a x + b over time t."""
    a, b = params["a"], params["b"]
    return jnp.exp(a * t) * x + b * (jnp.exp(a * t) - 1.0) / a


@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_reflow_pairs_lie_on_the_teacher_trajectories(direction):
    params = {"a": jnp.array([0.7, -0.4]), "b": jnp.array([0.3, 1.0])}
    x0, x1 = jax.random.normal(jax.random.key(0), (2, 16, 2))
    coupling = distillation.reflow_coupling(_linear_field, params, direction, SolverSpec(rtol=1e-6, atol=1e-6))
    y0, y1, _ = jax.jit(coupling)(jax.random.key(1), x0, x1)
    if direction == "backward":
        np.testing.assert_array_equal(y1, x1)
    else:
        np.testing.assert_array_equal(y0, x0)
    # The pair (y0, y1) is the start and end of one teacher trajectory.
    np.testing.assert_allclose(_flow_map(params, y0, 1.0), y1, atol=1e-4)


def test_teacher_coupling_stops_gradients():
    params = {"a": jnp.array([0.5, 0.5]), "b": jnp.zeros(2)}
    coupling = distillation.reflow_coupling(_linear_field, params, solver=SolverSpec("euler", 4))
    x0, x1 = jax.random.normal(jax.random.key(0), (2, 8, 2))
    grad = jax.grad(lambda x: jnp.sum(coupling(jax.random.key(1), x0, x)[0]))(x1)
    np.testing.assert_array_equal(grad, 0.0)


def test_bad_learned_coupling_settings():
    with pytest.raises(ValueError, match="beta must be positive"):
        losses.fast_ode_loss(paths.ICFM(0.0), lambda *a: None, beta=0.0)
    with pytest.raises(ValueError, match="direction"):
        distillation.reflow_coupling(_linear_field, {}, direction="sideways")
    with pytest.raises(ValueError, match="needs its teacher"):
        build_loss("nfm")
    with pytest.raises(ValueError, match="needs the network's encode"):
        build_loss("fastode")
    with pytest.raises(ValueError, match="needs the 'normal' source"):
        build_loss("reflow", source="moons")
