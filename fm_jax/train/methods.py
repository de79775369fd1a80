"""The published flow-matching methods as (path, coupling) pairs, selectable by name.

| method  | path                      | coupling                 | source      | paper |
| ------- | ------------------------- | ------------------------ | ----------- | ----- |
| "icfm"  | ICFM(sigma)               | Independent              | any         | Tong et al. 2024 |
| "otcfm" | ICFM(sigma)               | ExactOT                  | any         | Tong et al. 2024 |
| "sbcfm" | BrownianBridge(sigma)     | SchrodingerBridge(sigma) | any         | Tong et al. 2024 |
| "fm"    | CondOT(sigma_min = sigma) | Independent              | N(0, I) only| Lipman et al. 2023 |
| "fm_vp" | VPDiffusion()             | Independent              | N(0, I) only| Lipman et al. 2023 (FM, diffusion path) |
| "si"    | Trigonometric()           | Independent              | any         | Albergo & Vanden-Eijnden 2023 |
| "fastode" | ICFM(sigma)             | learned encoder q(x0|x1) | N(0, I) only| Lee, Kim & Ye 2023 |
| "nfm"   | ICFM(sigma)               | normalizing-flow teacher | N(0, I) only| Berthelot et al. 2026 |
| "reflow"| ICFM(sigma)               | flow-matching teacher's ODE | N(0, I) only| Liu et al. 2023 |
| "flow"  | -                         | -                        | -           | the NFM teacher: maximum likelihood |

"fastode" needs the network's `encode` (`fm_jax.models.CoupledField`); "nfm" and "reflow" a
`TeacherCoupling` (`fm_jax.train.teachers`); "flow" trains a normalizing flow, not a field.
"""

from __future__ import annotations

from typing import Callable

from fm_jax import couplings, paths
from fm_jax.losses import CFMLoss, FlowNLLLoss, cfm_loss, fast_ode_loss, flow_nll_loss

__all__ = ["GAUSSIAN_SOURCE_ONLY", "METHODS", "TEACHER_METHODS", "build_loss", "check_method"]

METHODS = ("icfm", "otcfm", "sbcfm", "fm", "fm_vp", "si", "fastode", "nfm", "reflow", "flow")
GAUSSIAN_SOURCE_ONLY = ("fm", "fm_vp", "fastode", "nfm", "reflow")
TEACHER_METHODS = ("nfm", "reflow")


def check_method(method: str, source: str = "normal") -> None:
    """A known method name, and a source it can start from."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    if method in GAUSSIAN_SOURCE_ONLY and source != "normal":
        raise ValueError(f"Method {method!r} needs the 'normal' source (got {source!r}); use 'icfm' or 'otcfm' instead.")


def build_loss(
    method: str,
    sigma: float,
    source: str = "normal",
    target: str = "velocity",
    ot_solver: str = "hungarian",
    label_dropout: float = 0.0,
    null_label: int | None = None,
    *,
    encode: Callable | None = None,
    beta: float = 1.0,
    teacher: couplings.TeacherCoupling | None = None,
    flow_noise: float = 0.0,
) -> CFMLoss | FlowNLLLoss:
    """The loss of a named method; FM's conditional paths assume a standard normal source.

    `ot_solver` picks OT-CFM's exact solver (`couplings.EXACT_SOLVERS`); `label_dropout` and
    `null_label` train a class-conditional network for classifier-free guidance (`cfm_loss`).
    "fastode" takes the network's `encode` and `beta`, "nfm" / "reflow" the `teacher`
    coupling, "flow" its training noise `flow_noise`.
    """
    extra = {"target": target, "label_dropout": label_dropout, "null_label": null_label}
    check_method(method, source)
    if method == "flow":
        return flow_nll_loss(flow_noise)
    if method == "fastode":
        if encode is None:
            raise ValueError("Method 'fastode' needs the network's encode(params, x1, cond) (fm_jax.models.CoupledField).")
        return fast_ode_loss(paths.ICFM(sigma), encode, beta, label_dropout=label_dropout, null_label=null_label)
    if method in TEACHER_METHODS:
        if not isinstance(teacher, couplings.TeacherCoupling):
            raise ValueError(f"Method {method!r} needs its teacher coupling (fm_jax.train.teachers.teacher_coupling).")
        return cfm_loss(paths.ICFM(sigma), teacher, **extra)
    if method == "icfm":
        return cfm_loss(paths.ICFM(sigma), couplings.Independent(), **extra)
    if method == "otcfm":
        return cfm_loss(paths.ICFM(sigma), couplings.ExactOT(solver=ot_solver), **extra)
    if method == "sbcfm":
        return cfm_loss(paths.BrownianBridge(sigma), couplings.SchrodingerBridge(sigma), **extra)
    if method == "fm":
        return cfm_loss(paths.CondOT(sigma_min=sigma), couplings.Independent(), **extra)
    if method == "fm_vp":
        return cfm_loss(paths.VPDiffusion(), couplings.Independent(), **extra)
    return cfm_loss(paths.Trigonometric(), couplings.Independent(), **extra)
