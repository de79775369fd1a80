"""Losses: zero at the exact conditional target with a finite gradient; no recompilation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fm
from fm_jax.paths import _expand

COUPLINGS = [
    fm.couplings.Independent(),
    fm.couplings.ExactOT(),
    fm.couplings.SinkhornOT(epsilon=0.1),
    fm.couplings.SchrodingerBridge(sigma=0.5),
]
N, D = 32, 3
X0_POINT = jnp.array([0.5, -1.0, 2.0])
X1_POINT = jnp.array([3.0, 1.0, -2.0])


def oracle(path, target):
    """The exact conditional target at (t, x_t) when x0 and x1 are Dirac masses: z is read off x_t."""

    def apply(params, t, x_t, cond):
        (a, b, g), (da, db, dg) = path.coefficients(t)
        mean = _expand(a, x_t) * X0_POINT + _expand(b, x_t) * X1_POINT
        z = (x_t - mean) / _expand(g, x_t) if path.has_noise else jnp.zeros_like(x_t)
        if target == "velocity":
            exact = _expand(da, x_t) * X0_POINT + _expand(db, x_t) * X1_POINT + _expand(dg, x_t) * z
        elif target == "x1":
            exact = jnp.broadcast_to(X1_POINT, x_t.shape)
        else:
            exact = path.eps(t, jnp.broadcast_to(X0_POINT, x_t.shape), z)
        return exact + params["w"] * x_t

    return apply


def check_zero_at_target(path, coupling, target):
    # Times stay inside (0, 1): some schedules have singular derivatives at the ends.
    loss = fm.cfm_loss(path, coupling, fm.UniformTime(0.01, 0.99), target=target)
    batch = {"x0": jnp.tile(X0_POINT, (N, 1)), "x1": jnp.tile(X1_POINT, (N, 1))}
    apply = oracle(path, target)
    value, grads = jax.value_and_grad(lambda p: loss(apply, p, jax.random.key(0), batch)[0])({"w": 0.0})
    assert float(value) < 1e-8
    assert np.isfinite(grads["w"])
    # The same loss away from the optimum is positive: the test can fail.
    assert float(loss(apply, {"w": 0.1}, jax.random.key(0), batch)[0]) > 1e-4


@pytest.mark.parametrize("target", fm.losses.TARGETS)
def test_every_path_loss_is_zero_at_the_conditional_target(path, target):
    check_zero_at_target(path, fm.couplings.Independent(), target)


@pytest.mark.parametrize("target", fm.losses.TARGETS)
@pytest.mark.parametrize("coupling", COUPLINGS, ids=repr)
def test_every_coupling_loss_is_zero_at_the_conditional_target(coupling, target):
    check_zero_at_target(fm.paths.BrownianBridge(sigma=0.5), coupling, target)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_conditional_ot_targets_by_hand(sigma_min):
    """Lipman et al. 2023, eq. 23: u_t = x1 - (1 - sigma_min) x0; the eps target of a noise-free path is x0."""
    path = fm.paths.CondOT(sigma_min)
    batch = {"x0": jnp.tile(X0_POINT, (N, 1)), "x1": jnp.tile(X1_POINT, (N, 1))}
    by_hand = {"velocity": X1_POINT - (1 - sigma_min) * X0_POINT, "x1": X1_POINT, "eps": X0_POINT}
    for target, value in by_hand.items():
        loss = fm.cfm_loss(path, target=target)
        apply = lambda p, t, x, c: jnp.broadcast_to(value, x.shape)
        assert float(loss(apply, None, jax.random.key(0), batch)[0]) < 1e-10


def test_velocity_loss_minimizer_is_the_marginal_velocity():
    """E over the batch of the conditional loss is minimized by E[u_t | x_t]: the exact field beats a perturbed one."""
    path = fm.paths.CondOT()
    flow = fm.GaussianFlow(path, mu1=jnp.array([2.0, 0.0]), s1=0.5)
    loss = fm.cfm_loss(path)
    batch = {"x1": flow.sample(jax.random.key(1), 1.0, 20000, 2)}
    apply = lambda p, t, x, c: flow.velocity(t, x) * (1.0 + p)
    values = [float(loss(apply, p, jax.random.key(2), batch)[0]) for p in (-0.1, 0.0, 0.1)]
    assert values[1] < values[0] and values[1] < values[2]


def test_time_samplers():
    t = fm.UniformTime()(jax.random.key(0), 100_000)
    assert t.shape == (100_000,) and 0 <= float(t.min()) and float(t.max()) <= 1
    np.testing.assert_allclose(float(t.mean()), 0.5, atol=0.01)
    t = fm.LogitNormalTime(m=0.5, s=0.8)(jax.random.key(0), 100_000)
    logit = np.log(t) - np.log1p(-t)
    np.testing.assert_allclose([logit.mean(), logit.std()], [0.5, 0.8], atol=0.01)


def test_loss_draws_standard_normal_source_and_passes_labels():
    seen = {}

    def apply(params, t, x_t, cond):
        seen["cond"] = cond
        return jnp.zeros_like(x_t)

    loss = fm.cfm_loss(fm.paths.CondOT(), fm.couplings.ExactOT(class_conditional=True))
    batch = {"x1": jnp.zeros((512, 2)), "label": jnp.arange(512) % 2}
    value, metrics = loss(apply, None, jax.random.key(0), batch)
    # x_t = (1 - t) x0 with x0 ~ N(0, I): u_t = -x0, so the loss is mean(x0^2) ~ 1 +- 0.044.
    np.testing.assert_allclose(float(value), 1.0, atol=0.15)
    np.testing.assert_array_equal(seen["cond"], batch["label"])
    assert set(metrics) == {"loss"}


def test_label_dropout_replaces_a_fraction_of_labels_by_the_null_label_and_leaves_the_draws_alone():
    seen = []

    def apply(params, t, x_t, cond):
        seen.append(cond)
        return x_t * params

    batch = {"x1": jax.random.normal(jax.random.key(1), (4000, 2)), "label": jnp.arange(4000) % 10}
    plain = fm.cfm_loss(fm.paths.CondOT())
    dropped = fm.cfm_loss(fm.paths.CondOT(), label_dropout=0.2, null_label=10)
    v_plain, _ = plain(apply, 0.5, jax.random.key(0), batch)
    v_drop, _ = dropped(apply, 0.5, jax.random.key(0), batch)
    labels_plain, labels_drop = seen
    np.testing.assert_array_equal(labels_plain, batch["label"])
    null = np.asarray(labels_drop) == 10
    # Binomial(4000, 0.2): 800 +- 25.
    assert 700 < null.sum() < 900, null.sum()
    np.testing.assert_array_equal(np.asarray(labels_drop)[~null], np.asarray(batch["label"])[~null])
    # t, z and x0 come from the same keys with and without the option.
    assert float(v_plain) == float(v_drop)
    with pytest.raises(ValueError, match="needs labels"):
        dropped(apply, 0.5, jax.random.key(0), {"x1": batch["x1"]})
    with pytest.raises(ValueError, match="null_label"):
        fm.cfm_loss(fm.paths.CondOT(), label_dropout=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fm.cfm_loss(fm.paths.CondOT(), label_dropout=1.0, null_label=10)


def test_repeated_calls_do_not_recompile():
    loss = fm.cfm_loss(fm.paths.ICFM(sigma=0.1), fm.couplings.ExactOT(), fm.LogitNormalTime())
    apply = lambda p, t, x, c: p["w"] * x + p["b"] * t[:, None]
    params = {"w": jnp.ones(()), "b": jnp.zeros(())}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, key, batch):
        return jax.grad(lambda p: loss(apply, p, key, batch)[0])(params)

    for i in range(4):
        batch = {"x1": jax.random.normal(jax.random.key(i), (64, 2))}
        grads = step(params, jax.random.key(10 + i), batch)
        assert all(np.isfinite(g) for g in jax.tree.leaves(grads))
    # A loss built again from equal parts is equal: usable as a static argument.
    assert loss == fm.cfm_loss(fm.paths.ICFM(sigma=0.1), fm.couplings.ExactOT(), fm.LogitNormalTime())


def test_bad_input():
    with pytest.raises(ValueError, match="Unknown target"):
        fm.cfm_loss(fm.paths.CondOT(), target="score")
    loss = fm.cfm_loss(fm.paths.CondOT())
    with pytest.raises(KeyError, match="x1"):
        loss(lambda *a: None, None, jax.random.key(0), {"x": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="network returned shape"):
        loss(lambda p, t, x, c: x[:, :1], None, jax.random.key(0), {"x1": jnp.zeros((2, 2))})


@pytest.mark.parametrize(
    "path, end",
    [(fm.paths.BrownianBridge(1.0), 0.0), (fm.paths.BrownianBridge(1.0), 1.0), (fm.paths.Cosine(), 1.0)],
    ids=["bridge-t0", "bridge-t1", "cosine-t1"],
)
def test_times_at_a_singular_end_are_kept_inside_and_the_loss_stays_finite(path, end):
    # u_t is infinite at these ends; a sampler that returns exactly the end must not turn the loss into inf/NaN.
    loss = fm.cfm_loss(path, time_sampler=lambda key, n: jnp.full((n,), end))
    apply = lambda params, t, x, cond: params * x
    batch = {"x1": jax.random.normal(jax.random.key(1), (16, 2))}
    value, grad = jax.value_and_grad(lambda p: loss(apply, p, jax.random.key(0), batch)[0])(jnp.float32(0.5))
    assert np.isfinite(value) and np.isfinite(grad)
    lo, hi = path.t_range
    assert 0.0 <= lo < hi <= 1.0 and (lo > 0.0 if end == 0.0 else hi < 1.0)


def test_only_paths_with_a_singular_end_narrow_the_time_range():
    from conftest import ALL_PATHS

    for path in ALL_PATHS:
        singular = isinstance(path, fm.paths.Cosine) or (isinstance(path, fm.paths.BrownianBridge) and path.has_noise)
        assert (path.t_range != (0.0, 1.0)) == singular, path


def test_loss_arguments_are_checked_and_named():
    """Swapped or ill-shaped arguments fail at the loss's boundary, with the argument and the call named."""
    loss = fm.cfm_loss(fm.paths.CondOT())
    apply = lambda p, t, x, c: x
    key = jax.random.key(0)
    x1 = jnp.ones((4, 2))
    with pytest.raises(TypeError, match=r"key and batch are swapped: the call is loss\(apply, params, key, batch\)"):
        loss(apply, None, {"x1": x1}, key)
    with pytest.raises(TypeError, match=r"key must be a JAX random key.*got int 0"):
        loss(apply, None, 0, {"x1": x1})
    with pytest.raises(TypeError, match=r"apply must be the network apply\(params, t, x_t, cond\).*got a dict"):
        loss({"w": 1.0}, apply, key, {"x1": x1})  # apply and params swapped
    with pytest.raises(
        TypeError, match=r"batch must be a dict with the data under 'x1'.*got an array of shape \(4, 2\)"
    ):
        loss(apply, None, key, x1)
    with pytest.raises(TypeError, match=r"batch\['x1'\] must hold floating-point values.*got dtype uint8"):
        loss(apply, None, key, {"x1": jnp.zeros((4, 2), jnp.uint8)})
    with pytest.raises(ValueError, match=r"batch\['x1'\] must be batch-first.*got shape \(\)"):
        loss(apply, None, key, {"x1": jnp.float32(1.0)})
    with pytest.raises(ValueError, match=r"batch\['x0'\] must have the shape of batch\['x1'\], \(4, 2\); got \(3, 2\)"):
        loss(apply, None, key, {"x1": x1, "x0": jnp.ones((3, 2))})
    with pytest.raises(
        ValueError, match=r"batch\['label'\] must have one entry per example, shape \(4,\); got shape \(3,\)"
    ):
        loss(apply, None, key, {"x1": x1, "label": jnp.zeros(3, jnp.int32)})
    with pytest.raises(TypeError, match="key and batch are swapped"):
        fm.losses.flow_nll_loss()(lambda p, x: x.sum(1), None, {"x1": x1}, key)
    # A legacy raw key is a key too, and the checks run while tracing (shapes and dtypes only).
    assert np.isfinite(float(loss(apply, None, jax.random.PRNGKey(0), {"x1": x1})[0]))
    traced = jax.jit(lambda k, b: loss(apply, None, k, b)[0])
    assert np.isfinite(float(traced(key, {"x1": x1})))
    with pytest.raises(TypeError, match="key and batch are swapped"):
        traced({"x1": x1}, key)
