"""Sampling with Diffrax: ODE noise -> data (`sample`), data -> noise (`encode`), SDE sampling
(`sample_sde`) with the score from the velocity, trajectories, NFE.

A vector field is a plain callable `vf(t, x) -> dx/dt` with scalar t and batch-first x;
`velocity_field` builds one from a network `apply(params, t, x, cond)`, converting x1- or
eps-predictions to velocities with the path (see `paths.GaussianPath.convert`).

The whole batch is one Diffrax state, so an adaptive solver shares its steps across the
batch (its error norm is the RMS over every coordinate of the batch). Any explicit Diffrax
solver can be named ("euler", "heun", "midpoint", "ralston", "bosh3", "tsit5", "dopri5",
"dopri8") or passed as an instance.

The number of function evaluations (NFE) is counted, since Diffrax does not report it:
NFE = evaluations at initialisation + evaluations per step x steps taken (accepted and
rejected, from Diffrax's statistics), with the per-step count read off the solver's Butcher
tableau: k N for a k-stage solver and N steps, or 1 + (k - 1) N when the last stage of a step
is the first of the next (FSAL: Bosh3, Tsit5, Dopri5, Dopri8). The tests check this against
a host-side counter of the calls actually executed.

SDE sampling (Albergo & Vanden-Eijnden 2023, Sec. 2.4; Song et al. 2021): for any diffusion
coefficient g(t) >= 0, the SDE

    dx = [v(t, x) + g(t)^2 / 2 * score(t, x)] dt + g(t) dW

has the same marginals p_t as the ODE dx = v dt (its Fokker-Planck equation reduces to the
continuity equation of v), so it may start from p_0 and end at p_1. For a Gaussian path with
an N(0, I) source drawn independently of x1, the score follows from the velocity in closed
form (`score_from_velocity`, `GaussianPath.convert`). The noise comes from a Diffrax
`VirtualBrownianTree`: one key gives one Brownian path, the same whatever the step size, so
runs are reproducible and refine pathwise. The noise is additive (g depends on t only), so
Ito and Stratonovich solvers agree: "euler" (Euler-Maruyama), "heun", "euler_heun", and the
stochastic Runge-Kutta solvers "sea", "sra1", "shark", "spark".
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx

from fm_jax.paths import GaussianPath

__all__ = [
    "SDE_SOLVERS",
    "Solution",
    "calls_per_step",
    "check_adaptive",
    "encode",
    "get_solver",
    "sample",
    "sample_sde",
    "score_from_velocity",
    "velocity_field",
]

INITIAL_STEP = 0.01  # first step of an adaptive solve, as a fraction of |t1 - t0|

VectorField = Callable[[jax.Array, jax.Array], jax.Array]


class Solution(NamedTuple):
    """End states x at t1, the number of vector-field evaluations, and the trajectory when asked.

    `ts` has shape (K,) and `trajectory` (K, *x.shape); with `save_trajectory=True` and an
    adaptive solver, unused slots after the last step are padded with inf.
    """

    x: jax.Array
    nfe: jax.Array
    num_steps: jax.Array
    ts: jax.Array | None = None
    trajectory: jax.Array | None = None


def get_solver(solver: str | diffrax.AbstractSolver) -> diffrax.AbstractSolver:
    """A Diffrax explicit solver from its name (case-insensitive) or an instance."""
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    names = {
        name.lower(): cls
        for name, cls in vars(diffrax).items()
        if isinstance(cls, type) and issubclass(cls, diffrax.AbstractERK) and not name.startswith("Abstract")
    }
    names["euler"] = diffrax.Euler
    if not isinstance(solver, str) or solver.lower() not in names:
        raise ValueError(f"Unknown solver {solver!r}; choose one of {sorted(names)} or pass a diffrax solver.")
    return names[solver.lower()]()


def check_adaptive(solver: str | diffrax.AbstractSolver) -> None:
    """Raise a ValueError unless the solver has an error estimate (can take rtol/atol steps)."""
    solver = get_solver(solver)
    if not isinstance(solver, diffrax.AbstractAdaptiveSolver) or solver.error_order(None) is None:
        name = type(solver).__name__
        raise ValueError(f"{name} has no error estimate: give it a number of steps ({name.lower()}:N, or "
                         "--steps N), or use an adaptive solver such as 'dopri5'.")


def velocity_field(
    apply: Callable,
    params: Any,
    cond: Any = None,
    path: GaussianPath | None = None,
    prediction: str = "velocity",
    guidance: float | None = None,
    null_label: int | None = None,
) -> VectorField:
    """vf(t, x) for a network `apply(params, t, x, cond)` trained to predict `prediction`.

    The conversions to a velocity are singular where the path cannot tell the prediction
    apart from x_t (see `GaussianPath.convert`): an eps-network at t = 0 where b = 0, an
    x1-network at t = 1 when s = 0 (e.g. `CondOT(sigma_min=0)`). Sample those on
    [delta, 1 - delta] with the t0 and t1 of `sample`.

    Classifier-free guidance (Ho & Salimans 2022), for a network trained with label dropout:
    `guidance=w` gives v = v(x | null) + w (v(x | cond) - v(x | null)), with `null_label` the
    network's unconditional label; w = 1 is the conditional field, w = 0 the unconditional
    one. Both fields come from one network call on the batch stacked twice, so one vf
    evaluation (one NFE) costs two examples' worth of network per point.
    """
    if prediction != "velocity" and path is None:
        raise ValueError(f"A {prediction!r}-prediction network needs its path to become a velocity field.")
    if guidance is not None and (cond is None or null_label is None):
        raise ValueError("guidance needs the class labels (cond) and the network's null_label.")

    def field(tb, x, labels):
        out = apply(params, tb, x, labels)
        if prediction == "velocity":
            return out
        return path.convert(out, tb, x, src=prediction, dst="velocity")

    def vf(t, x):
        tb = jnp.full((x.shape[0],), t, dtype=x.dtype)
        if guidance is None:
            return field(tb, x, cond)
        labels = jnp.broadcast_to(jnp.asarray(cond), (x.shape[0],))
        both = field(
            jnp.concatenate([tb, tb]),
            jnp.concatenate([x, x]),
            jnp.concatenate([labels, jnp.full_like(labels, null_label)]),
        )
        v_cond, v_null = both[: x.shape[0]], both[x.shape[0] :]
        return v_null + guidance * (v_cond - v_null)

    return vf


def calls_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """(evaluations at initialisation, evaluations per step) of an explicit Diffrax solver."""
    if isinstance(solver, diffrax.Euler):
        return 0, 1
    if isinstance(solver, diffrax.AbstractERK):
        tableau = solver.tableau
        stages = len(tableau.c) + 1
        # FSAL: the last stage of a step is the first of the next, evaluated once at t0.
        return (1, stages - 1) if tableau.fsal else (0, stages)
    raise ValueError(f"{type(solver).__name__} is not an explicit Runge-Kutta solver; NFE cannot be counted.")


def sample(
    vf: VectorField,
    x0: jax.Array,
    solver: str | diffrax.AbstractSolver = "euler",
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    save_trajectory: bool | int = False,
    max_steps: int = 16384,
) -> Solution:
    """Integrate dx/dt = vf(t, x) from x(t0) = x0 to t1; x0 may be a pytree of arrays.

    Give either `steps` (fixed step size (t1 - t0) / steps) or `rtol` and `atol` (adaptive,
    PID step-size control). `save_trajectory`: an int K saves K equally spaced times from t0
    to t1 (the dense output of the solver in between steps); True saves t0 and the state
    after every step (exactly steps + 1 states with fixed steps; padded with inf up to
    max_steps + 1 when adaptive).
    """
    solver = get_solver(solver)
    init_calls, step_calls = calls_per_step(solver)  # raises before the solve for solvers it cannot count
    if (steps is None) == (rtol is None and atol is None):
        raise ValueError("Give either steps=N (fixed step) or rtol= and atol= (adaptive), not both or neither.")
    if steps is not None:
        if int(steps) < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}.")
        controller, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / int(steps)
        max_steps = int(steps)  # so that a saved trajectory has exactly steps + 1 states
    else:
        check_adaptive(solver)
        rtol = 1e-5 if rtol is None else rtol
        atol = 1e-5 if atol is None else atol
        # An explicit first step (PID control grows it up to 10x a step): Diffrax's automatic
        # initial step search would add evaluations that the NFE count cannot see.
        controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), INITIAL_STEP * (t1 - t0)

    term = diffrax.ODETerm(lambda t, y, args: vf(t, y))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        dt0,
        x0,
        stepsize_controller=controller,
        saveat=_saveat(save_trajectory, t0, t1),
        max_steps=max_steps,
    )
    return _solution(sol, init_calls, step_calls)


def _saveat(save_trajectory: bool | int, t0: float, t1: float) -> diffrax.SaveAt:
    """The end state, and the trajectory `save_trajectory` asks for (see `sample`)."""
    subs = [diffrax.SubSaveAt(t1=True)]
    if save_trajectory is True:
        subs.append(diffrax.SubSaveAt(t0=True, steps=True))
    elif save_trajectory:
        subs.append(diffrax.SubSaveAt(ts=jnp.linspace(t0, t1, int(save_trajectory))))
    return diffrax.SaveAt(subs=subs)


def _solution(sol: diffrax.Solution, init_calls: int, step_calls: int) -> Solution:
    num_steps = sol.stats["num_steps"]
    nfe = init_calls + step_calls * num_steps
    x = jax.tree.map(lambda y: y[-1], sol.ys[0])
    if len(sol.ys) == 1:
        return Solution(x=x, nfe=nfe, num_steps=num_steps)
    return Solution(x=x, nfe=nfe, num_steps=num_steps, ts=sol.ts[1], trajectory=sol.ys[1])


def encode(vf: VectorField, x1: jax.Array, **kwargs) -> Solution:
    """Integrate backward from data at t = 1 to the source at t = 0 (the inverse flow map)."""
    kwargs.setdefault("t0", 1.0)
    kwargs.setdefault("t1", 0.0)
    return sample(vf, x1, **kwargs)


BROWNIAN_TOL = 2.0**-12  # resolution of the Brownian tree, as a fraction of [t0, t1]

# Diffrax solvers valid for additive noise, by name; the SRK ones use space-time Levy area.
SDE_SOLVERS = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "euler_heun": diffrax.EulerHeun,
    "sea": diffrax.SEA,
    "sra1": diffrax.SRA1,
    "shark": diffrax.ShARK,
    "spark": diffrax.SPaRK,
}


def score_from_velocity(vf: VectorField, path: GaussianPath) -> VectorField:
    """score(t, x) = grad log p_t(x) from the marginal velocity of `path` (`GaussianPath.convert`).

    Exact for a Gaussian path with an N(0, I) source drawn independently of x1 (I-CFM, FM,
    SI); not for minibatch-OT couplings, which tie x0 to x1. Singular where s(t) = 0 (t = 1
    for `CondOT(sigma_min=0)`): use a diffusion that vanishes there, e.g. g(t) = c s(t).
    """

    def score(t, x):
        tb = jnp.full((x.shape[0],), t, dtype=x.dtype)
        return path.convert(vf(t, x), tb, x, src="velocity", dst="score")

    return score


def _sde_drift_calls(solver: diffrax.AbstractSolver) -> int:
    """Evaluations of the drift per step of an SDE solver."""
    if isinstance(solver, diffrax.AbstractSRK):
        tableau = solver.tableau
        ignored = 0 if tableau.ignore_stage_f is None else int(sum(tableau.ignore_stage_f))
        return len(tableau.b_sol) - ignored
    if isinstance(solver, (diffrax.Euler, diffrax.EulerHeun)):
        return 1
    return calls_per_step(solver)[1]


def sample_sde(
    vf: VectorField,
    x0: jax.Array,
    key: jax.Array,
    score: VectorField | GaussianPath,
    diffusion: float | Callable[[jax.Array], jax.Array],
    solver: str = "euler",
    steps: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    save_trajectory: bool | int = False,
) -> Solution:
    """Integrate dx = [vf + g^2 / 2 score] dt + g dW from x(t0) = x0 to t1 > t0 in `steps` fixed steps.

    `diffusion` is g: a constant or a function of scalar t. `score` is grad log p_t: a
    function `score(t, x)`, or a `GaussianPath`, whose score is converted from the same
    velocity evaluation (`score_from_velocity`; one network call per drift evaluation).
    Where g(t) = 0 the score term is dropped, computed at a safe time and discarded, so that
    neither values nor gradients see a singular score there: a g that vanishes where the score
    is singular, such as g(t) = c * path.noise_scale(t)[0] for a path with s(1) = 0, samples
    up to t1 = 1 with every solver. `key` picks the Brownian path, the same one at every
    number of steps. `nfe` counts drift evaluations. `save_trajectory` as in `sample`.
    """
    if solver not in SDE_SOLVERS:
        raise ValueError(f"Unknown SDE solver {solver!r}; choose one of {sorted(SDE_SOLVERS)}.")
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}.")
    if not t0 < t1:
        raise ValueError(f"sample_sde runs forward in time: need t0 < t1, got t0={t0}, t1={t1}.")
    method = SDE_SOLVERS[solver]()
    g = diffusion if callable(diffusion) else (lambda t: jnp.asarray(diffusion, x0.dtype))
    dt = (t1 - t0) / int(steps)
    safe_t = 0.5 * (t0 + t1)

    def drift(t, x, args):
        gt, v = g(t), vf(t, x)
        off = gt == 0
        ts = jnp.where(off, safe_t, t)  # where the score term is dropped, evaluate it somewhere finite
        if isinstance(score, GaussianPath):
            s = score.convert(v, jnp.full((x.shape[0],), ts, x.dtype), x, src="velocity", dst="score")
        else:
            s = score(ts, x)
        return jnp.where(off, v, v + 0.5 * gt**2 * s)

    def noise(t, x, args):
        return lx.DiagonalLinearOperator(jnp.broadcast_to(jnp.asarray(g(t), x.dtype), x.shape))

    levy = diffrax.SpaceTimeLevyArea if isinstance(method, diffrax.AbstractSRK) else diffrax.BrownianIncrement
    # Increments are Brownian in law at any query time; a tolerance fixed relative to [t0, t1]
    # (finer than the step) makes one key one path at every step count, refining pathwise.
    tol = min((t1 - t0) * BROWNIAN_TOL, dt / 2)
    brownian = diffrax.VirtualBrownianTree(t0, t1, tol=tol, shape=jax.ShapeDtypeStruct(x0.shape, x0.dtype),
                                           key=key, levy_area=levy)
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(noise, brownian))
    sol = diffrax.diffeqsolve(terms, method, t0, t1, dt, x0, saveat=_saveat(save_trajectory, t0, t1),
                              max_steps=int(steps))
    return _solution(sol, 0, _sde_drift_calls(method))
