"""Progress of the long library calls (`progress=True`): a line on stderr that says what is done,
and a tqdm bar there that reaches the number of units of work; silent by default, and the
numbers the same with or without it. Tiny runs: a density run, a flow run, and an image run with a linear field."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from fm_jax.data import prepare
from fm_jax.solvers import SolverSpec
from fm_jax.train import apply_overrides, load_config, train
from fm_jax.train.evaluate import evaluate, evaluate_flow
from fm_jax.train.image_eval import evaluate_images, image_nll, sample_images
from fm_jax.train.nll import density_grid, held_out_nll
from fm_jax.train.spec import RunSpec
from fm_jax.train.workdir import Run, load_run

FAST = {"num_steps": 20, "steps_per_call": 20, "log_every": 20, "mesh.num_devices": 1}


def _train(name, workdir, **fields):
    config = apply_overrides(load_config(name), {k: str(v) for k, v in (FAST | fields).items()})
    train(config, workdir, progress=False)
    return load_run(workdir)


@pytest.fixture(scope="module")
def density_run(tmp_path_factory):
    return _train("toy2d", tmp_path_factory.mktemp("icfm") / "run", method="icfm", **{"model.width": 16})


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    fields = {"method": "flow", "flow.num_layers": 2, "flow.width": 16}
    return _train("toy2d", tmp_path_factory.mktemp("flow") / "run", **fields)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A digits run whose network is the linear field v = a x (a U-Net would take minutes to compile
    here): the evaluation reads only the run's spec, apply and params."""
    data_dir = tmp_path_factory.mktemp("tfds")
    prepare.prepare("digits", str(data_dir))
    config = apply_overrides(load_config("images"), {"data.dir": str(data_dir)})
    apply = lambda params, t, x, cond: params["a"] * x
    return Run(config, RunSpec.from_config(config, teacher=False), apply, {"a": jnp.asarray(-0.5)}, step=0)


def _quiet_then_loud(capsys, call):
    """(result without progress, result with it, stderr with it); stderr is empty without it."""
    capsys.readouterr()
    quiet = call(False)
    assert capsys.readouterr().err == ""
    loud = call(True)
    return quiet, loud, capsys.readouterr().err


def _bar_reached(err: str, desc: str, total: int) -> bool:
    """Whether the bar labelled `desc` was drawn at total/total."""
    return re.search(re.escape(desc) + r"[^\r\n]*\b" + f"{total}/{total}" + r"\b", err) is not None


def test_evaluate_says_what_it_does_and_advances_over_its_stages(density_run, capsys):
    specs = [SolverSpec(), SolverSpec("euler", 4)]
    quiet, loud, err = _quiet_then_loud(capsys, lambda p: evaluate(density_run, specs, 64, progress=p))
    assert quiet == loud
    assert "evaluating 2 solver(s) (dopri5, euler:4) of icfm normal -> moons on 64 samples: W2" in err
    # The reference W2, then for each solver its solve, W2 and MMD.
    assert _bar_reached(err, "eval", 7)
    assert "eval euler:4: W2 (exact OT)" in err


def test_held_out_nll_and_the_density_grid_advance_per_batch(density_run, capsys):
    spec = SolverSpec("euler", 4)
    call = lambda p: held_out_nll(density_run, 30, solver=spec, batch_size=10, progress=p)
    quiet, loud, err = _quiet_then_loud(capsys, call)
    assert quiet == loud
    assert "log-likelihood of 30 held-out moons points under icfm normal -> moons (exact divergence, euler:4)" in err
    assert _bar_reached(err, "NLL exact divergence", 3)

    call = lambda p: density_grid(density_run, 6, spec, batch_size=12, progress=p)
    quiet, loud, err = _quiet_then_loud(capsys, call)
    for a, b in zip(quiet[:3], loud[:3]):
        np.testing.assert_array_equal(a, b)
    assert "on a 6 x 6 grid" in err and _bar_reached(err, "density grid", 3)


def test_flow_runs_report_their_progress(flow_run, capsys):
    quiet, loud, err = _quiet_then_loud(capsys, lambda p: evaluate_flow(flow_run, 40, progress=p))
    assert quiet == loud
    assert "evaluating the normalizing flow flow normal -> moons on 40 one-shot samples" in err
    assert _bar_reached(err, "eval flow", 3)
    quiet, loud, err = _quiet_then_loud(capsys, lambda p: held_out_nll(flow_run, 20, batch_size=10, progress=p))
    assert quiet == loud and "the flow's exact log-density" in err and _bar_reached(err, "NLL flow", 2)


def test_image_calls_advance_per_batch_of_images(image_run, capsys):
    spec = SolverSpec("euler", 2)
    call = lambda p: sample_images(image_run, 6, spec, batch_size=4, progress=p)
    quiet, loud, err = _quiet_then_loud(capsys, call)
    for key in ("x0", "x1", "labels"):
        np.testing.assert_array_equal(quiet[key], loud[key])
    assert quiet["nfe"] == loud["nfe"] and quiet["curvature"] == loud["curvature"]
    assert "sampling 6 images of fm -> tfds:digits with euler:2, in batches of 4" in err
    assert _bar_reached(err, "sampling images euler:2", 2)

    call = lambda p: evaluate_images(image_run, [spec], 6, batch_size=4, progress=p)
    quiet, loud, err = _quiet_then_loud(capsys, call)
    assert quiet == loud
    assert "evaluating 1 solver(s) (euler:2) of fm -> tfds:digits on 6 held-out images" in err
    assert _bar_reached(err, "eval", 1 + 2 + 2)  # the reference W2; two batches, the FD and the W2

    call = lambda p: image_nll(image_run, 6, "hutchinson", spec, batch_size=4, progress=p)
    quiet, loud, err = _quiet_then_loud(capsys, call)
    assert quiet == loud
    assert "bits/dim of 6 held-out images under fm -> tfds:digits (hutchinson divergence, euler:2)" in err
    assert _bar_reached(err, "NLL hutchinson divergence", 2)


def test_prepare_says_what_it_writes_and_counts_the_examples(tmp_path, capsys):
    quiet = prepare.prepare("digits", str(tmp_path / "a"))
    assert capsys.readouterr().err == ""
    loud = prepare.prepare("digits", str(tmp_path / "b"), progress=True)
    err = capsys.readouterr().err
    assert quiet == loud
    assert "preparing digits (1,797 8x8 digits from scikit-learn) in " in err
    assert _bar_reached(err, "writing digits train", 1497) and _bar_reached(err, "writing digits test", 300)
    prepare.prepare("digits", str(tmp_path / "b"), progress=True)
    assert "digits is already prepared in " in capsys.readouterr().err

    images = np.zeros((3, 2, 2, 1), np.uint8)
    prepare.write_arrays("tiny", str(tmp_path), {"train": (images, None)}, progress=True)
    err = capsys.readouterr().err
    assert "writing tiny (train 3 images of (2, 2, 1)) in " in err and _bar_reached(err, "writing tiny train", 3)
