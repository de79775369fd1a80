"""The time-conditioned MLP: torchcfm's capacity, the functional bridge, and a flow it learns."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fm_jax as fm
from fm_jax.models import MLP, functional


def test_default_mlp_has_the_capacity_of_torchcfms_2d_net():
    # Linear(3, 64), 2 x Linear(64, 64), Linear(64, 2): 256 + 2 * 4160 + 130 parameters.
    _, params = functional(MLP(2, rngs=nnx.Rngs(0)))
    assert sum(p.size for p in jax.tree.leaves(params)) == 256 + 2 * 4160 + 130


def test_mlp_depends_on_time_and_takes_scalar_or_batch_t():
    model = MLP(3, width=16, depth=2, activation="silu", rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (4, 3))
    np.testing.assert_allclose(model(0.3, x), model(jnp.full((4,), 0.3), x), rtol=1e-6)
    assert not np.allclose(model(0.0, x), model(1.0, x))


def test_mlp_bad_input():
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        MLP(2, activation="swish", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        MLP(2, rngs=nnx.Rngs(0))(0.5, jnp.ones((4, 3)))


def test_mlp_learns_a_gaussian_flow_with_the_cfm_loss():
    """600 Adam steps of CFM from N(0, I) to N((2, 0), 0.5^2 I): the learned flow is the exact marginal flow."""
    target = fm.GaussianFlow(fm.paths.CondOT(), mu1=jnp.array([2.0, 0.0]), s1=0.5)
    apply, params = functional(MLP(2, rngs=nnx.Rngs(0)))
    loss = fm.cfm_loss(fm.paths.CondOT())
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, 600))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train(params, key):
        def step(carry, key):
            params, state = carry
            k_data, k_loss = jax.random.split(key)
            batch = {"x1": target.sample(k_data, 1.0, 256, 2)}
            value, grads = jax.value_and_grad(lambda p: loss(apply, p, k_loss, batch)[0])(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), values = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, 600))
        return params, values

    params, values = train(params, jax.random.key(1))
    assert float(values[-50:].mean()) < 0.8 * float(values[:50].mean())
    x0 = jax.random.normal(jax.random.key(2), (2000, 2))
    x1 = fm.sample(fm.velocity_field(apply, params), x0, solver="dopri5", rtol=1e-4, atol=1e-4).x
    # Each sample lands where the closed-form flow map sends its x0 (target std 0.5) ...
    assert float(jnp.sqrt(jnp.mean((x1 - target.flow_map(x0)) ** 2))) < 0.08
    # ... and the samples are as close to the target as a fresh exact sample is (~0.075).
    assert fm.metrics.w2(x1, target.sample(jax.random.key(3), 1.0, 2000, 2)) < 0.11
