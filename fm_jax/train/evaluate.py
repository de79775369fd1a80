"""Sampling and evaluating a trained density run with several solvers.

For each solver: W2 between the samples and held-out target samples (exact, `metrics.w2`),
MMD^2 (RBF, median bandwidth, on up to 2,000 points of each), the normalized path energy
|PE - W2^2(q0, q1)| / W2^2(q0, q1) (Tong et al. 2024) with W2^2(q0, q1) between fresh source
and target samples, the curvature (Lee et al. 2023) and the NFE the solve made. A
normalizing-flow run samples in one shot (`evaluate_flow`). Draws come from the held-out
streams of `fm_jax.train.held_out`.
"""

from __future__ import annotations

import jax
import numpy as np

from fm_jax import data, metrics, solvers
from fm_jax.solvers import SolverSpec
from fm_jax.train.held_out import NOISE, REFERENCE, TARGET, held_out_key
from fm_jax.train.spec import DataSpec
from fm_jax.train.state import model_method
from fm_jax.train.workdir import Run

__all__ = ["MMD_POINTS", "evaluate", "evaluate_flow", "reference_w2_sq"]

MMD_POINTS = 2000


def _draws(data: DataSpec, num: int, seed: int) -> tuple[jax.Array, np.ndarray]:
    """`num` source points to sample from and `num` held-out target points to compare with."""
    src, tgt = data.densities()
    return src.sample(held_out_key(seed, NOISE), num), np.asarray(tgt.sample(held_out_key(seed, TARGET), num))


def _header(run: Run, num: int) -> dict:
    return {
        "step": run.step,
        "method": run.spec.method.name,
        "source": run.spec.data.source,
        "target": run.spec.data.target,
        "num": num,
    }


def evaluate_flow(run: Run, num: int, seed: int = 0) -> dict:
    """W2 and MMD^2 of `num` one-shot samples of a normalizing-flow run, and the passes they take."""
    _, target = _draws(run.spec.data, num, seed)
    sample = jax.jit(model_method(run.spec.model, "sample"), static_argnums=2)
    x1 = np.asarray(sample(run.params, held_out_key(seed, NOISE), num))
    row = {
        "w2": metrics.w2(x1, target),
        "mmd2": float(metrics.mmd2(x1[:MMD_POINTS], target[:MMD_POINTS])),
        "passes": run.spec.model.flow_passes(),
    }
    return _header(run, num) | {"solvers": {"flow": row}}


def reference_w2_sq(source: str, target: str, num: int, seed: int = 0) -> float:
    """W2^2 between `num` fresh source and held-out target samples of two density specs: the
    denominator of the normalized path energy."""
    src, tgt = data.densities(source, target)
    reference = np.asarray(src.sample(held_out_key(seed, REFERENCE), num))
    return metrics.w2(reference, np.asarray(tgt.sample(held_out_key(seed, TARGET), num))) ** 2


def evaluate(
    run: Run,
    specs: list[SolverSpec],
    num: int,
    seed: int = 0,
    w2_sq_source_target: float | None = None,
) -> dict:
    """Metrics per solver on `num` samples; returns a JSON-ready dict, the rows keyed by `str(spec)`.

    `w2_sq_source_target`: W2^2 between fresh source and target samples, which depends only on
    (data, num, seed); pass it to reuse it across runs of one task (one exact solve less).
    """
    source, target = _draws(run.spec.data, num, seed)
    w2_sq = w2_sq_source_target
    if w2_sq is None:
        w2_sq = reference_w2_sq(run.spec.data.source, run.spec.data.target, num, seed)
    vf = solvers.velocity_field(run.apply, run.params)
    rows = {}
    for spec in specs:
        m = jax.jit(lambda x0, spec=spec: metrics.trajectory_metrics(vf, x0, spec))(source)
        x1 = np.asarray(m.x1)
        rows[str(spec)] = {
            "w2": metrics.w2(x1, target),
            "mmd2": float(metrics.mmd2(x1[:MMD_POINTS], target[:MMD_POINTS])),
            "path_energy": float(m.path_energy),
            "normalized_path_energy": float(metrics.normalized_path_energy(m.path_energy, w2_sq)),
            "curvature": float(m.curvature),
            "nfe": int(m.nfe),
        }
    return _header(run, num) | {"w2_sq_source_target": w2_sq, "solvers": rows}
