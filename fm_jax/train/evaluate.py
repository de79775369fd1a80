"""Sampling and evaluating a trained density run with several solvers.

For each solver: W2 between the samples and held-out target samples (exact, `metrics.w2`),
MMD^2 (RBF, median bandwidth, on up to 2,000 points of each), the normalized path energy
|PE - W2^2(q0, q1)| / W2^2(q0, q1) (Tong et al. 2024) with W2^2(q0, q1) between fresh source
and target samples, the curvature (Lee et al. 2023) and the NFE the solve made. A
normalizing-flow run samples in one shot (`evaluate_flow`). Draws come from the held-out
streams of `fm_jax.train.held_out`.

With `progress=True` a line on stderr says what is evaluated and a bar advances over the stages:
the reference W2, then per solver the solve, the W2 and the MMD. The stages, not chunks of
samples, are the units: an adaptive solve shares its steps across the batch, so cutting the
batch would change the numbers, and the exact W2 (POT's network simplex, most of the time at
10,000 points) is one call.
"""

from __future__ import annotations

import jax
import numpy as np

from fm_jax import data, metrics, solvers
from fm_jax.progress import announce, bar
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


def _what(run: Run) -> str:
    return f"{run.spec.method.name} {run.spec.data.source} -> {run.spec.data.target}"


def evaluate_flow(run: Run, num: int, seed: int = 0, progress: bool = False) -> dict:
    """W2 and MMD^2 of `num` one-shot samples of a normalizing-flow run, and the passes they take.

    `progress`: a line and a bar (sampling, W2, MMD) on stderr.
    """
    announce(f"evaluating the normalizing flow {_what(run)} on {num} one-shot samples: W2, MMD^2", progress)
    with bar(3, "eval flow: sampling", progress, unit="stage") as stages:
        _, target = _draws(run.spec.data, num, seed)
        sample = jax.jit(model_method(run.spec.model, "sample"), static_argnums=2)
        x1 = np.asarray(sample(run.params, held_out_key(seed, NOISE), num))
        stages.update()
        stages.set_description("eval flow: W2 (exact OT)")
        w2 = metrics.w2(x1, target)
        stages.update()
        stages.set_description("eval flow: MMD^2")
        row = {
            "w2": w2,
            "mmd2": float(metrics.mmd2(x1[:MMD_POINTS], target[:MMD_POINTS])),
            "passes": run.spec.model.flow_passes(),
        }
        stages.update()
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
    progress: bool = False,
) -> dict:
    """Metrics per solver on `num` samples; returns a JSON-ready dict, the rows keyed by `str(spec)`.

    `w2_sq_source_target`: W2^2 between fresh source and target samples, which depends only on
    (data, num, seed); pass it to reuse it across runs of one task (one exact solve less).
    `progress`: a line and a bar over the stages on stderr (see the module docstring).
    """
    names = ", ".join(map(str, specs))
    announce(
        f"evaluating {len(specs)} solver(s) ({names}) of {_what(run)} on {num} samples: "
        "W2 (exact OT), MMD^2, path energy, curvature, NFE",
        progress,
    )
    reference = w2_sq_source_target is None
    with bar(3 * len(specs) + reference, "eval: drawing", progress, unit="stage") as stages:
        source, target = _draws(run.spec.data, num, seed)
        w2_sq = w2_sq_source_target
        if w2_sq is None:
            stages.set_description("eval: reference W2(source, target)")
            w2_sq = reference_w2_sq(run.spec.data.source, run.spec.data.target, num, seed)
            stages.update()
        vf = solvers.velocity_field(run.apply, run.params)
        rows = {}
        for spec in specs:
            stages.set_description(f"eval {spec}: solving")
            m = jax.jit(lambda x0, spec=spec: metrics.trajectory_metrics(vf, x0, spec))(source)
            x1 = np.asarray(m.x1)
            stages.update()
            stages.set_description(f"eval {spec}: W2 (exact OT)")
            w2 = metrics.w2(x1, target)
            stages.update()
            stages.set_description(f"eval {spec}: MMD^2")
            rows[str(spec)] = {
                "w2": w2,
                "mmd2": float(metrics.mmd2(x1[:MMD_POINTS], target[:MMD_POINTS])),
                "path_energy": float(m.path_energy),
                "normalized_path_energy": float(metrics.normalized_path_energy(m.path_energy, w2_sq)),
                "curvature": float(m.curvature),
                "nfe": int(m.nfe),
            }
            stages.update()
        stages.set_description("eval: done")
    return _header(run, num) | {"w2_sq_source_target": w2_sq, "solvers": rows}
