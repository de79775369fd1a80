"""Log-likelihood of a trained run on held-out target samples, and its density on a 2D grid.

For a normalizing-flow run ("flow") the log-likelihood is the flow's exact one (NFE 0).

The held-out points are fresh draws of the target from a held-out stream
(`fm_jax.train.held_out`). The
source log-density is the run's source density (N(0, I) or a toy density; a point cloud has
none). With the target's own log-density known (the toy densities), the report adds the
mean true log-density of the same points and the KL estimate mean(log p_target - log p_model)
with its standard error.

With `progress=True` a line on stderr says what is computed and a bar advances over the
batches of points (`batch_size` each; one ODE solve per batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fm_jax import data, likelihood, solvers
from fm_jax.primitives import padded_chunks
from fm_jax.progress import announce, bar
from fm_jax.solvers import SolverSpec
from fm_jax.train.held_out import PROBES, TARGET, held_out_key
from fm_jax.train.workdir import Run

__all__ = ["density_grid", "held_out_nll"]


def _densities(run: Run) -> tuple[data.Density, data.Density]:
    src, tgt = run.spec.data.densities()
    if src.log_prob is None:
        raise ValueError(
            f"The source {run.spec.data.source!r} has no log-density (a point cloud), so the flow's likelihood is "
            "undefined: train from 'normal' or a toy density."
        )
    return src, tgt


def _what(run: Run) -> str:
    return f"{run.spec.method.name} {run.spec.data.source} -> {run.spec.data.target}"


def _batched(
    fn: Callable, x: np.ndarray, batch_size: int, desc: str = "", progress: bool = False
) -> tuple[np.ndarray, list[int]]:
    """(log p of every point, NFE per batch) of `fn(x, index)` over x in padded batches of `batch_size`,
    with a bar labelled `desc` over the batches when `progress`."""
    log_p, nfe = [], []
    with bar(-(-len(x) // batch_size), desc, progress) as batches:
        for start, n, (chunk,) in padded_chunks(batch_size, x):
            out = fn(chunk, start // batch_size)
            log_p.append(np.asarray(out.log_prob)[:n])
            nfe.append(int(out.nfe))
            batches.update()
    return np.concatenate(log_p), nfe


class _Exact(NamedTuple):
    log_prob: jax.Array
    nfe: int


def _log_likelihood_fn(
    run: Run, source_log_prob: Callable, divergence: str, solver: SolverSpec, num_probes: int, probe: str, seed: int
) -> Callable:
    if run.spec.method.model == "flow":  # a normalizing flow's likelihood is exact and needs no ODE
        return jax.jit(lambda x, index: _Exact(run.apply(run.params, x), 0))
    vf = solvers.velocity_field(run.apply, run.params)
    probe_key = held_out_key(seed, PROBES)

    @jax.jit
    def fn(x, index):
        key = jax.random.fold_in(probe_key, index)
        return likelihood.log_likelihood(
            vf, x, source_log_prob, divergence, key=key, num_probes=num_probes, probe=probe, solver=solver
        )

    return fn


def held_out_nll(
    run: Run,
    num: int = 5000,
    divergence: str = "exact",
    solver: SolverSpec = SolverSpec(),
    num_probes: int = 1,
    probe: str = "rademacher",
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
) -> dict:
    """Mean log-likelihood (nats, and bits/dim) of `num` held-out target points with standard errors.

    `progress`: a line and a bar over the batches on stderr.
    """
    src, tgt = _densities(run)
    flow = run.spec.method.model == "flow"
    how = "the flow's exact log-density" if flow else f"{divergence} divergence, {solver}"
    announce(f"log-likelihood of {num} held-out {run.spec.data.target} points under {_what(run)} ({how})", progress)
    x = np.asarray(tgt.sample(held_out_key(seed, TARGET), num))
    fn = _log_likelihood_fn(run, src.log_prob, divergence, solver, num_probes, probe, seed)
    desc = "NLL flow" if flow else f"NLL {divergence} divergence"
    log_p, nfe = _batched(fn, x, min(batch_size, num), desc, progress)
    if not np.all(np.isfinite(log_p)):
        raise FloatingPointError(f"{int(np.sum(~np.isfinite(log_p)))} of {num} log-likelihoods are not finite.")
    d = math.prod(x.shape[1:])
    se = float(log_p.std(ddof=1) / math.sqrt(num))
    hutchinson = divergence == "hutchinson"
    report = {
        "step": run.step,
        "method": run.spec.method.name,
        "source": run.spec.data.source,
        "target": run.spec.data.target,
        "num": num,
        "dim": d,
        "divergence": divergence,
        "num_probes": num_probes if hutchinson else None,
        "probe": probe if hutchinson else None,
        "solver": str(solver),
        "rtol": solver.rtol,
        "atol": solver.atol,
        "nfe_mean": float(np.mean(nfe)),
        "log_likelihood": float(log_p.mean()),
        "log_likelihood_se": se,
        "bits_per_dim": float(likelihood.bits_per_dim(log_p.mean(), d)),
        "bits_per_dim_se": se / (d * math.log(2)),
    }
    if tgt.log_prob is not None:
        true = np.asarray(jax.jit(tgt.log_prob)(jnp.asarray(x)))
        gap = true - log_p
        report |= {
            "true_log_likelihood": float(true.mean()),
            "kl": float(gap.mean()),
            "kl_se": float(gap.std(ddof=1) / math.sqrt(num)),
        }
    return report


def density_grid(
    run: Run,
    size: int = 100,
    solver: SolverSpec = SolverSpec(),
    seed: int = 0,
    batch_size: int = 2500,
    progress: bool = False,
):
    """(xs, ys, model log-density, true log-density or None) on a size x size grid around the target.

    The grid spans the 0.5-99.5 percentiles of 10,000 held-out target samples, padded by 10 %.
    `progress`: a line and a bar over the batches of grid points on stderr.
    """
    src, tgt = _densities(run)
    if tgt.dim != 2:
        raise ValueError(f"A density grid needs a 2D flow; this run's target has dimension {tgt.dim}.")
    sample = np.asarray(tgt.sample(held_out_key(seed, TARGET), 10_000))
    lo, hi = np.percentile(sample, 0.5, axis=0), np.percentile(sample, 99.5, axis=0)
    lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
    xs, ys = np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
    announce(f"model log-density of {_what(run)} on a {size} x {size} grid ({solver}) for the heat map", progress)
    fn = _log_likelihood_fn(run, src.log_prob, "exact", solver, 1, "rademacher", seed)
    model, _ = _batched(fn, grid, min(batch_size, len(grid)), "density grid", progress)
    true = None if tgt.log_prob is None else np.asarray(jax.jit(tgt.log_prob)(jnp.asarray(grid)))
    shape = (size, size)
    return xs, ys, model.reshape(shape), None if true is None else true.reshape(shape)
