"""The teacher of an "nfm" or "reflow" run: read from its workdir, checked, made into a coupling.

`config.teacher.workdir` names a finished run on the same data. For "nfm" it is a "flow" run
(a normalizing flow), and the coupling is `couplings.nf_coupling` with the flow's training
noise and prior std (Berthelot et al. 2026). For "reflow" it is a flow-matching run from
N(0, I), and the coupling is `couplings.reflow_coupling` integrating its field
`config.teacher.direction` with `config.teacher.solver` (Liu et al. 2023).

The coupling runs inside the train step, on the devices: each step maps its batch through the
teacher, at the cost of one teacher forward pass per example for a flow, and of the teacher's
NFE passes for reflow (Dopri5 at 1e-4 takes ~20-60 on 2D tasks). Use
`config.coupling_scope="group"` on several devices, so that each device maps only its examples.

With `config.teacher.precompute = N` (densities only) the teacher maps N pairs once, before
training (`precompute_pairs`: the teacher's cost for N examples, once, plus N pairs held on
every device), and the steps draw their batches from those pairs with replacement; this is
rectified flow's original recipe (Liu et al. 2023), and cheaper than mapping every batch when
N is below num_steps x batch_size, at the price of a finite set of pairs. The pairs are
recomputed from the same key when a run resumes, so a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from fm_jax import couplings, data
from fm_jax.train.methods import TEACHER_METHODS
from fm_jax.train.sharding import place, replicated
from fm_jax.train.state import model_method
from fm_jax.train.workdir import load_run

__all__ = ["PAIRS_STREAM", "check_teacher", "precompute_pairs", "teacher_config", "teacher_coupling"]

PAIRS_STREAM = 0x9A125


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The saved config of the run's teacher, after checking that it fits the run."""
    workdir = config.teacher.workdir
    if not workdir:
        raise ValueError(f"Method {config.method!r} distils a teacher run: set --config.teacher.workdir=W "
                         f"(a {'flow' if config.method == 'nfm' else 'flow-matching'} run on {config.target!r}).")
    saved = pathlib.Path(workdir).expanduser() / "config.json"
    if not saved.is_file():
        raise ValueError(f"config.teacher.workdir {workdir} holds no trained run (no config.json): train the teacher first.")
    teacher = ml_collections.ConfigDict(json.loads(saved.read_text()))
    if teacher.target != config.target:
        raise ValueError(f"The teacher in {workdir} was trained on {teacher.target!r}, this run on {config.target!r}: "
                         "use a teacher of the same data.")
    if config.method == "nfm" and teacher.method != "flow":
        raise ValueError(f"nfm needs a normalizing-flow teacher (method 'flow'); {workdir} is a {teacher.method!r} run.")
    if config.method == "reflow" and (teacher.method in ("flow",) or teacher.source != "normal"):
        raise ValueError(f"reflow needs a flow-matching teacher from the 'normal' source; {workdir} is a "
                         f"{teacher.method!r} run from {teacher.source!r}.")
    if config.method == "reflow" and teacher.get("conditional", False) != config.get("conditional", False):
        raise ValueError("reflow's teacher and student must both be class-conditional, or neither.")
    if config.teacher.direction not in couplings.REFLOW_DIRECTIONS:
        raise ValueError(f"Unknown config.teacher.direction {config.teacher.direction!r}; "
                         f"choose one of {couplings.REFLOW_DIRECTIONS}.")
    return teacher


def check_teacher(config: ml_collections.ConfigDict) -> None:
    """Before compiling: a teacher method names a fitting teacher run."""
    if config.method not in TEACHER_METHODS:
        return
    teacher_config(config)
    if config.teacher.get("precompute", 0) < 0:
        raise ValueError(f"config.teacher.precompute must be >= 0 (0 maps every batch in the step), got "
                         f"{config.teacher.precompute}.")
    if config.teacher.get("precompute", 0) and data.is_image_spec(config.target):
        raise ValueError("config.teacher.precompute is for densities; an image run maps each batch in the step: "
                         "set --config.teacher.precompute=0.")


def precompute_pairs(config: ml_collections.ConfigDict, coupling: couplings.TeacherCoupling, num: int) -> dict:
    """`num` teacher pairs {"x0", "x1"} (host arrays) from fresh source and target draws, in batch-size chunks."""
    source, target = data.densities(config.source, config.target)
    key, size = jax.random.fold_in(jax.random.key(config.seed), PAIRS_STREAM), config.batch_size

    @jax.jit
    def chunk(index):
        k_x0, k_x1, k_pair = jax.random.split(jax.random.fold_in(key, index), 3)
        x0, x1, _ = coupling(k_pair, source.sample(k_x0, size), target.sample(k_x1, size))
        return {"x0": x0, "x1": x1}

    parts = [jax.device_get(chunk(i)) for i in range(-(-num // size))]
    return {name: np.concatenate([p[name] for p in parts])[:num] for name in ("x0", "x1")}


def teacher_coupling(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> couplings.TeacherCoupling:
    """The coupling of an "nfm" or "reflow" run, with the teacher's parameters (its EMA where it kept
    one), replicated on `mesh` when given (the one copy the run keeps)."""
    teacher_config(config)  # checked again: the coupling may be built without check_config
    run = load_run(config.teacher.workdir)
    params = run.params if mesh is None else place(run.params, jax.tree.map(lambda _: replicated(mesh), run.params))
    if config.method == "nfm":
        return couplings.nf_coupling(model_method(run.config, "forward"), params, run.config.flow.noise,
                                     run.config.flow.prior_std)
    t = config.teacher
    return couplings.reflow_coupling(run.apply, params, t.direction, t.solver, t.steps or None, t.rtol, t.atol)
