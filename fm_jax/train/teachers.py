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
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

from fm_jax import couplings
from fm_jax.train.methods import TEACHER_METHODS
from fm_jax.train.state import model_method
from fm_jax.train.workdir import load_run

__all__ = ["check_teacher", "teacher_config", "teacher_coupling"]


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
    if config.method in TEACHER_METHODS:
        teacher_config(config)


def teacher_coupling(config: ml_collections.ConfigDict) -> couplings.TeacherCoupling:
    """The coupling of an "nfm" or "reflow" run, with the teacher's parameters (its EMA where it kept one)."""
    run = load_run(teacher_config(config) and config.teacher.workdir)
    if config.method == "nfm":
        return couplings.nf_coupling(model_method(run.config, "forward"), run.params, run.config.flow.noise,
                                     run.config.flow.prior_std)
    t = config.teacher
    return couplings.reflow_coupling(run.apply, run.params, t.direction, t.solver, t.steps or None, t.rtol, t.atol)
