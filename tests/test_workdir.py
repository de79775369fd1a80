"""Reading runs back: `load_run(params="ema" | "raw")`, the EMA warning, and `fm-jax info`."""

import json
import warnings

import jax
import numpy as np
import pytest

from fm_jax import cli
from fm_jax.train.workdir import EMA_WARN_WEIGHT, describe, load_run

SHORT = ["--config.num_steps=40", "--config.steps_per_call=20", "--config.log_every=20", "--config.checkpoint_every=20"]


def train(workdir, *extra):
    cli.main(["train", "--config", "toy2d", "--workdir", str(workdir), *SHORT, *extra])
    return workdir


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("ema") / "run", "--config.ema_decay=0.9")


def test_params_choose_the_ema_or_the_raw_weights(ema_run, tmp_path):
    ema, raw = load_run(ema_run, params="ema"), load_run(ema_run, params="raw")
    assert (ema.params_kind, raw.params_kind) == ("ema", "raw") and ema.step == raw.step == 40
    differ = jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), ema.params, raw.params)
    )
    assert any(differ)
    # A run without an EMA reads its raw weights whichever is asked for.
    plain = load_run(train(tmp_path / "plain", "--config.ema_decay=0"), params="ema")
    assert plain.params_kind == "raw"
    with pytest.raises(ValueError, match=r"params must be one of \['ema', 'raw'\], got 'swa'"):
        load_run(ema_run, params="swa")


def test_an_ema_that_still_holds_its_initial_weights_warns(ema_run, monkeypatch):
    from fm_jax.train import step

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(ema_run, params="ema")  # 40 steps at decay 0.9 keep almost nothing of the initial weights
        load_run(ema_run, params="raw")
    # A slow EMA read early: the warning names the share of initial weights and the fix.
    monkeypatch.setattr(step, "ema_initial_weight", lambda decay, steps: 0.8)
    with pytest.warns(UserWarning, match=r"still holds 80% of the initial random weights.*--params raw"):
        load_run(ema_run, params="ema")
    assert EMA_WARN_WEIGHT == 0.5


def test_sample_reads_the_params_asked_for(ema_run, capsys):
    args = ["sample", "--workdir", str(ema_run), "--solver", "euler", "--steps", "4", "--num", "50"]
    cli.main([*args, "--params", "raw"])
    raw = np.load(ema_run / "samples_euler_4steps.npz")["x1"]
    assert "at step 40: raw parameters" in capsys.readouterr().err
    cli.main(args)
    ema = np.load(ema_run / "samples_euler_4steps.npz")["x1"]
    assert not np.array_equal(raw, ema)


def test_info_says_what_a_workdir_holds(ema_run, tmp_path, capsys):
    cli.main(["sample", "--workdir", str(ema_run), "--solver", "euler", "--steps", "2", "--num", "20"])
    capsys.readouterr()
    described = describe(ema_run)
    cli.main(["info", str(ema_run)])
    out = capsys.readouterr().out
    assert described["method"] == "otcfm" and described["checkpoints"] == [20, 40] and described["step"] == 40
    assert described["last_metrics"]["step"] == 40 and "samples_euler_2steps.npz" in described["outputs"]
    assert f"{ema_run}: otcfm normal -> moons" in out
    assert "40 of 40 (finished)" in out and "checkpoints 20, 40" in out and "samples_euler_2steps.png" in out
    # A run stopped before its last step is resumable; a folder that is no run says what writes one.
    config = json.loads((ema_run / "config.json").read_text())
    (ema_run / "config.json").write_text(json.dumps(config | {"num_steps": 100}))
    try:
        cli.main(["info", str(ema_run)])
    finally:
        (ema_run / "config.json").write_text(json.dumps(config))
    assert "40 of 100 (resumable with the same command)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="is not a run's workdir"):
        cli.main(["info", str(tmp_path)])
