"""The published flow-matching methods as (path, coupling) pairs, selectable by name.

| method  | path                      | coupling                 | source      | paper |
| ------- | ------------------------- | ------------------------ | ----------- | ----- |
| "icfm"  | ICFM(sigma)               | Independent              | any         | Tong et al. 2024 |
| "otcfm" | ICFM(sigma)               | ExactOT                  | any         | Tong et al. 2024 |
| "sbcfm" | BrownianBridge(sigma)     | SchrodingerBridge(sigma) | any         | Tong et al. 2024 |
| "fm"    | CondOT(sigma_min = sigma) | Independent              | N(0, I) only| Lipman et al. 2023 |
| "fm_vp" | VPDiffusion()             | Independent              | N(0, I) only| Lipman et al. 2023 (FM, diffusion path) |
| "si"    | Trigonometric()           | Independent              | any         | Albergo & Vanden-Eijnden 2023 |
"""

from __future__ import annotations

from fm_jax import couplings, paths
from fm_jax.losses import CFMLoss, cfm_loss

__all__ = ["GAUSSIAN_SOURCE_ONLY", "METHODS", "build_loss"]

METHODS = ("icfm", "otcfm", "sbcfm", "fm", "fm_vp", "si")
GAUSSIAN_SOURCE_ONLY = ("fm", "fm_vp")


def build_loss(
    method: str,
    sigma: float,
    source: str = "normal",
    target: str = "velocity",
    ot_solver: str = "hungarian",
    label_dropout: float = 0.0,
    null_label: int | None = None,
) -> CFMLoss:
    """The CFM loss of a named method; FM's conditional paths assume a standard normal source.

    `ot_solver` picks OT-CFM's exact solver (`couplings.EXACT_SOLVERS`); `label_dropout` and
    `null_label` train a class-conditional network for classifier-free guidance (`cfm_loss`).
    """
    extra = {"target": target, "label_dropout": label_dropout, "null_label": null_label}
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    if method in GAUSSIAN_SOURCE_ONLY and source != "normal":
        raise ValueError(f"Method {method!r} needs the 'normal' source (got {source!r}); use 'icfm' or 'otcfm' instead.")
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
