"""The teacher of an "nfm" or "reflow" run: read from its workdir, checked, made into a coupling.

`config.teacher.workdir` names a finished run on the same data (checked by
`fm_jax.train.spec.TeacherSpec`). For "nfm" it is a "flow" run (a normalizing flow), and the
coupling is `distillation.nf_coupling` with the flow's training noise and prior std
(Berthelot et al. 2026). For "reflow" it is a flow-matching run from N(0, I), and the
coupling is `distillation.reflow_coupling` integrating its field `config.teacher.direction`
with `config.teacher.solver` (Liu et al. 2023).

The coupling runs inside the train step, on the devices: each step maps its batch through the
teacher, at the cost of one teacher forward pass per example for a flow, and of the teacher's
NFE passes for reflow (Dopri5 at 1e-4 takes ~20-60 on 2D tasks). On several devices each
maps only its own examples (the coupling's layout is "examples"), at either coupling scope.

With `config.teacher.precompute = N` (densities only) the teacher maps N pairs once, before
training (`precompute_pairs`: the teacher's cost for N examples, once, plus N pairs held on
every device), and the steps draw their batches from those pairs with replacement; this is
rectified flow's original recipe (Liu et al. 2023), and cheaper than mapping every batch when
N is below num_steps x batch_size, at the price of a finite set of pairs. The pairs are
recomputed from the same key when a run resumes, so a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from fm_jax import distillation
from fm_jax.train.sharding import place, replicated
from fm_jax.train.spec import RunSpec
from fm_jax.train.state import model_method
from fm_jax.train.workdir import load_run

__all__ = ["PAIRS_STREAM", "precompute_pairs", "teacher_coupling"]

PAIRS_STREAM = 0x9A125


def precompute_pairs(spec: RunSpec, coupling: distillation.TeacherCoupling, num: int) -> dict:
    """`num` teacher pairs {"x0", "x1"} (host arrays) from fresh source and target draws, in batch-size chunks."""
    source, target = spec.data.densities()
    key, size = jax.random.fold_in(jax.random.key(spec.seed), PAIRS_STREAM), spec.engine.batch_size

    @jax.jit
    def chunk(index):
        k_x0, k_x1, k_pair = jax.random.split(jax.random.fold_in(key, index), 3)
        x0, x1, _ = coupling(k_pair, source.sample(k_x0, size), target.sample(k_x1, size))
        return {"x0": x0, "x1": x1}

    parts = [jax.device_get(chunk(i)) for i in range(-(-num // size))]
    return {name: np.concatenate([p[name] for p in parts])[:num] for name in ("x0", "x1")}


def teacher_coupling(spec: RunSpec, mesh: Mesh | None = None) -> distillation.TeacherCoupling:
    """The coupling of an "nfm" or "reflow" run, with the teacher's parameters (its EMA where it kept
    one), replicated on `mesh` when given (the one copy the run keeps)."""
    if spec.teacher is None:
        raise ValueError(f"Method {spec.method.name!r} distils no teacher.")
    run = load_run(spec.teacher.workdir)
    params = run.params if mesh is None else place(run.params, jax.tree.map(lambda _: replicated(mesh), run.params))
    if spec.method.teacher == "flow":
        return distillation.nf_coupling(
            model_method(run.spec.model, "forward"),
            params,
            run.spec.loss.flow_noise,
            run.spec.model.flow.get("prior_std", 1.0),
        )
    return distillation.reflow_coupling(run.apply, params, spec.teacher.direction, spec.teacher.solver)
