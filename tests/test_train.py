"""The training driver and `fm-jax train`: a short real run, its files, and errors before compiling."""

import json
import pathlib
import re
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fm_jax as fm
from fm_jax import cli
from fm_jax.train import METHODS, LossSpec, RunSpec, apply_overrides, build_loss, load_config
from fm_jax.train.spec import resolve_defaults
from fm_jax.train.step import ema_decay_at, ema_initial_weight

CONFIG = "toy2d"
SHORT = ["--config.num_steps=400", "--config.steps_per_call=50", "--config.log_every=200"]


def test_train_writes_config_metrics_and_a_checkpoint_that_samples_the_target(tmp_path, capsys):
    workdir = tmp_path / "run"
    cli.main(
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            *SHORT,
            "--config.target=8gaussians",
            "--config.learning_rate=3e-3",
        ]
    )
    assert "trained 400 steps of otcfm" in capsys.readouterr().out
    config = json.loads((workdir / "config.json").read_text())
    assert config["target"] == "8gaussians" and config["num_steps"] == 400
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [200, 400]
    assert lines[1]["loss"] < lines[0]["loss"]
    # The saved parameters define a flow whose samples sit on the 8 modes at radius 5.
    run = fm.train.load_run(workdir)
    assert run.step == 400 and sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["400"]
    x = fm.sample(
        fm.velocity_field(run.apply, run.params),
        jax.random.normal(jax.random.key(0), (2000, 2)),
        solver="dopri5",
        rtol=1e-4,
        atol=1e-4,
    ).x
    radius = np.linalg.norm(np.asarray(x), axis=1)
    assert abs(np.median(radius) - 5.0) < 0.5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.method=rectified"], "Unknown config.method 'rectified'"),
        (["--config.target=moon"], "Unknown density 'moon'"),
        (["--config.lr=1e-3"], "Unknown config field 'lr'"),
        (["--config.model.widht=8"], "Unknown config field 'model.widht'"),
        (["--config.num_steps=1.5"], "expected an integer"),
        (["--config.steps_per_call=300"], "multiples of steps_per_call"),
        (["--config.method=fm", "--config.source=moons"], "needs the 'normal' source"),
        (["--learning-rate=1"], "Unknown argument"),
        (["--config.batch_size=100"], "batch_size 100 does not split over 8 devices"),
        (["--config.mesh.num_devices=9"], "num_devices = 9, but 8 devices are visible"),
        (["--config.coupling_scope=group", "--config.coupling_group=5"], "coupling_group 5 does not divide"),
        (["--config.coupling_scope=local"], "Unknown coupling_scope 'local'"),
        (["--config.mesh.param_layout=zero3"], "Unknown mesh.param_layout 'zero3'"),
        (["--config.precision=fp16"], "Unknown precision 'fp16'"),
    ],
)
def test_bad_config_fails_before_anything_is_written(tmp_path, extra, message):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit, match=message):
        cli.main(["train", "--config", CONFIG, "--workdir", str(workdir), *extra])
    assert not workdir.exists()


def run_files(workdir) -> dict:
    """Every file of a run but its lock (which names the last process to hold it)."""
    return {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != "lock"}


def test_a_finished_or_different_run_is_never_overwritten(trained):
    before = run_files(trained)
    same = ["--config.target=8gaussians", "--config.learning_rate=3e-3", "--config.ema_decay=0.5"]
    with pytest.raises(SystemExit, match=r"already holds a trained model \(step 400\)"):
        cli.main(["train", "--config", CONFIG, "--workdir", str(trained), *SHORT, *same])
    with pytest.raises(SystemExit, match=r"holds a run with another config \(learning_rate differ\)"):
        cli.main(
            [
                "train",
                "--config",
                CONFIG,
                "--workdir",
                str(trained),
                *SHORT,
                "--config.target=8gaussians",
                "--config.ema_decay=0.5",
                "--config.num_steps=800",
                "--config.learning_rate=1e-2",
            ]
        )
    # Another method into a finished run: the config that differs is named first, not num_steps.
    with pytest.raises(SystemExit, match=r"holds a run with another config \(method differ\)"):
        cli.main(["train", "--config", CONFIG, "--workdir", str(trained), *SHORT, *same, "--config.method=icfm"])
    assert run_files(trained) == before


def test_methods_are_the_published_path_and_coupling_pairs():
    loss = lambda name, sigma: build_loss(name, LossSpec(sigma=sigma))
    assert loss("otcfm", 0.1).coupling == fm.couplings.ExactOT()
    assert loss("sbcfm", 0.5).path == fm.paths.BrownianBridge(0.5)
    assert loss("sbcfm", 0.5).coupling == fm.couplings.SchrodingerBridge(0.5)
    assert loss("fm", 1e-4).path == fm.paths.CondOT(sigma_min=1e-4)
    assert loss("si", 0.0).path == fm.paths.Trigonometric()
    assert loss("icfm", 0.1).path == fm.paths.ICFM(0.1)
    assert build_loss("otcfm", LossSpec(ot_solver="network_simplex")).coupling.solver == "network_simplex"


def test_the_method_table_says_what_each_method_allows():
    for method in METHODS.values():
        if method.model == "flow":
            assert method.path is None and not method.has_score
            continue
        if method.model == "tokens":  # a discrete flow: a mixture path over tokens, no score
            assert method.path is None and not method.has_score and method.token_source in fm.discrete.SOURCES
            loss = build_loss(method.name, LossSpec(vocab_size=17))
            assert loss.path == fm.discrete.MixturePath(17, method.token_source)
            continue
        # The score follows from the velocity only for a Gaussian path drawn independently of x1.
        independent = (
            method.coupling is not None and method.coupling(LossSpec(**method.defaults)) == fm.couplings.Independent()
        )
        assert method.has_score == independent, method.name
        assert isinstance(method.conditional_path(0.1), fm.paths.GaussianPath)
        if method.normal_source_only:
            with pytest.raises(ValueError, match="needs the 'normal' source"):
                build_loss(method.name, LossSpec(), source="moons")
        elif method.coupling is not None:
            assert build_loss(method.name, LossSpec(sigma=0.1), source="moons").path == method.conditional_path(0.1)
    with pytest.raises(ValueError, match=r"Unknown config.method 'ot-cfm'; choose one of \['icfm', 'otcfm'"):
        build_loss("ot-cfm")


def test_overrides_are_typed_like_the_field():
    config = apply_overrides(load_config(CONFIG), {"num_steps": "1e3", "ema_decay": "0.99", "model.activation": "relu"})
    assert config.num_steps == 1000 and isinstance(config.num_steps, int)
    assert config.ema_decay == 0.99 and config.model.activation == "relu"


def test_non_gaussian_source_and_ema(tmp_path):
    """SB-CFM from moons to 8 Gaussians (x0 drawn from the source density), with parameter EMA."""
    from fm_jax.train import train

    config = apply_overrides(
        load_config(CONFIG),
        {
            "method": "sbcfm",
            "sigma": "1.0",
            "source": "moons",
            "target": "8gaussians",
            "ema_decay": "0.9",
            "num_steps": "100",
            "steps_per_call": "50",
            "log_every": "50",
        },
    )
    state = train(config, tmp_path / "run", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # The EMA trails the parameters: different, but closer to them than the initialization is.
    init = fm.train.state.build_model(RunSpec.from_config(config).model, config.seed)[1]
    gap = lambda a, b: sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert 0 < gap(state.ema_params, state.params) < gap(init, state.params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    cli.main(
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            *SHORT,
            "--config.target=8gaussians",
            "--config.learning_rate=3e-3",
            "--config.ema_decay=0.5",
        ]
    )
    return workdir


def test_sample_names_files_after_the_solver_and_tolerances(trained):
    cli.main(["sample", "--workdir", str(trained), "--rtol", "1e-3", "--atol", "1e-5", "--num", "100"])
    assert (trained / "samples_dopri5_rtol0.001_atol1e-05.npz").is_file()
    assert (trained / "samples_dopri5_rtol0.001_atol1e-05.png").is_file()


def test_sample_writes_samples_and_a_figure(trained, capsys):
    cli.main(["sample", "--workdir", str(trained), "--solver", "heun", "--steps", "8", "--num", "300"])
    assert "NFE 16" in capsys.readouterr().out
    data = np.load(trained / "samples_heun_8steps.npz")
    assert data["x1"].shape == (300, 2) and int(data["nfe"]) == 16
    assert data["trajectory"].shape == (33, 300, 2)
    np.testing.assert_allclose(data["trajectory"][0], data["x0"])
    png = (trained / "samples_heun_8steps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_eval_reports_every_metric_per_solver(trained):
    result = cli.main(["eval", "--workdir", str(trained), "--num", "500", "--solvers", "dopri5", "euler:2"])
    assert result == 0
    report = json.loads((trained / "eval.json").read_text())
    rows = report["solvers"]
    assert set(rows) == {"dopri5", "euler:2"} and rows["euler:2"]["nfe"] == 2
    for row in rows.values():
        assert set(row) == {"w2", "mmd2", "path_energy", "normalized_path_energy", "curvature", "nfe"}
        assert np.isfinite(list(row.values())).all()
    # A trained flow carries N(0, I) near the radius-5 modes: W2 to the target well below the source's ~4.6.
    assert rows["dopri5"]["w2"] < 1.5 < report["w2_sq_source_target"] ** 0.5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--solver", "rk4"], "Unknown solver 'rk4'"),
        (["sample", "--steps", "4", "--rtol", "1e-3"], "not both"),
        (["eval", "--solvers", "euler:x"], "NAME:STEPS"),
        (["eval"], "holds no trained model"),
        (["sample"], "holds no trained model"),
    ],
)
def test_sample_and_eval_bad_input(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main([argv[0], "--workdir", str(tmp_path), *argv[1:]])


def read_events(directory):
    """(tag, step, value) of every scalar in the TensorBoard event files under `directory` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            length = int.from_bytes(data[i : i + 8], "little")
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_tensorboard_events_and_summary_match_the_jsonl_log(trained):
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    events = read_events(trained / "tensorboard")
    for line in lines:
        assert ("loss", line["step"], pytest.approx(line["loss"], rel=1e-6)) in events
        assert line["examples_per_s"] == pytest.approx(256 * line["steps_per_s"])
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["devices"] == 8 and summary["compile_s"] > 0
    assert summary["examples_per_s"] == pytest.approx(256 * summary["steps_per_s"])


def test_steps_per_s_leaves_out_the_time_spent_writing_checkpoints(tmp_path, monkeypatch):
    """A slow checkpoint write shows in checkpoint_s and the wall time, not in the steps' throughput."""
    from fm_jax.train.checkpoints import Checkpoints

    save, pause = Checkpoints.save, 1.0

    def slow_save(self, *args):
        time.sleep(pause)
        save(self, *args)

    monkeypatch.setattr(Checkpoints, "save", slow_save)
    workdir = tmp_path / "run"
    cli.main(
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            "--config.method=icfm",
            "--config.num_steps=200",
            "--config.steps_per_call=50",
            "--config.log_every=100",
            "--config.checkpoint_every=100",
        ]
    )
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["checkpoint_s"] >= 2 * pause and summary["train_s"] > summary["checkpoint_s"]
    assert summary["steps_per_s"] == pytest.approx(200 / (summary["train_s"] - summary["checkpoint_s"]))
    # The log at step 200 comes after the save at step 100 and before its own: its rate leaves
    # out one pause, which puts it above the rate over the wall time less both pauses.
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 200 and lines[-1]["steps_per_s"] > 200 / (summary["train_s"] - 2 * pause)


def spec_of(**fields) -> RunSpec:
    return RunSpec.from_config(apply_overrides(load_config(CONFIG), {k: str(v) for k, v in fields.items()}))


def test_methods_carry_their_defaults_and_an_explicit_value_wins():
    # SB-CFM's own sigma (epsilon = 2 sigma^2 = 2), where the config leaves sigma unset.
    sbcfm = spec_of(method="sbcfm")
    assert sbcfm.loss.sigma == 1.0
    assert sbcfm.method.coupling(sbcfm.loss) == fm.couplings.SchrodingerBridge(1.0)
    assert sbcfm.method.conditional_path(sbcfm.loss.sigma) == fm.paths.BrownianBridge(1.0)
    assert spec_of(method="sbcfm", sigma=0.3).loss.sigma == 0.3  # --config.sigma=0.3 wins
    otcfm = spec_of(method="otcfm")
    assert (otcfm.loss.sigma, otcfm.loss.ot_solver) == (0.1, "auto")
    # "auto" is the host network simplex on these CPU devices (the auction on a GPU or TPU).
    assert otcfm.method.coupling(otcfm.loss).solver == "network_simplex"
    assert [fm.couplings.auto_solver(p) for p in ("cpu", "gpu", "tpu")] == ["network_simplex", "auction", "auction"]
    assert spec_of(method="icfm").loss.sigma == 0.1 and spec_of(method="si").loss.sigma == 0.0
    # The resolved config (what config.json records) and the defaults applied, which the run prints.
    resolved, applied = resolve_defaults(apply_overrides(load_config(CONFIG), {"method": "sbcfm"}))
    assert resolved.sigma == 1.0 and applied == {"sigma": 1.0}
    assert resolve_defaults(apply_overrides(load_config(CONFIG), {"method": "sbcfm", "sigma": "0.5"}))[1] == {}
    # A config built in Python leaves a field unset with None.
    config = load_config(CONFIG)
    config.method, config.sigma, config.ot_solver = "otcfm", None, None
    assert (RunSpec.from_config(config).loss.sigma, RunSpec.from_config(config).loss.ot_solver) == (0.1, "auto")
    # SB-CFM's Sinkhorn on large batches: the online (memory-bounded) geometry from the config.
    online = spec_of(method="sbcfm", sinkhorn_online=64)
    assert online.method.coupling(online.loss) == fm.couplings.SchrodingerBridge(1.0, online=64)
    # SB-CFM at sigma = 0 (epsilon = 0) cannot couple: refused, naming the fix.
    with pytest.raises(ValueError, match=r"sigma > 0 .*--config.sigma=1"):
        spec_of(method="sbcfm", sigma=0)


def test_the_methods_defaults_name_only_fields_the_configs_have():
    configs = [load_config(name) for name in ("toy2d", "images")]
    for method in METHODS.values():
        assert method.defaults, method.name
        for field in method.defaults:
            assert all(field in config for config in configs), (method.name, field)
            assert field in {f.name for f in LossSpec.__dataclass_fields__.values()}
        with pytest.raises(TypeError):
            method.defaults["sigma"] = 5.0  # read-only: one method cannot change another's


def test_an_sbcfm_run_records_and_reports_its_default_sigma(tmp_path, capsys):
    fields = {"method": "sbcfm", "num_steps": 2, "steps_per_call": 2, "log_every": 2, "batch_size": 64}
    config = apply_overrides(load_config(CONFIG), {k: str(v) for k, v in fields.items()})
    fm.train.train(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["sigma"] == 1.0
    assert "sbcfm's defaults: sigma = 1.0 (set --config.sigma to change)" in capsys.readouterr().err
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["sinkhorn_converged"] == 1.0 and line["sinkhorn_epsilon"] == pytest.approx(2.0)


def test_an_unconverged_sinkhorn_plan_is_reported_once_with_its_step_epsilon_and_fix(tmp_path, capsys):
    # sigma = 0.02: epsilon = 2 sigma^2 = 8e-4, far too small for 2,000 Sinkhorn iterations.
    fields = {
        "method": "sbcfm",
        "sigma": 0.02,
        "num_steps": 4,
        "steps_per_call": 2,
        "log_every": 2,
        "checkpoint_every": 0,
        "batch_size": 64,
    }
    config = apply_overrides(load_config(CONFIG), {k: str(v) for k, v in fields.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # Printed to stderr as Python does by default (pytest would record them instead).
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        fm.train.train(config, tmp_path / "run", progress=True)
    # Once, and not also the coupling's own host warning; on a line of its own, not in the progress bar's.
    sinkhorn = [piece for piece in re.split(r"[\r\n]", capsys.readouterr().err) if "Sinkhorn" in piece]
    assert len(sinkhorn) == 1 and "%|" not in sinkhorn[0], sinkhorn
    assert re.search(r"did not converge at step [1-4] \(epsilon = 0.0008, 2000 iterations\)", sinkhorn[0])
    assert "--config.sigma" in sinkhorn[0]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert min(line["sinkhorn_converged"] for line in lines) < 1.0
    assert lines[0]["sinkhorn_epsilon"] == pytest.approx(8e-4) and lines[0]["sinkhorn_iterations"] == 2000


def test_ema_warm_up_matches_an_explicit_scalar_average():
    # The EMA of a scalar parameter that is 1 at step 0 and 0 after every update: its value is
    # the weight the initial parameter still holds, decay_t = min(decay, (1 + t) / (10 + t)).
    for decay in (0.0, 0.5, 0.9, 0.999):
        ema, count = 1.0, 0
        for steps in (0, 1, 7, 300, 12_000):
            for t in range(count, steps):
                d = min(decay, (1 + t) / (10 + t))
                ema = d * ema + (1 - d) * 0.0
            count = steps
            assert ema_initial_weight(decay, steps) == pytest.approx(ema, rel=1e-9, abs=1e-300), (decay, steps)
    # Inside jit on an array of steps, as in the train step, and on Python ints.
    t = jnp.arange(0, 20_000, 37)
    np.testing.assert_allclose(
        jax.jit(lambda t: ema_decay_at(0.999, t))(t), [ema_decay_at(0.999, int(s)) for s in t], rtol=1e-6
    )
    assert (ema_decay_at(0.999, 0), ema_decay_at(0.999, 8), ema_decay_at(0.999, 20_000)) == (0.1, 0.5, 0.999)
    # A 300-step run at decay 0.999: 0.999^300 = 74% of the initial weights without the warm-up.
    assert 0.999**300 > 0.7 and ema_initial_weight(0.999, 300) < 1e-15
    with pytest.raises(ValueError, match="decay must be in"):
        ema_initial_weight(1.0, 3)


def test_the_train_step_averages_the_parameters_with_the_warmed_up_decay():
    """EMA_{t+1} = d_t EMA_t + (1 - d_t) params_{t+1}, d_t = min(decay, (1 + t) / (10 + t)),
    checked against the parameters of each step; one call of 4 steps gives the same EMA."""
    from fm_jax.train.loop import build_engine, check_config

    def engine(steps_per_call):
        fields = {"method": "icfm", "ema_decay": 0.99, "num_steps": 4, "steps_per_call": steps_per_call}
        fields |= {"log_every": 4, "batch_size": 64}
        return build_engine(check_config(apply_overrides(load_config(CONFIG), {k: str(v) for k, v in fields.items()})))

    one = engine(1)
    state = one.state
    ema = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    for t in range(4):
        state, _ = one.steps(state, one.batches(one.data_key, t))
        d = min(0.99, (1 + t) / (10 + t))
        ema = [d * e + (1 - d) * np.asarray(p) for e, p in zip(ema, jax.tree.leaves(state.params))]
    for got, want in zip(jax.tree.leaves(state.ema_params), ema):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    four = engine(4)
    looped, _ = four.steps(four.state, four.batches(four.data_key, 0))
    for got, want in zip(jax.tree.leaves(looped.ema_params), ema):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sigma", [float("nan"), -0.1, float("inf")])
def test_an_unset_or_bad_sigma_never_reaches_a_loss(sigma):
    with pytest.raises(ValueError, match=r"sigma must be a finite number >= 0.*resolve_defaults"):
        LossSpec(sigma=sigma)
