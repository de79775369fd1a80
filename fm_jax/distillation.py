"""Couplings made by a frozen teacher map: Normalized Flow Matching and reflow pairs.

Couplings made by a teacher map (`TeacherCoupling`), deterministic given the data:

- `nf_coupling`: Normalized Flow Matching (Berthelot et al. 2026): each data point with its
  latent under a frozen normalizing flow f trained on x + eta eps, x0 = f(x1 + eta eps) / sigma_f
  (sigma_f the flow's prior std, so that x0 ~ N(0, I) for a perfect teacher).
- `reflow_coupling`: reflow (rectified flow; Liu et al. 2023): the teacher is a trained flow
  matching field and its ODE the map: backward, x0 = Phi_{1->0}(x1) (each data point with the
  source point the teacher sends to it), or forward, x1 = Phi_{0->1}(x0) (each source point
  with the teacher's sample from it, as in Liu et al.; the data batch is then not used).

The teacher's parameters are held by the coupling and enter the train step as constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from fm_jax import solvers
from fm_jax.couplings import Coupling, check_pairs
from fm_jax.solvers import SolverSpec

__all__ = ["REFLOW_DIRECTIONS", "TEACHER_SIDES", "TeacherCoupling", "nf_coupling", "reflow_coupling"]

TEACHER_SIDES = ("x0", "x1")
REFLOW_DIRECTIONS = ("backward", "forward")


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherCoupling(Coupling):
    """Pairs made by a frozen teacher map `teacher(params, key, x, labels) -> x'`.

    `side="x0"`: x0 = teacher(x1), each data point with its teacher image; `side="x1"`:
    x1 = teacher(x0), each source point with its teacher image. The teacher sees no gradient.
    Compared by identity (it holds arrays).
    """

    teacher: Callable
    params: Any
    side: str = "x0"

    def __post_init__(self) -> None:
        if self.side not in TEACHER_SIDES:
            raise ValueError(f"Unknown teacher side {self.side!r}; choose one of {TEACHER_SIDES}.")

    @property
    def layout(self) -> str:
        """ "examples": the teacher maps each example alone, so a sharded batch stays where it is."""
        return "examples"

    def __call__(
        self, key: jax.Array, x0: jax.Array, x1: jax.Array, labels: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        check_pairs(x0, x1, labels, False)
        params = jax.lax.stop_gradient(self.params)
        if self.side == "x0":
            return jax.lax.stop_gradient(self.teacher(params, key, x1, labels)).astype(x0.dtype), x1, labels
        return x0, jax.lax.stop_gradient(self.teacher(params, key, x0, labels)).astype(x1.dtype), labels


def nf_coupling(forward: Callable, params: Any, noise: float = 0.0, prior_std: float = 1.0) -> TeacherCoupling:
    """NFM pairs: x0 = f(x1 + noise eps) / prior_std, with `forward(params, x) -> (z, logdet)` the flow's
    data-to-latent map.

    Args:
        forward: the flow's data-to-latent map.
        params: the flow's parameters (a pytree), held fixed.
        noise: the std eta of the noise the flow was trained with, >= 0.
        prior_std: the std sigma_f of the flow's prior, > 0.

    Returns:
        The coupling, with side "x0".
    """
    if not noise >= 0.0 or not prior_std > 0.0:
        raise ValueError(f"noise must be >= 0 and prior_std > 0, got {noise} and {prior_std}.")

    def teacher(params: Any, key: jax.Array, x1: jax.Array, labels: jax.Array | None) -> jax.Array:
        z, _ = forward(params, x1 + noise * jax.random.normal(key, x1.shape, x1.dtype))
        return z / prior_std

    return TeacherCoupling(teacher, params, "x0")


def reflow_coupling(
    apply: Callable, params: Any, direction: str = "backward", solver: SolverSpec = SolverSpec()
) -> TeacherCoupling:
    """Reflow pairs from a trained field `apply(params, t, x, cond)`, its ODE integrated `direction`
    ("backward": x0 from x1; "forward": x1 from x0) with `solver`.

    Args:
        apply: the trained field's network.
        params: its parameters (a pytree), held fixed.
        direction: "backward" or "forward".
        solver: how to integrate the teacher's ODE.

    Returns:
        The coupling, with side "x0" (backward) or "x1" (forward).
    """
    if direction not in REFLOW_DIRECTIONS:
        raise ValueError(f"Unknown reflow direction {direction!r}; choose one of {REFLOW_DIRECTIONS}.")
    integrate = solvers.encode if direction == "backward" else solvers.sample

    def teacher(params: Any, key: jax.Array, x: jax.Array, labels: jax.Array | None) -> jax.Array:
        return integrate(solvers.velocity_field(apply, params, cond=labels), x, solver=solver).x

    return TeacherCoupling(teacher, params, "x0" if direction == "backward" else "x1")
