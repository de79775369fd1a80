"""The sequence transformer of discrete flows: adaLN-Zero start, bidirectional attention, time and
class conditioning, training on a token target, and FSDP sharding over fake devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fm_jax as fm
from fm_jax.models import functional
from fm_jax.models.transformer import Transformer, transformer_preset
from fm_jax.train import sharding


def randomized(model, seed=0):
    """The model with every parameter redrawn (the zero-initialized ones too)."""
    graphdef, params = nnx.split(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def test_it_starts_at_the_uniform_posterior_and_conditions_on_time_labels_and_every_token():
    model = transformer_preset("tiny", num_states=5, vocab_size=4, length=6, num_classes=3, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(1), (2, 6), 0, 5)
    t = jnp.array([0.2, 0.7])
    assert model(t, x).shape == (2, 6, 4)
    np.testing.assert_array_equal(model(t, x), 0.0)  # adaLN-Zero: uniform logits, loss log K
    model = randomized(model)
    base = model(t, x, jnp.array([0, 1]))
    assert not np.allclose(model(t + 0.1, x, jnp.array([0, 1])), base, atol=1e-4)
    assert not np.allclose(model(t, x, jnp.array([2, 3])), base, atol=1e-4)  # 3: the null label
    # Bidirectional: a change at position 3 moves the logits before and after it.
    changed = model(t, x.at[:, 3].set((x[:, 3] + 1) % 5), jnp.array([0, 1]))
    moved = np.abs(np.asarray(changed - base)).max(axis=(0, 2))
    assert moved[0] > 1e-4 and moved[5] > 1e-4
    with pytest.raises(ValueError, match="int tokens of shape"):
        model(t, jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="out of range"):
        model(t, x, jnp.array([0, 4]))
    with pytest.raises(ValueError, match="unconditional"):
        Transformer(5, 4, 6, width=8, depth=1, heads=2, rngs=nnx.Rngs(0))(t, x, jnp.array([0, 1]))


def test_a_few_adam_steps_learn_a_token_target():
    marginals = jnp.array([[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85], [0.05, 0.85, 0.05, 0.05]])
    x1 = jax.random.categorical(jax.random.key(2), jnp.log(marginals), shape=(256, 3))
    path = fm.discrete.MixturePath(4, "mask")
    loss = fm.discrete.dfm_loss(path)
    apply, params = functional(transformer_preset("tiny", path.num_states, 4, 3, rngs=nnx.Rngs(0)))
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        value, grads = jax.value_and_grad(lambda p: loss(apply, p, key, {"x1": x1})[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params)
    values = []
    for i in range(150):
        params, opt_state, value = step(params, opt_state, jax.random.key(i))
        values.append(float(value))
    # Start: log 4 on the masked half of the tokens; the posterior's minimum is about 0.33.
    assert values[0] == pytest.approx(np.log(4) * 0.5, rel=0.15)
    assert np.mean(values[-20:]) < 0.45


def test_fsdp_sharding_over_four_devices_gives_the_loss_of_one():
    path = fm.discrete.MixturePath(8, "uniform")
    loss = fm.discrete.dfm_loss(path, "kl")
    apply, params = functional(randomized(transformer_preset("tiny", 8, 8, 16, rngs=nnx.Rngs(0))))
    x1 = jax.random.randint(jax.random.key(3), (16, 16), 0, 8)
    value = lambda p, x: loss(apply, p, jax.random.key(4), {"x1": x})[0]
    single = float(jax.jit(value)(params, x1))
    mesh = sharding.make_mesh(4)
    shardings = sharding.state_shardings(params, mesh, "fsdp")
    placed = jax.device_put(params, shardings)
    split = [s for s in jax.tree.leaves(shardings) if any(p is not None for p in s.spec)]
    assert len(split) > len(jax.tree.leaves(params)) // 2  # most matrices are split over the devices
    sharded = float(jax.jit(value)(placed, jax.device_put(x1, sharding.batch_sharding(mesh))))
    assert sharded == pytest.approx(single, rel=1e-5)
