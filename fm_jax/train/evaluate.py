"""Sampling and evaluating a trained 2D run with several solvers.

For each solver: W2 between the samples and fresh target samples (exact, `metrics.w2`),
MMD^2 (RBF, median bandwidth, on up to 2,000 points of each), the normalized path energy
|PE - W2^2(q0, q1)| / W2^2(q0, q1) (Tong et al. 2024) with W2^2(q0, q1) between fresh source
and target samples, the curvature (Lee et al. 2023) and the NFE the solve made.
"""

from __future__ import annotations

import jax
import numpy as np

from fm_jax import metrics, solvers
from fm_jax import data
from fm_jax.train.state import data_shape, model_method
from fm_jax.train.workdir import Run

__all__ = ["evaluate", "evaluate_flow", "flow_passes", "parse_solver", "reference_w2_sq", "solve_kwargs"]

MMD_POINTS = 2000


def parse_solver(spec: str) -> tuple[str, int | None]:
    """'dopri5' -> ('dopri5', None) (adaptive); 'euler:100' -> ('euler', 100) (fixed steps)."""
    name, _, steps = spec.partition(":")
    solvers.get_solver(name)
    if steps and (not steps.isdigit() or int(steps) < 1):
        raise ValueError(f"Bad solver {spec!r}: write NAME for adaptive steps or NAME:STEPS, e.g. euler:100.")
    if not steps:
        solvers.check_adaptive(name)
    return name, int(steps) if steps else None


def solve_kwargs(name: str, steps: int | None, rtol: float, atol: float) -> dict:
    return {"solver": name, "steps": steps} if steps else {"solver": name, "rtol": rtol, "atol": atol}


def _draws(config, num: int, seed: int):
    """`num` source points to sample from and `num` fresh target points to compare with."""
    k_src, k_tgt, _ = jax.random.split(jax.random.key(seed), 3)
    src, tgt = data.densities(config.source, config.target)
    return src.sample(k_src, num), np.asarray(tgt.sample(k_tgt, num))


def flow_passes(config) -> int:
    """Sequential network passes of one normalizing-flow sample."""
    if config.flow.kind == "realnvp":
        return config.flow.num_layers
    shape = data_shape(config)
    if len(shape) == 3:  # image patches
        tokens = (shape[0] // config.flow.patch) * (shape[1] // config.flow.patch)
    else:
        tokens = shape[0] // config.flow.token_dim
    return config.flow.num_layers * tokens


def evaluate_flow(run: Run, num: int, seed: int = 0) -> dict:
    """W2 and MMD^2 of `num` one-shot samples of a normalizing-flow run, and the passes they take."""
    _, target = _draws(run.config, num, seed)
    sample = jax.jit(model_method(run.config, "sample"), static_argnums=2)
    x1 = np.asarray(sample(run.params, jax.random.fold_in(jax.random.key(seed), 1), num))
    row = {"w2": metrics.w2(x1, target), "mmd2": float(metrics.mmd2(x1[:MMD_POINTS], target[:MMD_POINTS])),
           "passes": flow_passes(run.config)}
    return {"step": run.step, "method": "flow", "source": run.config.source, "target": run.config.target,
            "num": num, "solvers": {"flow": row}}


def reference_w2_sq(source: str, target: str, num: int, seed: int = 0) -> float:
    """W2^2 between `num` fresh source and target samples: the denominator of the normalized path energy."""
    _, k_tgt, k_ref = jax.random.split(jax.random.key(seed), 3)
    src, tgt = data.densities(source, target)
    return metrics.w2(np.asarray(src.sample(k_ref, num)), np.asarray(tgt.sample(k_tgt, num))) ** 2


def evaluate(
    run: Run,
    specs: list[str],
    num: int,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    seed: int = 0,
    w2_sq_source_target: float | None = None,
) -> dict:
    """Metrics per solver spec on `num` samples; returns a JSON-ready dict.

    `w2_sq_source_target`: W2^2 between fresh source and target samples, which depends only on
    (source, target, num, seed); pass it to reuse it across runs of one task (one exact solve less).
    """
    parsed = [parse_solver(spec) for spec in specs]
    config = run.config
    source, target = _draws(config, num, seed)
    w2_sq = w2_sq_source_target
    if w2_sq is None:
        w2_sq = reference_w2_sq(config.source, config.target, num, seed)
    vf = solvers.velocity_field(run.apply, run.params)
    rows = {}
    for spec, (name, steps) in zip(specs, parsed):
        kwargs = solve_kwargs(name, steps, rtol, atol)
        m = jax.jit(lambda x0: metrics.trajectory_metrics(vf, x0, **kwargs))(source)
        x1 = np.asarray(m.x1)
        rows[spec] = {
            "w2": metrics.w2(x1, target),
            "mmd2": float(metrics.mmd2(x1[:MMD_POINTS], target[:MMD_POINTS])),
            "path_energy": float(m.path_energy),
            "normalized_path_energy": float(metrics.normalized_path_energy(m.path_energy, w2_sq)),
            "curvature": float(m.curvature),
            "nfe": int(m.nfe),
        }
    return {"step": run.step, "method": config.method, "source": config.source, "target": config.target,
            "num": num, "w2_sq_source_target": w2_sq, "solvers": rows}
