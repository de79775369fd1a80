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

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx

from fm_jax.checks import check_batch_array, check_callable, check_key, describe
from fm_jax.paths import GaussianPath
from fm_jax.registry import Registry

__all__ = [
    "DEFAULT_TOL",
    "ODE_SOLVERS",
    "SDE_SOLVERS",
    "Solution",
    "SolverSpec",
    "calls_per_step",
    "check_adaptive",
    "encode",
    "get_solver",
    "is_adaptive",
    "sample",
    "sample_sde",
    "score_from_velocity",
    "velocity_field",
]

INITIAL_STEP = 0.01  # first step of an adaptive solve, as a fraction of |t1 - t0|
DEFAULT_TOL = 1e-5  # rtol = atol of every adaptive solve that is given no tolerances (sampling, likelihood, eval)

VectorField = Callable[[jax.Array, jax.Array], jax.Array]


class Solution(NamedTuple):
    """End states x at t1, the number of vector-field evaluations, and the trajectory when asked.

    - `x`: the state at t1, of the shape of x0, (batch, ...) (a pytree like x0 for a pytree state).
    - `nfe`: the vector-field evaluations made (a scalar array); `num_steps` the steps taken.
    - `ts`: the K saved times, shape (K,), from t0 to t1; None unless `save_trajectory`.
    - `trajectory`: the states at those times, shape (K, batch, ...): `trajectory[k]` is the
      whole batch at `ts[k]`, `trajectory[0]` is x0 and `trajectory[-1]` is x (a pytree of such
      arrays for a pytree state); None unless `save_trajectory`.

    K is `save_trajectory` when it is an int (equally spaced times, t0 and t1 included); with
    `save_trajectory=True` it is steps + 1 for fixed steps, and max_steps + 1 for an adaptive
    solve, whose unused slots after the last step are padded with inf (in ts and trajectory).
    """

    x: jax.Array
    nfe: jax.Array
    num_steps: jax.Array
    ts: jax.Array | None = None
    trajectory: jax.Array | None = None


# The explicit Diffrax solvers by name; any other explicit Runge-Kutta solver can be passed as an instance.
ODE_SOLVERS: Registry[type[diffrax.AbstractSolver]] = Registry(
    "solver",
    {
        "euler": diffrax.Euler,
        "heun": diffrax.Heun,
        "midpoint": diffrax.Midpoint,
        "ralston": diffrax.Ralston,
        "bosh3": diffrax.Bosh3,
        "tsit5": diffrax.Tsit5,
        "dopri5": diffrax.Dopri5,
        "dopri8": diffrax.Dopri8,
    },
    fold_case=True,
)


def get_solver(solver: str | diffrax.AbstractSolver) -> diffrax.AbstractSolver:
    """A Diffrax explicit solver from its name (case-insensitive, `ODE_SOLVERS`) or an instance."""
    if isinstance(solver, diffrax.AbstractSolver):
        return solver
    return ODE_SOLVERS[solver]()


def is_adaptive(solver: str | diffrax.AbstractSolver) -> bool:
    """Whether the solver has an error estimate (can take rtol/atol steps)."""
    solver = get_solver(solver)
    return isinstance(solver, diffrax.AbstractAdaptiveSolver) and solver.error_order(None) is not None


def check_adaptive(solver: str | diffrax.AbstractSolver) -> None:
    """Raise a ValueError unless the solver has an error estimate (can take rtol/atol steps);
    the message says how to give it fixed steps in Python and on the command line."""
    solver = get_solver(solver)
    if not is_adaptive(solver):
        name = type(solver).__name__
        key = name.lower()
        raise ValueError(
            f"{name} has no error estimate: give it a number of steps (in Python steps=N, e.g. "
            f"sample(vf, x0, {key!r}, steps=100) or SolverSpec({key!r}, steps=100); on the command line "
            f"{key}:N or --steps N), or use an adaptive solver such as 'dopri5' (the default)."
        )


def _check_solver_arg(solver: Any, call: str) -> None:
    """A TypeError unless `solver` is a name, a Diffrax solver or a `SolverSpec`."""
    if not isinstance(solver, (str, diffrax.AbstractSolver, SolverSpec)):
        hint = (
            f" (for fixed steps pass steps={solver})"
            if isinstance(solver, int) and not isinstance(solver, bool)
            else ""
        )
        raise TypeError(
            f"solver must be a solver name such as 'dopri5' or 'euler', a SolverSpec or a Diffrax solver "
            f"(the call is {call}); got {describe(solver)}{hint}."
        )


def _check_state(x0: Any, name: str, call: str) -> None:
    """A TypeError/ValueError unless `x0` is a batch-first float array, or a pytree of them."""
    leaves = jax.tree.leaves(x0)
    if not leaves:
        raise TypeError(f"{name} must be a batch-first array (batch, ...) (the call is {call}); got {describe(x0)}.")
    for leaf in leaves:
        check_batch_array(leaf, name, call)


def _check_times(t0: Any, t1: Any) -> None:
    """A ValueError unless t0 and t1 are scalars, and different ones where they are known."""
    for name, t in (("t0", t0), ("t1", t1)):
        if jnp.ndim(t) != 0:
            raise ValueError(f"{name} must be a scalar time, got shape {jnp.shape(t)}.")
    if isinstance(t0, (int, float)) and isinstance(t1, (int, float)) and t0 == t1:
        raise ValueError(f"t0 and t1 must differ (the flow runs from t0 to t1), got t0 = t1 = {t0}.")


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """How to integrate a flow: a solver name with fixed `steps`, or adaptive at `rtol`/`atol`.

    Written as text `NAME` (adaptive) or `NAME:STEPS` (fixed), e.g. "dopri5" or "euler:100";
    `str(spec)` gives that text back, the key under which evaluations report a solver. The
    defaults live here and only here: Dopri5, adaptive at `DEFAULT_TOL`. `sde=True` names an
    SDE solver (`SDE_SOLVERS`, fixed steps only) instead of an ODE one (`ODE_SOLVERS`).
    Frozen and hashable, so that a jitted function may close over it.
    """

    name: str = "dopri5"
    steps: int | None = None
    rtol: float = DEFAULT_TOL
    atol: float = DEFAULT_TOL
    sde: bool = False

    def __post_init__(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1):
            raise ValueError(f"Bad solver {self.name}:{self.steps}: the number of steps must be a positive integer.")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"Solver tolerances must be positive, got rtol={self.rtol}, atol={self.atol}.")
        if self.sde:
            SDE_SOLVERS[self.name]
            if self.steps is None:
                raise ValueError(f"SDE sampling runs in fixed steps: give it steps ({self.name}:100, or --steps 100).")
        elif self.steps is None:
            check_adaptive(self.name)
        else:
            get_solver(self.name)

    @classmethod
    def parse(cls, text: str, rtol: float | None = None, atol: float | None = None, sde: bool = False) -> SolverSpec:
        """'dopri5' -> adaptive Dopri5; 'euler:100' -> Euler in 100 steps; tolerances default to `DEFAULT_TOL`.

        Args:
            text: `NAME` or `NAME:STEPS`.
            rtol, atol: the tolerances of an adaptive solve (`DEFAULT_TOL` when None).
            sde: whether NAME is an SDE solver.

        Returns:
            The spec; a ValueError for text that is neither form or names an unknown solver.
        """
        name, sep, steps = str(text).partition(":")
        if sep and not steps.isdigit():
            raise ValueError(f"Bad solver {text!r}: write NAME for adaptive steps or NAME:STEPS, e.g. euler:100.")
        return cls(
            name,
            int(steps) if sep else None,
            DEFAULT_TOL if rtol is None else rtol,
            DEFAULT_TOL if atol is None else atol,
            sde,
        )

    @property
    def adaptive(self) -> bool:
        """Whether the solve is adaptive (no fixed number of steps)."""
        return self.steps is None

    def __str__(self) -> str:
        return self.name if self.steps is None else f"{self.name}:{self.steps}"

    @property
    def tag(self) -> str:
        """A file-name tag: 'euler_100steps', 'dopri5_rtol1e-05_atol1e-05'."""
        if self.steps is not None:
            return f"{self.name}_{self.steps}steps"
        return f"{self.name}_rtol{self.rtol:g}_atol{self.atol:g}"


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

    Args:
        apply: the network, `apply(params, t, x, cond)` with t of shape (batch,).
        params: its parameters (a pytree).
        cond: the network's conditioning input (e.g. class labels), or None.
        path: the path, needed to convert a prediction other than "velocity".
        prediction: what the network predicts: "velocity", "x1", "eps" or "score".
        guidance: the classifier-free guidance weight w, or None for no guidance.
        null_label: the network's unconditional label, needed with guidance.

    Returns:
        vf(t, x) -> dx/dt for scalar t and batch-first x.
    """
    if prediction != "velocity" and path is None:
        raise ValueError(f"A {prediction!r}-prediction network needs its path to become a velocity field.")
    if guidance is not None and (cond is None or null_label is None):
        raise ValueError("guidance needs the class labels (cond) and the network's null_label.")

    def field(tb: jax.Array, x: jax.Array, labels: Any) -> jax.Array:
        out = apply(params, tb, x, labels)
        if prediction == "velocity":
            return out
        return path.convert(out, tb, x, src=prediction, dst="velocity")  # type: ignore[union-attr]  # path checked above

    def vf(t: jax.Array, x: jax.Array) -> jax.Array:
        tb = jnp.full((x.shape[0],), t, dtype=x.dtype)
        if guidance is None:
            return field(tb, x, cond)
        labels = jnp.broadcast_to(jnp.asarray(cond), (x.shape[0],))
        both = field(
            jnp.concatenate([tb, tb]),
            jnp.concatenate([x, x]),
            jnp.concatenate([labels, jnp.full_like(labels, null_label)]),  # type: ignore[arg-type]  # checked above
        )
        v_cond, v_null = both[: x.shape[0]], both[x.shape[0] :]
        return v_null + guidance * (v_cond - v_null)

    return vf


def calls_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """(evaluations at initialisation, evaluations per step) of an explicit Diffrax solver."""
    if isinstance(solver, diffrax.Euler):
        return 0, 1
    if isinstance(solver, diffrax.AbstractERK):
        # Diffrax types the tableau of any Runge-Kutta solver as ButcherTableau | MultiButcherTableau;
        # an explicit (ERK) solver has a single ButcherTableau.
        tableau = solver.tableau
        stages = len(tableau.c) + 1  # type: ignore[union-attr]
        # FSAL: the last stage of a step is the first of the next, evaluated once at t0.
        return (1, stages - 1) if tableau.fsal else (0, stages)  # type: ignore[union-attr]
    raise ValueError(f"{type(solver).__name__} is not an explicit Runge-Kutta solver; NFE cannot be counted.")


def sample(
    vf: VectorField | Callable[[jax.Array, Any], Any],
    x0: Any,
    solver: str | diffrax.AbstractSolver | SolverSpec = "dopri5",
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    save_trajectory: bool | int = False,
    max_steps: int = 16384,
) -> Solution:
    """Integrate dx/dt = vf(t, x) from x(t0) = x0 to t1; x0 may be a pytree of arrays.

    `solver` is a name (`ODE_SOLVERS`), a Diffrax solver, or a `SolverSpec`, which carries
    the steps or tolerances itself. Otherwise give `steps` (fixed step size (t1 - t0) /
    steps) or tolerances (adaptive, PID step-size control; `DEFAULT_TOL` for one not given);
    a name alone is solved adaptively at `DEFAULT_TOL`, and no solver at all is Dopri5 there.
    `save_trajectory`: an int K saves K equally spaced times from t0 to t1 (the dense output of
    the solver in between steps); True saves t0 and the state after every step (exactly
    steps + 1 states with fixed steps; padded with inf up to max_steps + 1 when adaptive).
    The saved times are `Solution.ts`, shape (K,), and the states `Solution.trajectory`, shape
    (K, batch, ...): `trajectory[k]` is the whole batch at time `ts[k]`.

    Args:
        vf: the field, `vf(t, x)` on the state (an array, or the pytree x0 is).
        x0: the state at t0, a batch-first float array (batch, ...) or a pytree of them.
        solver, steps, rtol, atol: the solver, as above.
        t0, t1: the start and end times (t1 < t0 integrates backward).
        save_trajectory: False, True or a number of times, as above.
        max_steps: the most steps an adaptive solve may take.

    Returns:
        The `Solution`: the state at t1 (the shape of x0), the NFE, the steps taken and, when
        asked, the K saved times `ts` (K,) and states `trajectory` (K, batch, ...).
    """
    call = "sample(vf, x0, solver, ...)"
    check_callable(vf, "vf", "the field vf(t, x) -> dx/dt", call)
    _check_state(x0, "x0", call)
    _check_solver_arg(solver, call)
    _check_times(t0, t1)
    if isinstance(solver, SolverSpec):
        if steps is not None or rtol is not None or atol is not None:
            raise ValueError("A SolverSpec carries its steps and tolerances: pass no steps=, rtol= or atol= with it.")
        # mypy checks a tuple assignment item by item, as if solver were already the name; Python
        # evaluates the whole right-hand side first.
        solver, steps, rtol, atol = solver.name, solver.steps, solver.rtol, solver.atol  # type: ignore[attr-defined]
        rtol, atol = (None, None) if steps is not None else (rtol, atol)
    solver = get_solver(solver)
    init_calls, step_calls = calls_per_step(solver)  # raises before the solve for solvers it cannot count
    if steps is not None and (rtol is not None or atol is not None):
        raise ValueError("Give either steps=N (fixed step) or rtol= and atol= (adaptive), not both.")
    controller: diffrax.AbstractStepSizeController
    if steps is not None:
        if int(steps) < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}.")
        controller, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / int(steps)
        max_steps = int(steps)  # so that a saved trajectory has exactly steps + 1 states
    else:
        check_adaptive(solver)
        rtol = DEFAULT_TOL if rtol is None else rtol
        atol = DEFAULT_TOL if atol is None else atol
        # An explicit first step (PID control grows it up to 10x a step): Diffrax's automatic
        # initial step search would add evaluations that the NFE count cannot see.
        controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), INITIAL_STEP * (t1 - t0)

    # Diffrax types t as RealScalarLike (any real scalar); diffeqsolve passes a scalar array.
    term = diffrax.ODETerm(lambda t, y, args: vf(t, y))  # type: ignore[arg-type]
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
    # Diffrax types ys and ts as optional (None where SaveAt saves nothing); `_saveat` always saves t1.
    num_steps = sol.stats["num_steps"]
    nfe = init_calls + step_calls * num_steps
    x = jax.tree.map(lambda y: y[-1], sol.ys[0])  # type: ignore[index]
    if len(sol.ys) == 1:  # type: ignore[arg-type]
        return Solution(x=x, nfe=nfe, num_steps=num_steps)
    return Solution(x=x, nfe=nfe, num_steps=num_steps, ts=sol.ts[1], trajectory=sol.ys[1])  # type: ignore[index]


def encode(
    vf: VectorField | Callable[[jax.Array, Any], Any],
    x1: Any,
    solver: str | diffrax.AbstractSolver | SolverSpec = "dopri5",
    **kwargs: Any,
) -> Solution:
    """Integrate backward from data at t = 1 to the source at t = 0 (the inverse flow map).

    Args:
        vf: the field, as in `sample`.
        x1: the data points, batch-first (or a pytree of them).
        solver: as in `sample`: a name, a Diffrax solver or a `SolverSpec`.
        **kwargs: the other options of `sample`; t0 defaults to 1 and t1 to 0.

    Returns:
        The `Solution` at t1 (the source end by default).
    """
    call = "encode(vf, x1, solver, ...)"
    check_callable(vf, "vf", "the field vf(t, x) -> dx/dt", call)
    _check_state(x1, "x1", call)
    kwargs.setdefault("t0", 1.0)
    kwargs.setdefault("t1", 0.0)
    return sample(vf, x1, solver, **kwargs)


BROWNIAN_TOL = 2.0**-12  # resolution of the Brownian tree, as a fraction of [t0, t1]

# Diffrax solvers valid for additive noise, by name; the SRK ones use space-time Levy area.
SDE_SOLVERS: Registry[type[diffrax.AbstractSolver]] = Registry(
    "SDE solver",
    {
        "euler": diffrax.Euler,
        "heun": diffrax.Heun,
        "euler_heun": diffrax.EulerHeun,
        "sea": diffrax.SEA,
        "sra1": diffrax.SRA1,
        "shark": diffrax.ShARK,
        "spark": diffrax.SPaRK,
    },
)


def score_from_velocity(vf: VectorField, path: GaussianPath) -> VectorField:
    """score(t, x) = grad log p_t(x) from the marginal velocity of `path` (`GaussianPath.convert`).

    Exact for a Gaussian path with an N(0, I) source drawn independently of x1 (I-CFM, FM,
    SI); not for minibatch-OT couplings, which tie x0 to x1. Singular where s(t) = 0 (t = 1
    for `CondOT(sigma_min=0)`): use a diffusion that vanishes there, e.g. g(t) = c s(t).
    """

    def score(t: jax.Array, x: jax.Array) -> jax.Array:
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
    key: jax.Array,
    vf: VectorField,
    x0: jax.Array,
    score: VectorField | GaussianPath,
    diffusion: float | Callable[[jax.Array], jax.Array],
    solver: str | SolverSpec = "euler",
    steps: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    save_trajectory: bool | int = False,
) -> Solution:
    """Integrate dx = [vf + g^2 / 2 score] dt + g dW from x(t0) = x0 to t1 > t0 in `steps` fixed steps.

    `key` picks the Brownian path (first, as in every function that draws). `solver` is a name of `SDE_SOLVERS`, or a `SolverSpec` with its steps ("euler:100").

    `diffusion` is g: a constant or a function of scalar t. `score` is grad log p_t: a
    function `score(t, x)`, or a `GaussianPath`, whose score is converted from the same
    velocity evaluation (`score_from_velocity`; one network call per drift evaluation).
    Where g(t) = 0 the score term is dropped, computed at a safe time and discarded, so that
    neither values nor gradients see a singular score there: a g that vanishes where the score
    is singular, such as g(t) = c * path.noise_scale(t)[0] for a path with s(1) = 0, samples
    up to t1 = 1 with every solver. One key gives one Brownian path, the same at every number
    of steps. `nfe` counts drift evaluations. `save_trajectory` as in `sample`.
    """
    call = "sample_sde(key, vf, x0, score, diffusion, ...)"
    check_key(key, "key", call)
    check_callable(vf, "vf", "the field vf(t, x) -> dx/dt", call)
    check_batch_array(x0, "x0", call)
    if not (isinstance(score, GaussianPath) or callable(score)):
        raise TypeError(
            f"score must be a function score(t, x) or a GaussianPath (the call is {call}); got {describe(score)}."
        )
    if not (callable(diffusion) or jnp.ndim(diffusion) == 0):
        raise TypeError(
            f"diffusion must be a constant or a function g(t) (the call is {call}); got {describe(diffusion)}."
        )
    if isinstance(solver, SolverSpec):
        if solver.adaptive:
            raise ValueError(f"SDE sampling runs in fixed steps: give it steps ({solver.name}:100, or --steps 100).")
        solver, steps = solver.name, solver.steps  # type: ignore[attr-defined]  # as in `sample`
    method = SDE_SOLVERS[solver]()
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}.")
    if not t0 < t1:
        raise ValueError(f"sample_sde runs forward in time: need t0 < t1, got t0={t0}, t1={t1}.")
    g = diffusion if callable(diffusion) else (lambda t: jnp.asarray(diffusion, x0.dtype))
    dt = (t1 - t0) / int(steps)
    safe_t = 0.5 * (t0 + t1)

    def drift(t: jax.Array, x: jax.Array, args: Any) -> jax.Array:
        gt, v = g(t), vf(t, x)
        off = gt == 0
        ts = jnp.where(off, safe_t, t)  # where the score term is dropped, evaluate it somewhere finite
        if isinstance(score, GaussianPath):
            s = score.convert(v, jnp.full((x.shape[0],), ts, x.dtype), x, src="velocity", dst="score")
        else:
            s = score(ts, x)
        return jnp.where(off, v, v + 0.5 * gt**2 * s)

    def noise(t: jax.Array, x: jax.Array, args: Any) -> lx.DiagonalLinearOperator:
        return lx.DiagonalLinearOperator(jnp.broadcast_to(jnp.asarray(g(t), x.dtype), x.shape))

    levy = diffrax.SpaceTimeLevyArea if isinstance(method, diffrax.AbstractSRK) else diffrax.BrownianIncrement
    # Increments are Brownian in law at any query time; a tolerance fixed relative to [t0, t1]
    # (finer than the step) makes one key one path at every step count, refining pathwise.
    tol = min((t1 - t0) * BROWNIAN_TOL, dt / 2)
    brownian = diffrax.VirtualBrownianTree(
        t0, t1, tol=tol, shape=jax.ShapeDtypeStruct(x0.shape, x0.dtype), key=key, levy_area=levy
    )
    # drift and noise take t as a scalar array, which diffeqsolve passes (Diffrax types it RealScalarLike).
    terms: diffrax.MultiTerm[tuple[diffrax.ODETerm, diffrax.ControlTerm]] = diffrax.MultiTerm(
        diffrax.ODETerm(drift),  # type: ignore[arg-type]
        diffrax.ControlTerm(noise, brownian),  # type: ignore[arg-type]
    )
    sol = diffrax.diffeqsolve(
        terms, method, t0, t1, dt, x0, saveat=_saveat(save_trajectory, t0, t1), max_steps=int(steps)
    )
    return _solution(sol, 0, _sde_drift_calls(method))
