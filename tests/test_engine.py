"""The sharded train step on 8 fake CPU devices against one device: data parallel and FSDP
layouts, global and group couplings (in the step and on the host), bf16 compute, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fm
from fm_jax.train import apply_overrides, load_config
from fm_jax.train.loop import build_engine, check_config

CONFIG = "toy2d"
STEPS = 10


def run(num_devices: int, calls: int = 2, **overrides):
    """Per-step losses of `calls` calls of STEPS steps, and the final state."""
    fields = {
        "mesh.num_devices": num_devices,
        "num_steps": calls * STEPS,
        "steps_per_call": STEPS,
        "log_every": STEPS,
        "batch_size": 64,
    } | overrides
    config = apply_overrides(load_config(CONFIG), {k: str(v) for k, v in fields.items()})
    engine = build_engine(check_config(config))
    state, losses = engine.state, []
    for call in range(calls):
        state, values = engine.steps(state, engine.batches(engine.data_key, call * STEPS))
        losses.append(np.asarray(values["loss"]))
    return np.concatenate(losses), state, engine


METHODS = {
    "icfm": {"method": "icfm"},
    "otcfm_host": {"method": "otcfm", "ot_solver": "network_simplex"},
    "otcfm_in_step": {"method": "otcfm", "ot_solver": "hungarian"},
    "sbcfm": {"method": "sbcfm", "sigma": 1.0},
}


@pytest.mark.parametrize("layout", ["replicated", "fsdp"])
@pytest.mark.parametrize("method", list(METHODS))
def test_eight_devices_match_one(method, layout):
    one, _, _ = run(1, **METHODS[method])
    eight, _, _ = run(8, **{"mesh.param_layout": layout}, **METHODS[method])
    assert np.all(np.isfinite(one))
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-6)


def test_fsdp_splits_the_weights_and_replicates_what_does_not_divide():
    _, state, engine = run(8, calls=1, **{"mesh.param_layout": "fsdp"})
    specs = {
        jax.tree_util.keystr(path): leaf.sharding.spec
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
    }
    kernels = [spec for name, spec in specs.items() if "kernel" in name]
    # Every kernel has an axis of 64 units, which 8 devices divide; the output bias (2 units) stays whole.
    assert kernels and all("data" in tuple(spec) for spec in kernels)
    assert any(tuple(spec) == () for spec in specs.values())
    assert all(tuple(s) == ("data",) or "data" in tuple(s) for s in kernels)
    assert engine.mesh.devices.size == 8


@pytest.mark.parametrize("method", ["otcfm_host", "sbcfm"])
def test_group_coupling_does_not_depend_on_the_device_count(method):
    fields = METHODS[method] | {"coupling_scope": "group", "coupling_group": 8}
    one, _, _ = run(1, **fields)
    eight, _, _ = run(8, **fields)
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-6)
    # And it is not the global coupling: smaller OT problems pair differently.
    global_, _, _ = run(1, **METHODS[method])
    assert not np.allclose(one, global_, rtol=1e-3)


def test_group_pairs_are_optimal_within_each_group():
    mesh = fm.train.sharding.make_mesh(8)
    x0 = jax.random.normal(jax.random.key(0), (64, 2))
    x1 = jax.random.normal(jax.random.key(1), (64, 2)) + jnp.array([4.0, 0.0])
    batch = jax.device_put({"x0": x0, "x1": x1}, fm.train.sharding.batch_sharding(mesh))
    coupling = fm.couplings.ExactOT()
    out = jax.jit(lambda b: fm.train.step.couple_in_groups(coupling, jax.random.key(2), b, 4, mesh))(batch)
    for g in range(16):  # 8 examples per device, 2 groups of 4 on each
        rows = slice(4 * g, 4 * (g + 1))
        expected = coupling(jax.random.key(0), x0[rows], x1[rows])[0]
        np.testing.assert_array_equal(np.asarray(out["x0"][rows]), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(out["x1"]), np.asarray(x1))


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32_losses():
    f32, _, _ = run(8, method="icfm")
    bf16, state, _ = run(8, method="icfm", precision="bfloat16")
    assert all(
        leaf.dtype == jnp.float32
        for leaf in jax.tree.leaves((state.params, state.opt_state, state.ema_params))
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    )
    assert not np.array_equal(bf16, f32)  # the network did run in bf16
    np.testing.assert_allclose(bf16, f32, rtol=0.05)


def test_later_calls_compile_nothing():
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    _, state, engine = run(8, calls=1, method="otcfm", ot_solver="network_simplex")
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for call in range(1, 4):
            state, values = engine.steps(state, engine.batches(engine.data_key, call * STEPS))
        values["loss"].block_until_ready()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


def _global_coupling(coupling, num_devices: int, n: int = 1024):
    """(the compiled `couple_global` over `num_devices` devices, its output on a fixed batch)."""
    mesh = fm.train.sharding.make_mesh(num_devices)
    x0 = jax.random.normal(jax.random.key(0), (n, 2))
    x1 = 0.5 * jax.random.normal(jax.random.key(1), (n, 2)) + jnp.array([3.0, 0.0])
    batch = jax.device_put({"x0": x0, "x1": x1}, fm.train.sharding.batch_sharding(mesh))
    compiled = (
        jax.jit(lambda b: fm.train.step.couple_global(coupling, jax.random.key(2), b, mesh)).lower(batch).compile()
    )
    return compiled, compiled(batch)


def test_global_sinkhorn_splits_its_cost_matrix_over_the_devices():
    coupling = fm.couplings.SinkhornOT()
    assert coupling.layout == "rows" and fm.couplings.SinkhornOT(online=64).layout == "gathered"
    one, pairs_one = _global_coupling(coupling, 1)
    eight, pairs_eight = _global_coupling(coupling, 8)
    # One device holds the 1024 x 1024 cost, plan and drawn rows (4 MiB each); eight hold an
    # eighth of the cost and plan each, and the drawn rows.
    temp_one, temp_eight = (c.memory_analysis().temp_size_in_bytes for c in (one, eight))
    assert temp_eight < 0.6 * temp_one, (temp_eight, temp_one)
    # The same pairs: the row sums and draws agree up to reassociation.
    same = np.all(np.asarray(pairs_one["x0"]) == np.asarray(pairs_eight["x0"]), axis=1)
    assert same.mean() > 0.99
    np.testing.assert_array_equal(np.asarray(pairs_eight["x1"]), np.asarray(pairs_one["x1"]))


def test_a_teacher_coupling_maps_a_sharded_global_batch_where_it_lies():
    coupling = fm.distillation.TeacherCoupling(lambda params, key, x, labels: params * x, jnp.float32(2.0))
    compiled, pairs = _global_coupling(coupling, 8, n=64)
    assert "all-gather" not in compiled.as_text()
    np.testing.assert_array_equal(np.asarray(pairs["x0"]), 2.0 * np.asarray(pairs["x1"]))
