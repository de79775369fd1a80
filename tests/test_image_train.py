"""Training on images end to end: TFDS + grain batches into the sharded step, exact resume with
the data iterator's position, 8 devices against 1, class-conditional training with guidance,
and the CLI's sample / eval / nll on an image run."""

import importlib
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from fm_jax import cli
from fm_jax.plots import image_grid
from fm_jax.train import apply_overrides, load_config, train
from fm_jax.train.checkpoints import Checkpoints
from fm_jax.train.loop import build_engine, check_config
from fm_jax.train.workdir import load_run

CONFIG = "images"  # the packaged config (fm_jax/configs/images.py)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def image_config(data_dir, **overrides):
    fields = {
        "data.dir": str(data_dir),
        "model.preset": "tiny",
        "batch_size": 16,
        "num_steps": 20,
        "steps_per_call": 1,
        "log_every": 10,
        "checkpoint_every": 10,
        "warmup_steps": 5,
    } | overrides
    return apply_overrides(load_config(CONFIG), {k: str(v) for k, v in fields.items()})


def params_of(state):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


def test_an_interrupted_image_run_resumes_on_the_same_examples(data_dir, tmp_path):
    whole = train(image_config(data_dir), tmp_path / "whole", progress=False)
    train(image_config(data_dir, num_steps=10), tmp_path / "halves", progress=False)
    _, step, position, _ = Checkpoints(tmp_path / "halves", read_only=True).restore_latest(
        whole, jax.tree.map(lambda x: x.sharding, whole)
    )
    assert step == 10 and position != {"step": 10}  # the grain iterator's state, not just the step
    resumed = train(image_config(data_dir), tmp_path / "halves", progress=False)
    for a, b in zip(params_of(whole), params_of(resumed)):
        np.testing.assert_array_equal(a, b)
    # The run moved: the test can fail.
    first = load_run(tmp_path / "whole")
    assert first.step == 20
    assert any(np.abs(a).max() > 0 for a in params_of(whole))


@pytest.mark.parametrize(
    "fields",
    [
        # (The "fm" method on 8 devices: the resume test above, on the config's default mesh.)
        {"method": "otcfm", "ot_solver": "network_simplex", "conditional": True},
        {"method": "icfm", "conditional": True, "data.flip": True, "model.dropout": 0.1},
    ],
    ids=["otcfm_host_conditional", "icfm_conditional_flip_dropout"],
)
def test_image_batches_give_the_same_losses_on_eight_devices_as_on_one(data_dir, fields):
    losses = {}
    for devices in (1, 8):
        config = image_config(data_dir, **fields, **{"mesh.num_devices": devices})
        spec = check_config(config)
        engine = build_engine(spec)
        state, values = engine.state, []
        for call in range(2):
            state, out = engine.steps(state, engine.batches(engine.data_key, call))
            values.append(np.asarray(out["loss"]))
        losses[devices] = np.concatenate(values)
        assert spec.model.dropout == ("model.dropout" in fields)
        if fields.get("conditional"):
            # Labels reach the step, with the null label as the U-Net's extra class.
            assert engine.loss.label_dropout == 0.1 and engine.loss.null_label == 10
    assert np.all(np.isfinite(losses[1]))
    np.testing.assert_allclose(losses[8], losses[1], rtol=2e-4, atol=1e-5)


@pytest.fixture(scope="module")
def conditional_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cond")
    overrides = [
        f"--config.data.dir={data_dir}",
        "--config.model.preset=tiny",
        "--config.batch_size=16",
        "--config.num_steps=20",
        "--config.steps_per_call=1",
        "--config.log_every=10",
        "--config.checkpoint_every=10",
        "--config.conditional=true",
    ]
    cli.main(["train", "--config", CONFIG, "--workdir", str(workdir), *overrides])
    return workdir


def test_cli_samples_a_class_grid_with_guidance(conditional_run):
    cli.main(
        [
            "sample",
            "--workdir",
            str(conditional_run),
            "--solver",
            "euler",
            "--steps",
            "4",
            "--num",
            "20",
            "--guidance",
            "2",
        ]
    )
    png = conditional_run / "samples_euler_4steps_guidance2.png"
    grid = np.asarray(Image.open(png))
    saved = np.load(conditional_run / "samples_euler_4steps_guidance2.npz")
    assert saved["images"].shape == (20, 8, 8, 1) and saved["images"].dtype == np.uint8
    np.testing.assert_array_equal(saved["labels"], np.arange(20) % 10)
    assert float(saved["nfe"]) == 4
    # Two rows of ten 8x8 digits with 1-px gaps, enlarged 32 times, one column a class: the
    # cells at the bottom, a margin above them with the class of each column and the caption.
    cells = image_grid(saved["images"], 10)[..., 0].repeat(32, axis=0).repeat(32, axis=1)
    assert cells.shape == (32 * 17, 32 * 89) and grid.shape[1] == 32 * 89 and grid.shape[0] > 32 * 17
    np.testing.assert_array_equal(grid[-cells.shape[0] :], cells)
    assert (grid[: -cells.shape[0]] < 128).any()  # the labels are drawn (dark text on white)

    # One class asked for: its own file, beside the grid of every class. (10 samples: the batch
    # of the SDE test's ODE samples, so one compiled program serves both.)
    cli.main(
        [
            "sample",
            "--workdir",
            str(conditional_run),
            "--solver",
            "euler",
            "--steps",
            "4",
            "--num",
            "10",
            "--label",
            "3",
        ]
    )
    labelled = np.load(conditional_run / "samples_euler_4steps_label3.npz")
    np.testing.assert_array_equal(labelled["labels"], [3] * 10)
    assert np.load(conditional_run / "samples_euler_4steps_guidance2.npz")["labels"].shape == (20,)
    assert "class-conditional" in cli._describe(load_run(conditional_run))


def test_cli_samples_an_image_run_with_the_sde(conditional_run):
    """--diffusion C samples dx = [v + C^2 s^2 / 2 score] dt + C s dW; C = 0 is the ODE's Euler, bit for bit."""
    common = ["sample", "--workdir", str(conditional_run), "--solver", "euler", "--steps", "4", "--num", "10"]
    cli.main([*common, "--diffusion", "0"])
    cli.main(common)
    cli.main([*common, "--diffusion", "1"])
    ode = np.load(conditional_run / "samples_euler_4steps.npz")["images"]
    zero = np.load(conditional_run / "samples_sde_euler_4steps_diffusion0.npz")
    noisy = np.load(conditional_run / "samples_sde_euler_4steps_diffusion1.npz")["images"]
    np.testing.assert_array_equal(zero["images"], ode)
    assert float(zero["nfe"]) == 4 and np.any(noisy != ode)
    with pytest.raises(SystemExit, match="fixed steps"):
        cli.main(["sample", "--workdir", str(conditional_run), "--diffusion", "1"])


def test_cli_eval_and_nll_of_an_image_run(conditional_run):
    # The Inception FID of image runs is tested on a small dataset (tests/test_inception_fid.py).
    result = cli.main(["eval", "--workdir", str(conditional_run), "--solvers", "euler:4", "--num", "64", "--no-fid"])
    assert result == 0
    report = json.loads((conditional_run / "eval.json").read_text())
    row = report["solvers"]["euler:4"]
    assert report["num"] == 64 and row["nfe"] == 4
    assert row["fd_pixel"] > 0 and row["w2"] > 0 and np.isfinite(row["curvature"])
    cli.main(["nll", "--workdir", str(conditional_run), "--solver", "euler:4", "--num", "32", "--divergence", "exact"])
    nll = json.loads((conditional_run / "nll.json").read_text())
    # A barely trained model is far from the data, but bits/dim of 8-bit data are positive and finite.
    assert nll["num"] == 32 and nll["dim"] == 64 and nll["conditional"]
    assert 0 < nll["bits_per_dim"] < 100


def test_image_runs_refuse_bad_settings_before_compiling(data_dir, tmp_path, capsys):
    unconditional = tmp_path / "uncond"
    train(image_config(data_dir, num_steps=2, log_every=2, checkpoint_every=2), unconditional, progress=False)
    with pytest.raises(SystemExit, match="guidance scale needs a class-conditional model"):
        cli.main(["sample", "--workdir", str(unconditional), "--guidance", "2", "--steps", "2", "--solver", "euler"])
    with pytest.raises(SystemExit, match="--label needs a class-conditional run"):
        cli.main(["sample", "--workdir", str(unconditional), "--label", "3", "--steps", "2", "--solver", "euler"])
    with pytest.raises(ValueError, match="model.kind=unet"):
        check_config(image_config(data_dir, **{"model.kind": "mlp"}))
    with pytest.raises(ValueError, match="'normal' source"):
        check_config(image_config(data_dir, source="moons"))
    with pytest.raises(ValueError, match="no split 'validation'"):
        check_config(image_config(data_dir, **{"data.split": "validation"}))
    with pytest.raises(ValueError, match="tfds build cifar10"):
        check_config(image_config(tmp_path / "empty", target="tfds:cifar10"))
    with pytest.raises(ValueError, match="Unknown config.model.preset"):
        check_config(image_config(data_dir, **{"model.preset": "huge"}))
    with pytest.raises(ValueError, match="image dataset"):
        check_config(image_config(data_dir, **{"model.kind": "mlp"}, source="tfds:digits", target="moons"))
    with pytest.raises(ValueError, match="config.conditional needs an image dataset with labels"):
        check_config(image_config(data_dir, **{"model.kind": "mlp", "conditional": True}, target="moons"))


@pytest.mark.parametrize(
    "fields, nfe",
    [
        (
            {
                "method": "flow",
                "flow.kind": "tarflow",
                "flow.num_layers": 2,
                "flow.width": 16,
                "flow.heads": 2,
                "flow.layers": 1,
                "flow.patch": 4,
                "flow.noise": 0.05,
            },
            2 * 4,
        ),
        ({"method": "fastode", "encoder.preset": "tiny"}, 2),
    ],
    ids=["tarflow", "fastode"],
)
def test_flow_and_fast_ode_train_on_images_and_evaluate(data_dir, tmp_path, monkeypatch, fields, nfe):
    """A TarFlow on 4x4 patches of the digits, and fast-ode with a U-Net encoder, through train / eval / nll
    and the distillation table's trajectory plot."""
    workdir = tmp_path / "run"
    train(image_config(data_dir, num_steps=4, log_every=2, checkpoint_every=4, **fields), workdir, progress=False)
    run = load_run(workdir)
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent.parent / "experiments"))
    importlib.import_module("distill_table").plot(workdir, tmp_path / "plot.png", 0)
    with Image.open(tmp_path / "plot.png") as png:  # 8x8 digits at 32x, 1-px gaps
        # the flow: 64 one-shot samples, 8 a row; fast-ode: 8 trajectories (rows) at 9 times
        cols = 8 if fields["method"] == "flow" else 9
        assert png.size == (32 * (9 * cols - 1), 32 * (9 * 8 - 1))
    if fields["method"] == "fastode":  # the encoder trained with the field; sampling is any image run's
        assert set(run.params) == {"field", "encoder"}
        assert float(np.abs(np.asarray(run.params["encoder"]["net"]["conv_out"]["kernel"][...])).max()) > 0
        return
    cli.main(["eval", "--workdir", str(workdir), "--solvers", "euler:2", "--num", "16", "--no-fid"])
    row = json.loads((workdir / "eval.json").read_text())["solvers"]["euler:2"]
    assert row["nfe"] == nfe and row["fd_pixel"] > 0
    cli.main(["nll", "--workdir", str(workdir), "--num", "8", "--solver", "euler:2", "--divergence", "hutchinson"])
    assert json.loads((workdir / "nll.json").read_text())["bits_per_dim"] > 0


def test_a_dataset_rebuilt_under_the_same_name_is_refused_on_resume(tmp_path):
    data_dir = tmp_path / "tfds"
    train(image_config(data_dir, num_steps=2), tmp_path / "run", progress=False)
    info = next(data_dir.glob("digits/*/dataset_info.json"))
    info.write_text(info.read_text() + "\n")  # a rebuild writes another dataset_info.json
    with pytest.raises(ValueError, match=r"The target data 'tfds:digits' changed since this run started"):
        train(image_config(data_dir, num_steps=4), tmp_path / "run", progress=False)


def test_image_batches_resume_inside_a_call(data_dir):
    """A stop at step 3 of the call 2..4: its position is the iterator's before that call, and
    after a restore the call's batches are read again, the same examples."""
    batches = build_engine(
        check_config(image_config(data_dir, steps_per_call=2, log_every=2, checkpoint_every=2))
    ).batches
    key = jax.random.key(0)
    batches(key, 0)
    want = jax.tree.map(np.asarray, batches(key, 2))
    position = batches.position(3)
    batches.restore(position, 3)
    got = jax.tree.map(np.asarray, batches(key, 2))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert position == batches.position(3) and position != batches.position(4)
