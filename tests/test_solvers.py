"""Diffrax sampling against closed-form Gaussian flows; the NFE count against the calls actually made."""

import chex
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import fm_jax as fm

D, N = 3, 4000
MU = jnp.array([3.0, -1.0, 0.5])
S = 0.5
FLOW = fm.GaussianFlow(fm.paths.CondOT(), mu1=MU, s1=S)  # N(0, I) -> N(MU, S^2 I)
X0 = jax.random.normal(jax.random.key(0), (N, D))

# (vector-field evaluations per step, extra evaluations at the start) of each explicit solver,
# from the published tableaus: first-same-as-last solvers pay their last stage once per run.
STAGES = {
    "euler": (1, 0),
    "midpoint": (2, 0),
    "heun": (2, 0),
    "ralston": (2, 0),
    "bosh3": (3, 1),
    "tsit5": (6, 1),
    "dopri5": (6, 1),
    "dopri8": (13, 1),
}
# RMS error against the exact flow map after 20 steps: first order, second order, higher.
TOLERANCE = {"euler": 5e-2, "midpoint": 2e-3, "heun": 2e-3, "ralston": 2e-3}


def counted(vf):
    """vf with a host-side counter of the times it is executed (not traced)."""
    calls = [0]

    def bump(x):
        calls[0] += 1
        return np.zeros((), np.float32)

    def wrapped(t, x):
        token = io_callback(bump, jax.ShapeDtypeStruct((), jnp.float32), x[0, 0], ordered=True)
        return vf(t, x) + token

    return wrapped, calls


@pytest.mark.parametrize("solver", sorted(STAGES))
def test_fixed_step_solvers_land_on_the_target_with_steps_times_stages_evaluations(solver):
    steps = 20
    vf, calls = counted(FLOW.velocity)
    sol = fm.sample(vf, X0, solver=solver, steps=steps)
    per_step, start = STAGES[solver]
    assert int(sol.nfe) == per_step * steps + start == calls[0]
    assert int(sol.num_steps) == steps
    err = float(jnp.sqrt(jnp.mean((sol.x - FLOW.flow_map(X0)) ** 2)))
    assert err < TOLERANCE.get(solver, 1e-4), err
    # Mean and covariance of the samples: those of N(MU, S^2 I) up to Monte Carlo error.
    np.testing.assert_allclose(np.mean(sol.x, 0), MU, atol=4 * S / np.sqrt(N) + TOLERANCE.get(solver, 0))
    cov = np.cov(np.asarray(sol.x).T)
    np.testing.assert_allclose(cov, S**2 * np.eye(D), atol=6 * S**2 * np.sqrt(2 / N) + 2 * TOLERANCE.get(solver, 0))


@pytest.mark.parametrize("solver", ["bosh3", "tsit5", "dopri5", "dopri8"])
def test_adaptive_solvers_meet_the_tolerance_and_count_rejected_steps(solver):
    # A sharp target makes the controller reject steps, which must be counted too.
    flow = fm.GaussianFlow(fm.paths.CondOT(), mu1=MU, s1=0.02)
    vf, calls = counted(flow.velocity)
    sol = fm.sample(vf, X0, solver=solver, rtol=1e-6, atol=1e-6)
    assert int(sol.nfe) == calls[0]
    err = float(jnp.sqrt(jnp.mean((sol.x - flow.flow_map(X0)) ** 2)))
    assert err < 1e-4, err


def test_adaptive_solve_rejects_steps_on_a_sharp_target():
    """The sharp target above does make the controller reject steps, and `sample` counts them."""
    flow = fm.GaussianFlow(fm.paths.CondOT(), mu1=MU, s1=0.02)
    vf, calls = counted(flow.velocity)
    sol = fm.sample(vf, X0, solver="dopri5", rtol=1e-6, atol=1e-6)
    # The same solve through Diffrax directly (same first step and controller) for its statistics.
    stats = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: flow.velocity(t, y)),
        diffrax.Dopri5(),
        0.0,
        1.0,
        fm.solvers.INITIAL_STEP,
        X0,
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
    ).stats
    assert int(stats["num_rejected_steps"]) > 0
    assert int(sol.num_steps) == int(stats["num_steps"])
    assert int(sol.nfe) == calls[0] == 1 + 6 * int(stats["num_steps"])


def test_higher_order_converges_faster():
    errors = {}
    for solver in ("euler", "heun", "bosh3", "dopri5"):
        errors[solver] = [
            float(jnp.sqrt(jnp.mean((fm.sample(FLOW.velocity, X0, solver=solver, steps=n).x - FLOW.flow_map(X0)) ** 2)))
            for n in (16, 32)
        ]
    # Halving the step divides the error by about 2^order (in the asymptotic regime).
    assert 1.6 < errors["euler"][0] / errors["euler"][1] < 2.5
    assert 3.0 < errors["heun"][0] / errors["heun"][1] < 5.5
    assert errors["bosh3"][0] / errors["bosh3"][1] > 6.0
    assert errors["dopri5"][1] < errors["bosh3"][1] < errors["heun"][1] < errors["euler"][1]


def test_encode_is_the_inverse_flow():
    x1 = FLOW.sample(jax.random.key(1), 1.0, 1000, D)
    back = fm.encode(FLOW.velocity, x1, solver="tsit5", rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(back.x, FLOW.flow_map(x1, t=0.0, s=1.0), atol=1e-4)
    again = fm.sample(FLOW.velocity, back.x, solver="tsit5", rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(again.x, x1, atol=1e-4)


def test_trajectories_follow_the_exact_flow():
    sol = fm.sample(FLOW.velocity, X0[:100], solver="dopri5", steps=10, save_trajectory=5)
    assert sol.ts.shape == (5,) and sol.trajectory.shape == (5, 100, D)
    for t, x_t in zip(sol.ts, sol.trajectory):
        np.testing.assert_allclose(x_t, FLOW.flow_map(X0[:100], t=t), atol=1e-4)
    sol = fm.sample(FLOW.velocity, X0[:100], solver="heun", steps=8, save_trajectory=True)
    np.testing.assert_allclose(sol.ts, np.linspace(0, 1, 9), atol=1e-6)
    np.testing.assert_array_equal(sol.trajectory[0], X0[:100])
    np.testing.assert_array_equal(sol.trajectory[-1], sol.x)  # the states after each step, not interpolated
    # Every step of an adaptive solve; unused slots are padded with inf.
    sol = fm.sample(FLOW.velocity, X0[:100], solver="dopri5", rtol=1e-4, atol=1e-4, save_trajectory=True, max_steps=64)
    taken = int(np.isfinite(sol.ts).sum())  # t0 and each accepted step (num_steps counts rejected ones too)
    assert 2 < taken <= int(sol.num_steps) + 1 and np.all(np.isinf(sol.ts[taken:])) and sol.ts.shape == (65,)
    assert float(sol.ts[taken - 1]) == 1.0 and np.all(np.diff(sol.ts[:taken]) > 0)
    np.testing.assert_array_equal(sol.trajectory[taken - 1], sol.x)


@pytest.mark.parametrize("prediction", ["x1", "eps", "score"])
def test_velocity_field_converts_other_predictions(prediction):
    path = fm.paths.ICFM(sigma=0.3)
    flow = fm.GaussianFlow(path, mu1=MU, s1=S)

    def apply(params, t, x, cond):
        return path.convert(flow.velocity(t, x), t, x, src="velocity", dst=prediction)

    vf = fm.velocity_field(apply, None, path=path, prediction=prediction)
    x = flow.sample(jax.random.key(3), 0.4, 50, D)
    np.testing.assert_allclose(vf(0.4, x), flow.velocity(0.4, x), atol=1e-4)
    np.testing.assert_allclose(
        fm.sample(vf, x, solver="midpoint", steps=10, t0=0.4).x,
        fm.sample(flow.velocity, x, solver="midpoint", steps=10, t0=0.4).x,
        atol=1e-4,
    )


def test_network_field_passes_params_and_cond():
    seen = {}

    def apply(params, t, x, cond):
        seen["t"], seen["cond"] = t, cond
        return params * x

    vf = fm.velocity_field(apply, 2.0, cond=jnp.arange(4))
    out = vf(0.25, jnp.ones((4, 2)))
    np.testing.assert_allclose(out, 2.0)
    np.testing.assert_allclose(seen["t"], np.full(4, 0.25))
    np.testing.assert_array_equal(seen["cond"], np.arange(4))


def test_jitted_sampling_does_not_recompile():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def solve(x0):
        return fm.sample(FLOW.velocity, x0, solver="tsit5", rtol=1e-5, atol=1e-5)

    for i in range(3):
        sol = solve(jax.random.normal(jax.random.key(i), (64, D)))
        assert np.all(np.isfinite(sol.x))


def test_a_solver_spec_is_the_one_way_to_name_a_solve():
    # Text round-trips; a name alone is adaptive at the one default tolerance, as `sample` is by default.
    for text in ("dopri5", "euler:100", "tsit5", "heun:3"):
        assert str(fm.SolverSpec.parse(text)) == text
    spec = fm.SolverSpec.parse("dopri5")
    assert (spec.steps, spec.rtol, spec.atol) == (None, fm.solvers.DEFAULT_TOL, fm.solvers.DEFAULT_TOL)
    assert fm.SolverSpec.parse("euler:8", rtol=1e-3) == fm.SolverSpec("euler", 8, 1e-3, 1e-5)
    default, named, spec_sol = (
        fm.sample(FLOW.velocity, X0),
        fm.sample(FLOW.velocity, X0, solver="dopri5"),
        fm.sample(FLOW.velocity, X0, spec),
    )
    assert int(default.nfe) == int(named.nfe) == int(spec_sol.nfe)
    np.testing.assert_array_equal(named.x, spec_sol.x)
    fixed = fm.sample(FLOW.velocity, X0, fm.SolverSpec("euler", 8))
    assert int(fixed.nfe) == 8
    assert fm.SolverSpec("euler", 100, sde=True).steps == 100
    for bad, message in [
        ("euler", "no error estimate"),
        ("euler:0", "positive integer"),
        ("euler:x", "NAME:STEPS"),
        ("rk4", "Unknown solver 'rk4'"),
        ("dopri5:", "NAME:STEPS"),
    ]:
        with pytest.raises(ValueError, match=message):
            fm.SolverSpec.parse(bad)
    with pytest.raises(ValueError, match="fixed steps"):
        fm.SolverSpec.parse("euler", sde=True)
    with pytest.raises(ValueError, match="Unknown SDE solver 'dopri5'"):
        fm.SolverSpec.parse("dopri5:10", sde=True)
    with pytest.raises(ValueError, match="tolerances must be positive"):
        fm.SolverSpec("dopri5", rtol=0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="either steps"):
        fm.sample(FLOW.velocity, X0, solver="dopri5", steps=10, rtol=1e-5)
    with pytest.raises(ValueError, match="carries its steps"):
        fm.sample(FLOW.velocity, X0, fm.SolverSpec("euler", 4), steps=4)
    with pytest.raises(ValueError, match="positive"):
        fm.sample(FLOW.velocity, X0, solver="euler", steps=0)
    with pytest.raises(ValueError, match="no error estimate"):
        fm.sample(FLOW.velocity, X0, solver="euler", rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="Unknown solver 'rk4'"):
        fm.sample(FLOW.velocity, X0, solver="rk4", steps=4)
    with pytest.raises(ValueError, match="needs its path"):
        fm.velocity_field(lambda *a: None, None, prediction="x1")
    with pytest.raises(ValueError, match="not an explicit Runge-Kutta"):
        fm.solvers.calls_per_step(diffrax.Kvaerno5())


def test_classifier_free_guidance_extrapolates_from_the_unconditional_field_in_one_call_per_evaluation():
    # v(x | c) = x + c for labels 0..2 and the null label 3, so the guided field is exact:
    # v = (x + 3) + w ((x + c) - (x + 3)).
    network_calls = [0]

    def apply(params, t, x, cond):
        network_calls[0] += 1
        return x + cond[:, None].astype(x.dtype)

    x = jax.random.normal(jax.random.key(0), (6, 2))
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    for w in (0.0, 1.0, 2.5):
        vf = fm.velocity_field(apply, None, cond=labels, guidance=w, null_label=3)
        expected = x + 3.0 + w * (labels[:, None] - 3.0)
        np.testing.assert_allclose(vf(0.5, x), expected, rtol=1e-6)
    # w = 1 is the conditional field.
    np.testing.assert_allclose(
        fm.velocity_field(apply, None, cond=labels, guidance=1.0, null_label=3)(0.3, x),
        fm.velocity_field(apply, None, cond=labels)(0.3, x),
        rtol=1e-6,
        atol=1e-6,
    )
    network_calls[0] = 0
    fm.velocity_field(apply, None, cond=labels, guidance=2.0, null_label=3)(0.5, x)
    assert network_calls[0] == 1
    with pytest.raises(ValueError, match="null_label"):
        fm.velocity_field(apply, None, cond=labels, guidance=2.0)


def test_the_default_solver_needs_no_argument_and_a_fixed_step_one_says_how_to_give_it_steps():
    default = fm.sample(FLOW.velocity, X0)  # adaptive Dopri5 at DEFAULT_TOL
    np.testing.assert_array_equal(default.x, fm.sample(FLOW.velocity, X0, fm.SolverSpec()).x)
    np.testing.assert_allclose(default.x, FLOW.flow_map(X0), atol=1e-3)
    fix = r"Euler has no error estimate: give it a number of steps \(in Python steps=N, e\.g\. "
    fix += r"sample\(vf, x0, 'euler', steps=100\) or SolverSpec\('euler', steps=100\); on the command line euler:N"
    for call in (
        lambda: fm.sample(FLOW.velocity, X0, "euler"),
        lambda: fm.sample(FLOW.velocity, X0, diffrax.Euler()),
        lambda: fm.SolverSpec("euler"),
        lambda: fm.encode(FLOW.velocity, X0, "euler"),
    ):
        with pytest.raises(ValueError, match=fix):
            call()
    # The fixes the message names work.
    assert int(fm.sample(FLOW.velocity, X0, "euler", steps=100).nfe) == 100
    assert int(fm.sample(FLOW.velocity, X0, fm.SolverSpec("euler", steps=100)).nfe) == 100


def test_swapped_or_ill_shaped_arguments_are_named_at_trace_time():
    key = jax.random.key(0)
    call = r"\(the call is sample\(vf, x0, solver, \.\.\.\)\)"
    with pytest.raises(
        TypeError, match=r"vf must be the field vf\(t, x\) -> dx/dt " + call + "; got an array of shape"
    ):
        fm.sample(X0, FLOW.velocity)
    with pytest.raises(ValueError, match=r"x0 must be batch-first with shape \(batch, \.\.\.\).*got shape \(\)"):
        fm.sample(FLOW.velocity, jnp.float32(1.0))
    with pytest.raises(TypeError, match=r"x0 must hold floating-point values.*got dtype int32"):
        fm.sample(FLOW.velocity, jnp.zeros((4, 2), jnp.int32), "euler", steps=2)
    with pytest.raises(TypeError, match=r"x0 must be a batch-first array.*got a key array of shape \(\)"):
        fm.sample(FLOW.velocity, key)
    with pytest.raises(
        TypeError, match=r"solver must be a solver name.*got int 100 \(for fixed steps pass steps=100\)"
    ):
        fm.sample(FLOW.velocity, X0, 100)
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        fm.sample(FLOW.velocity, X0, t0=0.5, t1=0.5)
    with pytest.raises(ValueError, match=r"t1 must be a scalar time, got shape \(3,\)"):
        fm.sample(FLOW.velocity, X0, t1=jnp.ones(3))
    with pytest.raises(TypeError, match=r"x1 must be a batch-first array \(batch, \.\.\.\) \(the call is encode"):
        fm.encode(FLOW.velocity, None)
    sde = r"\(the call is sample_sde\(key, vf, x0, score, diffusion, \.\.\.\)\)"
    with pytest.raises(TypeError, match=r"key must be a JAX random key, jax.random.key\(seed\) " + sde + "; got int 0"):
        fm.sample_sde(0, FLOW.velocity, X0, fm.paths.CondOT(), 1.0)
    with pytest.raises(TypeError, match=r"key must be a JAX random key.*got the callable"):
        fm.sample_sde(FLOW.velocity, X0, key, fm.paths.CondOT(), 1.0)  # the order before the key came first
    with pytest.raises(TypeError, match=r"x0 must be a batch-first array .*got a key array"):
        fm.sample_sde(key, FLOW.velocity, key, fm.paths.CondOT(), 1.0)
    with pytest.raises(TypeError, match="score must be a function score"):
        fm.sample_sde(key, FLOW.velocity, X0, "condot", 1.0)
    # Under jit the checks read the tracers' shapes and dtypes: valid calls trace, bad ones fail while tracing.
    np.testing.assert_allclose(
        jax.jit(lambda x: fm.sample(FLOW.velocity, x, "euler", steps=3).x)(X0),
        fm.sample(FLOW.velocity, X0, "euler", steps=3).x,
        atol=1e-5,
    )
    with pytest.raises(TypeError, match="x0 must hold floating-point values"):
        jax.jit(lambda x: fm.sample(FLOW.velocity, x, "euler", steps=3).x)(jnp.zeros((4, 2), jnp.int32))


def test_trajectory_shapes_are_as_documented():
    """ts (K,) from t0 to t1 and trajectory (K, batch, ...) with trajectory[0] = x0 and trajectory[-1] = x."""
    for save, k in ((5, 5), (True, 4 + 1)):
        sol = fm.sample(FLOW.velocity, X0, "heun", steps=4, save_trajectory=save)
        assert sol.ts.shape == (k,) and sol.trajectory.shape == (k, *X0.shape)
        assert float(sol.ts[0]) == 0.0 and float(sol.ts[-1]) == 1.0
        np.testing.assert_array_equal(sol.trajectory[0], X0)
        np.testing.assert_allclose(sol.trajectory[-1], sol.x, atol=1e-5)  # t1 read off the dense output
