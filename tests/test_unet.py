"""The ADM U-Net: the presets' parameter counts (published where there are any), ADM's
layer-for-layer size, its zero-initialized start, invariances, the functional bridge under jit
and grad, explicit-key dropout, bf16, and the errors it raises."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fm_jax.models import functional
from fm_jax.models.unet import (
    PRESETS,
    GroupNorm,
    UNet,
    check_labels,
    count_params,
    timestep_embedding,
    unet_preset,
)

SHAPE = (8, 8, 1)
BATCH = 4


def perturbed(params, seed, scale=0.1):
    """Params with every float leaf moved by N(0, scale^2) (drawn in NumPy: no compile per leaf shape),
    so the zero-initialized layers come alive."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: np.asarray(p) + scale * rng.standard_normal(p.shape).astype(np.float32), params)


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset with 3 classes on 8x8x1, its jitted apply, initial and perturbed params, inputs."""
    model = unet_preset("tiny", SHAPE, num_classes=3, rngs=nnx.Rngs(0))
    apply, params = functional(model)
    rng = np.random.default_rng(1)
    return dict(
        model=model,
        apply=jax.jit(apply),
        raw_apply=apply,
        params=params,
        live=perturbed(params, 2),
        t=rng.uniform(size=BATCH).astype(np.float32),
        x=rng.standard_normal((BATCH, *SHAPE)).astype(np.float32),
        cond=np.array([0, 1, 2, 3], np.int32),  # 3 is the null label
    )


# Preset -> (image shape, parameter count, where the count comes from). Building a preset with any
# other count fails the test below: a changed preset must change this table (and the README's).
PRESET_PARAMS = {
    # torchcfm 1.0.7 examples/images/cifar10/train_cifar10.py prints it at start ("Model params:
    # 34.09 M", i.e. the count / 2**20; the count reproduced by building torchcfm's
    # UNetModelWrapper with torch). Not stated in torchcfm's README or in Tong et al. 2024.
    "torchcfm_cifar10": ((32, 32, 3), 35_746_307, "published: torchcfm's CIFAR-10 script"),
    # Lipman et al. 2023 (ICLR), App. E Table 3 gives the hyper-parameters but no parameter count:
    # torchcfm's UNetModelWrapper at those settings (256 channels, scale-shift norm), built with torch.
    "fm_cifar10": ((32, 32, 3), 153_094_915, "not published; torchcfm's U-Net at the paper's settings"),
    "small": ((28, 28, 1), 1_191_233, "this library's CPU preset"),
    "tiny": ((8, 8, 1), 190_369, "this library's test preset"),
}


def preset_params(name, shape, num_classes=0):
    """The parameter count of a preset, built without weights (nnx.eval_shape)."""
    return count_params(nnx.eval_shape(lambda: unet_preset(name, shape, num_classes, rngs=nnx.Rngs(0))))


@pytest.mark.parametrize("name", sorted(PRESET_PARAMS))
def test_preset_parameter_counts_are_the_published_ones(name):
    shape, expected, source = PRESET_PARAMS[name]
    assert preset_params(name, shape) == expected, f"{name} at {shape}: expected {expected:,} ({source})"


def test_every_preset_has_a_pinned_count():
    assert sorted(PRESETS) == sorted(PRESET_PARAMS)


def test_parameter_counts_equal_adm_layer_for_layer():
    """Counts without building weights (nnx.eval_shape), against torchcfm 1.0.7's UNetModelWrapper
    (ADM's UNetModel) instantiated with torch for the same hyper-parameters."""

    def count(shape, **kw):
        return count_params(nnx.eval_shape(lambda: UNet(shape, **kw, rngs=nnx.Rngs(0))))

    # Resblock up/down and 10 classes: torchcfm's table has 10 rows, ours one more (the null label).
    assert count((32, 32, 3), channels=128, resblock_updown=True, num_classes=10) == 42_860_547 + 4 * 128
    # A preset with classes: one (num_classes + 1, 4 * channels) table more than without.
    assert preset_params("tiny", (8, 8, 1), num_classes=3) == 190_369 + 4 * 64
    # A small two-level net with attention at 4x4 given by height.
    assert (
        count(
            (8, 8, 1),
            channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            num_head_channels=-1,
            use_scale_shift_norm=False,
        )
        == 701_345
    )


def test_output_shape_and_dtype_for_several_image_shapes():
    for shape, num_classes, batch, t in [
        ((8, 8, 1), 0, 3, 0.5),
        ((16, 16, 3), 10, 2, jnp.ones(2)),
        ((8, 12, 2), 0, 1, np.zeros(1, np.float32)),
        ((28, 28, 1), 0, 2, 0.1),
    ]:
        preset = "small" if shape == (28, 28, 1) else "tiny"
        model = nnx.eval_shape(lambda: unet_preset(preset, shape, num_classes, rngs=nnx.Rngs(0)))
        apply, params = functional(model)
        for dtype in (jnp.float32, jnp.bfloat16):
            cond = np.zeros((batch,), np.int32) if num_classes else None
            out = jax.eval_shape(apply, params, t, jax.ShapeDtypeStruct((batch, *shape), dtype), cond)
            assert (out.shape, out.dtype) == ((batch, *shape), dtype)
    # Resblock up/down, additive embedding, attention at 8x8 in heads of 8 channels.
    model = nnx.eval_shape(
        lambda: UNet(
            (16, 16, 3),
            channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            num_head_channels=8,
            resblock_updown=True,
            use_scale_shift_norm=False,
            num_groups=8,
            num_classes=5,
            rngs=nnx.Rngs(0),
        )
    )
    apply, params = functional(model)
    out = jax.eval_shape(apply, params, 0.5, jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32), np.ones(2, np.int32))
    assert out.shape == (2, 16, 16, 3)


def test_initial_output_is_exactly_zero_and_then_depends_on_t_x_and_label(tiny):
    apply, t, x, cond = tiny["apply"], tiny["t"], tiny["x"], tiny["cond"]
    assert np.all(np.asarray(apply(tiny["params"], t, x, cond)) == 0.0)  # ADM's zero-initialized branches
    live = tiny["live"]
    out = np.asarray(apply(live, t, x, cond))
    assert np.all(np.isfinite(out)) and np.abs(out).mean() > 1e-3
    other_t = np.asarray(apply(live, 1.0 - t, x, cond))
    other_x = np.asarray(apply(live, t, -x, cond))
    other_label = np.asarray(apply(live, t, x, (cond + 1) % 4))
    for other in (other_t, other_x, other_label):
        assert np.abs(other - out).max(axis=(1, 2, 3)).min() > 1e-4  # every example changes


def test_null_label_is_num_classes_and_the_default(tiny):
    model, apply, live, t, x = tiny["model"], tiny["apply"], tiny["live"], tiny["t"], tiny["x"]
    assert model.null_label == model.num_classes == 3
    null = np.full((BATCH,), model.null_label, np.int32)
    np.testing.assert_array_equal(apply(live, t, x, None), apply(live, t, x, null))
    assert not np.allclose(apply(live, t, x, np.zeros((BATCH,), np.int32)), apply(live, t, x, null), atol=1e-4)
    assert nnx.eval_shape(lambda: unet_preset("tiny", SHAPE, rngs=nnx.Rngs(0))).null_label is None


def test_permuting_the_batch_permutes_the_output(tiny):
    """No mixing across examples: GroupNorm and attention act per example."""
    apply, live, t, x, cond = tiny["apply"], tiny["live"], tiny["t"], tiny["x"], tiny["cond"]
    perm = np.array([2, 0, 3, 1])
    out = apply(live, t, x, cond)
    np.testing.assert_allclose(apply(live, t[perm], x[perm], cond[perm]), out[perm], rtol=1e-5, atol=1e-6)
    # Changing one example changes no other output.
    x2 = x.copy()
    x2[0] = -x2[0]
    other = np.asarray(apply(live, t, x2, cond))
    assert not np.allclose(other[0], out[0])
    np.testing.assert_allclose(other[1:], np.asarray(out)[1:], rtol=1e-6, atol=1e-7)


def test_jit_and_grad_through_functional_match_finite_differences(tiny):
    apply, live, t, x, cond = tiny["raw_apply"], tiny["live"], tiny["t"], tiny["x"], tiny["cond"]
    u = np.ones_like(x)

    @jax.jit
    @jax.value_and_grad
    def loss(params):
        return jnp.mean((apply(params, t, x, cond) - u) ** 2)

    value, grads = loss(live)
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(value)) and all(np.all(np.isfinite(g)) for g in leaves)
    assert all(np.abs(g).max() > 0 for g in leaves)  # every parameter array gets a gradient
    # Directional derivative along a random direction: central difference vs autodiff.
    direction = perturbed(jax.tree.map(np.zeros_like, live), 7, scale=1.0)
    eps = 1e-3
    plus, _ = loss(jax.tree.map(lambda p, d: np.asarray(p) + eps * d, live, direction))
    minus, _ = loss(jax.tree.map(lambda p, d: np.asarray(p) - eps * d, live, direction))
    fd = (float(plus) - float(minus)) / (2 * eps)
    ad = sum(float(np.vdot(g, d)) for g, d in zip(leaves, jax.tree.leaves(direction)))
    np.testing.assert_allclose(fd, ad, rtol=2e-2)


def test_bf16_matches_float32(tiny):
    """bf16 params and x (t kept float32: a bf16 t is off by up to ~2 units of the scaled time 1000 t)."""
    live, t, x, cond = tiny["live"], tiny["t"], tiny["x"], tiny["cond"]
    out32 = tiny["apply"](live, t, x, cond)
    bf16 = jax.tree.map(lambda p: np.asarray(p).astype(jnp.bfloat16), live)
    out16 = tiny["apply"](bf16, t, x.astype(jnp.bfloat16), cond)
    assert out16.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(bf16))
    err = np.linalg.norm(np.asarray(out16, np.float32) - out32) / np.linalg.norm(out32)
    assert err < 4e-2, err


def test_dropout_takes_an_explicit_key_and_trains_under_jit_and_grad():
    """Dropout runs only with `dropout_key`; params stay float-only, so jax.grad works on them."""
    kw = dict(
        channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_resolutions=(),
        num_heads=2,
        num_head_channels=-1,
        num_groups=4,
    )
    model = UNet((4, 4, 1), dropout=0.5, **kw, rngs=nnx.Rngs(0))
    plain = UNet((4, 4, 1), dropout=0.0, **kw, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    params = perturbed(params, 3)
    assert all(jnp.issubdtype(p.dtype, jnp.floating) for p in jax.tree.leaves(params))

    @jax.jit
    def apply(params, t, x, key=None):
        return nnx.merge(graphdef, params)(t, x, dropout_key=key)

    x = np.random.default_rng(4).standard_normal((2, 4, 4, 1)).astype(np.float32)
    # No key: deterministic, the same network as one built without dropout.
    plain_apply, _ = functional(plain)
    out = np.asarray(apply(params, 0.5, x))
    np.testing.assert_allclose(out, jax.jit(plain_apply)(params, 0.5, x), rtol=1e-6)

    @jax.jit
    @jax.value_and_grad
    def loss(params, key):
        return jnp.mean(apply(params, 0.5, x, key) ** 2)

    k1, k2 = jax.random.key(5), jax.random.key(6)
    (v1, g1), (v2, g2), (v1_again, _) = loss(params, k1), loss(params, k2), loss(params, k1)
    assert float(v1) == float(v1_again)  # same key, same masks
    assert len({float(v1), float(v2), float(np.mean(out**2))}) == 3  # other key or no key: other masks
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g1))
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))


def test_timestep_embedding_is_the_scaled_sinusoid():
    emb = np.asarray(jax.jit(timestep_embedding, static_argnums=1)(np.array([0.0, 0.5]), 8))
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
    # Frequency i is 10000^(-i/4), time is scaled by 1000.
    np.testing.assert_allclose(emb[1, 1], np.cos(500.0 * 10000 ** (-1 / 4)), rtol=1e-5)
    np.testing.assert_allclose(emb[1, 4], np.sin(500.0), atol=1e-4)


def test_groupnorm_falls_back_to_a_divisor():
    model = nnx.eval_shape(
        lambda: UNet(
            (4, 4, 1),
            channels=12,
            channel_mult=(1,),
            num_res_blocks=1,
            attention_resolutions=(),
            num_head_channels=-1,
            num_heads=3,
            num_groups=8,
            rngs=nnx.Rngs(0),
        )
    )
    assert model.norm_out.groups == 6  # 12 channels, 8 groups asked: the largest divisor of 12 below 8
    norm = GroupNorm(12, 8)
    x = 3.0 + 2.0 * np.random.default_rng(0).standard_normal((2, 4, 4, 12)).astype(np.float32)
    h = np.asarray(nnx.jit(lambda m, x: m(x))(norm, x)).reshape(2, 4, 4, 6, 2)  # unit scale, zero bias
    np.testing.assert_allclose(h.mean(axis=(1, 2, 4)), 0.0, atol=1e-5)
    np.testing.assert_allclose(h.var(axis=(1, 2, 4)), 1.0, rtol=1e-3)


def test_forward_mode_through_the_unet_matches_finite_differences(tiny):
    """The likelihood's divergence takes Jacobian-vector products through the network: forward mode must work."""
    apply, live, t, x, cond = tiny["raw_apply"], tiny["live"], tiny["t"], tiny["x"], tiny["cond"]
    direction = np.asarray(jax.random.normal(jax.random.key(5), x.shape))
    f = jax.jit(lambda x: apply(live, t, x, cond))
    _, tangent = jax.jit(lambda x, d: jax.jvp(lambda y: apply(live, t, y, cond), (x,), (d,)))(x, direction)
    eps = 1e-2
    fd = (np.asarray(f(x + eps * direction), np.float64) - np.asarray(f(x - eps * direction), np.float64)) / (2 * eps)
    assert np.abs(tangent).max() > 0
    np.testing.assert_allclose(tangent, fd, rtol=2e-2, atol=2e-2 * float(np.abs(fd).max()))


def test_shape_and_dtype_errors_name_what_was_expected(tiny):
    model = tiny["model"]
    x = tiny["x"]
    with pytest.raises(ValueError, match=r"shape \(batch, 8, 8, 1\).*got \(8, 8, 1\)"):
        model(0.5, x[0])
    with pytest.raises(ValueError, match=r"shape \(batch, 8, 8, 1\).*got \(4, 8, 8, 3\)"):
        model(0.5, np.zeros((BATCH, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"got \(4, 16, 16, 1\)"):
        model(0.5, np.zeros((BATCH, 16, 16, 1), np.float32))
    with pytest.raises(ValueError, match="floating-point x"):
        model(0.5, np.zeros((BATCH, *SHAPE), np.int32))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\)"):
        model(np.zeros((3,), np.float32), x)
    with pytest.raises(ValueError, match=r"cond must be a scalar or have shape \(4,\)"):
        model(0.5, x, np.zeros((3,), np.int32))
    with pytest.raises(ValueError, match="integer class labels"):
        model(0.5, x, np.zeros((BATCH,), np.float32))
    # The same errors at trace time, before anything compiles.
    with pytest.raises(ValueError, match="got \\(4, 8, 8, 3\\)"):
        jax.jit(tiny["raw_apply"]).trace(tiny["params"], 0.5, np.zeros((BATCH, 8, 8, 3), np.float32), None)


def test_label_errors():
    uncond = nnx.eval_shape(lambda: unet_preset("tiny", SHAPE, rngs=nnx.Rngs(0)))
    apply, params = functional(uncond)
    with pytest.raises(ValueError, match="class label was passed to an unconditional UNet"):
        jax.eval_shape(apply, params, 0.5, np.zeros((2, *SHAPE), np.float32), np.zeros((2,), np.int32))
    with pytest.raises(ValueError, match="unconditional"):
        uncond.check_labels([0, 1])
    cond = nnx.eval_shape(lambda: unet_preset("tiny", SHAPE, num_classes=3, rngs=nnx.Rngs(0)))
    np.testing.assert_array_equal(cond.check_labels(np.array([0, 3, 2])), [0, 3, 2])
    with pytest.raises(ValueError, match=r"label 4 is out of range: labels must lie in \[0, 3\]"):
        cond.check_labels(np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"label -1 is out of range"):
        check_labels([-1, 2], 3)
    with pytest.raises(ValueError, match="must be integers"):
        check_labels(np.array([0.0, 1.0]), 3)


def test_bad_labels_raise_eagerly_and_give_nan_inside_jit(tiny):
    model, apply, t, x = tiny["model"], tiny["apply"], tiny["t"], tiny["x"]
    with pytest.raises(ValueError, match=r"label 7 is out of range"):
        model(t, x, np.array([0, 7, 1, 2], np.int32))  # concrete labels are checked before any compile
    # Inside jit the values are unknown at trace time: bad rows come out NaN, never a clamped class.
    out = np.asarray(apply(tiny["live"], t, x, np.array([0, 4, -1, 3], np.int32)))
    assert list(np.isnan(out).any(axis=(1, 2, 3))) == [False, True, True, False]


def test_construction_errors():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(len\(channel_mult\) - 1\) = 8.*\(28, 28, 1\)"):
        UNet((28, 28, 1), channel_mult=(1, 2, 2, 2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"attention resolution 16 names no level.*\[8, 4\]"):
        UNet((8, 8, 1), channels=16, channel_mult=(1, 2), attention_resolutions=(16,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_head_channels=64 must divide the 16 channels"):
        UNet((8, 8, 1), channels=16, channel_mult=(1, 2), attention_resolutions=(8,), num_groups=8, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"Unknown config.model.preset 'huge'; choose one of \['fm_cifar10', "
        r"'torchcfm_cifar10', 'tiny', 'small'\]",
    ):
        unet_preset("huge", SHAPE, rngs=nnx.Rngs(0))


def test_the_token_unet_starts_uniform_and_its_tokens_reach_their_neighbours():
    """A discrete flow's U-Net (`TokenUNet`): int tokens (batch, H W C) in, logits (batch, H W C, K)
    out; zero logits (the uniform posterior) at initialization, as the transformer; after a few
    gradient steps a token changes the logits of the pixel beside it."""
    import optax

    from fm_jax.models import TokenUNet
    from fm_jax.models.unet import PRESETS

    model = TokenUNet((8, 8, 1), 18, 17, **PRESETS["tiny"], rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(1), (4, 64), 0, 18)
    t = jnp.full((4,), 0.5)
    apply, params = functional(model)
    apply = jax.jit(apply)
    logits = apply(params, t, x)
    assert logits.shape == (4, 64, 17) and float(jnp.abs(logits).max()) == 0.0
    grad = jax.jit(jax.grad(lambda p: -jnp.mean(jax.nn.log_softmax(apply(p, t, x))[..., 3])))
    for _ in range(3):  # the zero-initialized layers pass gradients on from the third step
        params = optax.apply_updates(params, jax.tree.map(lambda g: -0.1 * g, grad(params)))
    changed = x.at[:, 0].set((x[:, 0] + 1) % 18)  # the top-left pixel's token
    delta = jnp.abs(apply(params, t, changed) - apply(params, t, x))
    assert float(delta[:, 1].max()) > 0  # the logits of its right neighbour move
    with pytest.raises(ValueError, match=r"takes int tokens of shape \(batch, 64\)"):
        apply(params, t, jnp.zeros((4, 64)))
