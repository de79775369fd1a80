"""What a run logs: the learning rate, the gradient norm, every loss metric and the periodic
evaluation in metrics.jsonl and TensorBoard, checked against independent computations."""

import json
import pathlib

import jax
import numpy as np
import optax
import pytest
from test_train import read_events

import fm_jax as fm
from fm_jax.train import apply_overrides, load_config, train
from fm_jax.train.evaluate import evaluate
from fm_jax.train.loop import build_engine, check_config
from fm_jax.train.metrics_log import EVAL_POINTS, EVAL_SOLVER

CONFIG = "toy2d"


def config_with(**fields):
    return apply_overrides(load_config(CONFIG), {k: str(v) for k, v in fields.items()})


@pytest.fixture(scope="module")
def fastode_run(tmp_path_factory):
    """fastode (loss = mse + beta kl) for 40 steps: a line every 10, an evaluation every 20, a
    linear warmup over 100 steps so that the logged learning rate moves."""
    workdir = tmp_path_factory.mktemp("logs") / "run"
    config = config_with(
        method="fastode",
        beta=0.5,
        num_steps=40,
        steps_per_call=10,
        log_every=10,
        eval_every=20,
        batch_size=64,
        checkpoint_every=0,
    )
    config.warmup_steps = 100  # a field of the images config, which toy2d leaves out
    train(config, workdir, progress=False)
    return workdir


def lines_of(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_each_line_holds_the_learning_rate_gradient_norm_and_the_loss_metrics(fastode_run):
    lines = lines_of(fastode_run)
    assert [line["step"] for line in lines] == [10, 20, 30, 40]
    for line in lines:
        # The rate of the window's last update (step s - 1) of the warmup 0 -> 1e-3 over 100 updates.
        assert line["lr"] == pytest.approx(1e-3 * (line["step"] - 1) / 100, rel=1e-6)
        assert np.isfinite(line["grad_norm"]) and line["grad_norm"] > 0
        # Window means of fastode's metrics: the loss is mse + beta kl step by step, so in the mean too.
        assert line["loss"] == pytest.approx(line["mse"] + 0.5 * line["kl"], rel=1e-5)
        assert line["kl"] > 0
    assert len({line["grad_norm"] for line in lines}) == 4


def test_the_evaluation_runs_every_eval_every_steps_and_matches_fm_jax_eval(fastode_run):
    lines = lines_of(fastode_run)
    assert [line["step"] for line in lines if "eval/w2" in line] == [20, 40]
    # The same held-out draws, solver and parameters as `fm-jax eval --num 1000 --solvers euler:20`.
    run = fm.train.load_run(fastode_run)
    report = evaluate(run, [EVAL_SOLVER], EVAL_POINTS)
    assert lines[-1]["eval/w2"] == pytest.approx(report["solvers"][str(EVAL_SOLVER)]["w2"], rel=1e-4)
    assert lines[1]["eval/w2"] != lines[-1]["eval/w2"]


def test_tensorboard_holds_every_logged_scalar(fastode_run):
    events = {(tag, step): value for tag, step, value in read_events(fastode_run / "tensorboard")}
    for line in lines_of(fastode_run):
        for name, value in line.items():
            if name != "step":
                assert events[(name, line["step"])] == pytest.approx(value, rel=1e-6), name
    assert {"lr", "grad_norm", "mse", "kl", "eval/w2"} <= {tag for tag, _ in events}


def test_the_logged_gradient_norm_is_the_global_norm_of_the_loss_gradient():
    config = config_with(method="icfm", num_steps=1, steps_per_call=1, log_every=1, batch_size=64)
    engine = build_engine(check_config(config))
    batches = engine.batches(engine.data_key, 0)
    state = engine.state
    # The step's keys (fm_jax.train.step): split(fold_in(key, step)), the loss takes the second.
    _, k_loss = jax.random.split(jax.random.fold_in(state.key, state.step))
    batch = jax.tree.map(lambda x: x[0], batches)
    grads = jax.grad(lambda p: engine.loss(engine.apply, p, k_loss, batch)[0])(state.params)
    flat = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(grads)])
    expected = float(np.sqrt(np.sum(flat**2)))
    assert float(optax.tree.norm(grads)) == pytest.approx(expected, rel=1e-5)
    _, metrics = engine.steps(state, batches)  # the state is donated: used last
    assert float(metrics["grad_norm"][0]) == pytest.approx(expected, rel=1e-5)


def test_a_bad_eval_every_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"config.eval_every must be an integer >= 0"):
        check_config(config_with(eval_every=-5))


def test_an_image_run_logs_the_pixel_fd_and_a_grid_of_samples(tmp_path, monkeypatch):
    from tensorboardX.proto import event_pb2

    from fm_jax.train import metrics_log
    from fm_jax.train.image_eval import evaluate_images
    from fm_jax.train.metrics_log import GRID, GRID_PIXELS

    monkeypatch.setattr(metrics_log, "EVAL_IMAGES", 2 * GRID * GRID)  # a smaller evaluation, for speed

    fields = {"data.dir": tmp_path / "tfds", "model.preset": "tiny", "batch_size": 16, "num_steps": 2}
    # warmup 5: the train step of test_image_train's runs, compiled once for both (the cache)
    fields |= {"steps_per_call": 1, "log_every": 2, "eval_every": 2, "checkpoint_every": 0, "warmup_steps": 5}
    config = apply_overrides(load_config("images"), {k: str(v) for k, v in fields.items()})
    train(config, tmp_path / "run", progress=False)
    line = lines_of(tmp_path / "run")[-1]
    # The EMA that `fm-jax eval` reads, the same held-out images and noise: the same distance.
    run = fm.train.load_run(tmp_path / "run")
    report = evaluate_images(run, [EVAL_SOLVER], metrics_log.EVAL_IMAGES)
    assert line["step"] == 2 and line["eval/fd_pixel"] == pytest.approx(
        report["solvers"][str(EVAL_SOLVER)]["fd_pixel"], rel=1e-4
    )
    images = []
    for path in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            length = int.from_bytes(data[i : i + 8], "little")
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            images += [(v.tag, event.step, v.image) for v in event.summary.value if v.HasField("image")]
    assert [(tag, step) for tag, step, _ in images] == [("eval/samples", 2)]
    h, w, _ = run.spec.data.shape
    image = images[0][2]
    side = GRID * (h + 1) - 1  # 8 x 8 cells and 1-pixel gaps, enlarged by a whole factor
    assert (image.height, image.width) == (side * (GRID_PIXELS // side),) * 2
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
