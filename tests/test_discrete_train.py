"""Discrete flows trained by the engine: digits' pixels as 64 tokens of 17 levels into the sharded
step, the ELBO of a short run far below the uniform bound, 4 devices against 1, exact resume,
no recompilation, and the config's errors before anything compiles."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import fm_jax as fm
from fm_jax import cli
from fm_jax.data import images
from fm_jax.train import apply_overrides, load_config, train
from fm_jax.train.loop import build_engine, check_config
from fm_jax.train.workdir import load_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def token_config(data_dir, **overrides):
    fields = {
        "data.dir": str(data_dir),
        "model.preset": "tiny",
        "batch_size": 32,
        "num_steps": 20,
        "steps_per_call": 10,
        "log_every": 10,
        "checkpoint_every": 10,
        "warmup_steps": 5,
    } | overrides
    return apply_overrides(load_config("tokens"), {k: str(v) for k, v in fields.items()})


def params_of(state):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A dfm_mask run of 200 steps on digits, trained through the CLI."""
    workdir = tmp_path_factory.mktemp("dfm")
    overrides = [
        f"--config.{k}={v}" for k, v in {"data.dir": data_dir, "model.preset": "tiny", "num_steps": 200}.items()
    ]
    cli.main(["train", "--config", "tokens", "--workdir", str(workdir), "--config.log_every=50", *overrides])
    return workdir


def test_a_short_digits_run_scores_far_below_the_uniform_bound(trained, data_dir, capsys):
    run = load_run(trained)
    path = run.spec.method.token_path(run.spec.loss)
    assert path == fm.discrete.MixturePath(17, "mask") and run.spec.model.num_states == 18
    real, _ = images.load_split("digits", str(data_dir), "test")
    tokens = images.to_tokens(jax.random.key(0), jnp.asarray(real), 17)
    assert int(tokens.max()) == 16 and tokens.shape == (300, 64)
    posterior = lambda t, x: run.apply(run.params, t, x, None)
    nats = jax.jit(lambda key: fm.discrete.elbo(posterior, tokens, path, key, 8))(jax.random.key(1))
    bits = float(jnp.mean(fm.discrete.bits_per_token(nats, 64)))
    # log2(17) = 4.09 bits per pixel for a uniform model; measured 2.44 after 200 steps.
    assert bits < 3.0, bits
    # `fm-jax nll` reports the same bound on the same 300 images, in nll.json.
    cli.main(["nll", "--workdir", str(trained), "--num", "300", "--num-times", "8"])
    out = capsys.readouterr().out
    report = json.loads((trained / "nll.json").read_text())
    assert report["bits_per_dim"] == pytest.approx(bits, abs=4 * report["bits_per_dim_se"])
    assert report["uniform_bits_per_dim"] == pytest.approx(math.log2(17)) and "an upper bound" in out


@pytest.mark.parametrize("argv, tag, nfe", [([], "euler100", 100), (["--solver", "unmask"], "unmask", 64)])
def test_fm_jax_sample_writes_the_tokens_and_their_image_grid(trained, capsys, argv, tag, nfe):
    cli.main(["sample", "--workdir", str(trained), "--num", "16", *argv])
    assert f"(NFE {nfe})" in capsys.readouterr().out
    saved = np.load(trained / f"samples_{tag}.npz")
    assert saved["tokens"].shape == (16, 64) and saved["tokens"].max() <= 16 and int(saved["nfe"]) == nfe
    np.testing.assert_array_equal(saved["images"], images.from_tokens(saved["tokens"], 17, (8, 8, 1)))
    assert Image.open(trained / f"samples_{tag}.png").size[0] > 64
    with pytest.raises(SystemExit, match="--solver euler or unmask"):
        cli.main(["sample", "--workdir", str(trained), "--solver", "dopri5"])
    with pytest.raises(SystemExit, match="are for continuous flows"):
        cli.main(["sample", "--workdir", str(trained), "--rtol", "1e-3"])


def test_fm_jax_eval_compares_samplers_with_held_out_digits(trained, capsys):
    cli.main(["eval", "--workdir", str(trained), "--num", "100", "--solvers", "euler:4", "euler:50:0.5", "unmask"])
    rows = json.loads((trained / "eval.json").read_text())["solvers"]
    assert [rows[s]["nfe"] for s in ("euler:4", "euler:50:0.5", "unmask")] == [4, 50, 64]
    for row in rows.values():
        assert row["fd_pixel"] > 0 and 0 < row["marginal_tv"] < 0.5
    assert "marginal TV" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="euler:STEPS, euler:STEPS:ETA"):
        cli.main(["eval", "--workdir", str(trained), "--solvers", "dopri5"])


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "dfm_mask", "mesh.param_layout": "fsdp"},
        {"method": "dfm_uniform", "dfm.objective": "kl"},
        {"method": "dfm_mask", "model.kind": "unet", "mesh.param_layout": "fsdp", "steps_per_call": 1},
    ],
    ids=["mask_fsdp", "uniform_kl", "unet_fsdp"],
)
def test_token_batches_give_the_same_losses_on_four_devices_as_on_one(data_dir, fields):
    losses = {}
    for devices in (1, 4):
        spec = check_config(token_config(data_dir, **fields, **{"mesh.num_devices": devices}))
        engine = build_engine(spec)
        state, values = engine.state, []
        for call in range(2):
            state, out = engine.steps(state, engine.batches(engine.data_key, call * spec.engine.steps_per_call))
            values.append(np.asarray(out["loss"]))
        losses[devices] = np.concatenate(values)
    assert np.all(np.isfinite(losses[1])) and losses[1].std() > 0
    np.testing.assert_allclose(losses[4], losses[1], rtol=2e-4, atol=1e-5)


def test_an_interrupted_token_run_resumes_bitwise_and_later_calls_compile_nothing(data_dir, tmp_path):
    whole = train(token_config(data_dir), tmp_path / "whole", progress=False)
    train(token_config(data_dir, num_steps=10), tmp_path / "halves", progress=False)
    resumed = train(token_config(data_dir), tmp_path / "halves", progress=False)
    for a, b in zip(params_of(whole), params_of(resumed)):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a).max() > 0 for a in params_of(whole))

    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    engine = build_engine(check_config(token_config(data_dir)))
    state, _ = engine.steps(engine.state, engine.batches(engine.data_key, 0))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for call in range(1, 3):
            state, values = engine.steps(state, engine.batches(engine.data_key, call * 10))
        values["loss"].block_until_ready()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"data.levels": 1}, "config.data.levels must be an integer in"),
        ({"model.kind": "mlp"}, "model.kind=transformer"),
        ({"method": "fm"}, "the transformer is for discrete flows only"),
        ({"eval_every": 10}, "set --config.eval_every=0"),
        ({"dfm.objective": "mse"}, "Unknown config.dfm.objective 'mse'"),
        ({"dfm.scheduler": "linear"}, "Unknown scheduler 'linear'"),
        ({"target": "moons"}, "a tfds:NAME target"),
    ],
)
def test_bad_token_configs_are_refused_before_compiling(data_dir, fields, message):
    with pytest.raises(ValueError, match=message):
        check_config(token_config(data_dir, **fields))


def test_tokens_are_the_pixels_levels_and_come_back_as_images():
    u = jnp.asarray(np.rint(np.arange(17) * 255 / 16).astype(np.uint8).reshape(1, 1, 17, 1))
    tokens = images.to_tokens(jax.random.key(0), u, 17)
    np.testing.assert_array_equal(tokens, np.arange(17)[None])  # digits' levels recovered exactly
    np.testing.assert_array_equal(images.from_tokens(tokens, 17, (1, 17, 1)), u)
    binary = images.to_tokens(jax.random.key(0), jnp.asarray([[[[0], [127], [128], [255]]]], jnp.uint8), 2)
    np.testing.assert_array_equal(binary, [[0, 0, 1, 1]])
    assert math.isclose(float(images.from_tokens(np.array([[1]]), 2, (1, 1, 1))[0, 0, 0, 0]), 255)


def test_a_class_conditional_token_run_samples_each_class_with_guidance(data_dir, tmp_path, capsys):
    """`fm-jax sample --label C --guidance W` on a conditional dfm run trained with label dropout:
    the guided posterior (`fm_jax.discrete.guided_posterior`) through the CLI, its file named by
    both; guidance is refused with a clear message on an unconditional run."""
    workdir = tmp_path / "cond"
    train(token_config(data_dir, conditional=True, label_dropout=0.2, num_steps=10), workdir, progress=False)
    cli.main(["sample", "--workdir", str(workdir), "--num", "8", "--steps", "4", "--label", "3", "--guidance", "2"])
    out = capsys.readouterr().out
    assert "guidance w = 2" in out and "(NFE 4)" in out
    saved = np.load(workdir / "samples_euler4_label3_guidance2.npz")
    assert saved["tokens"].shape == (8, 64) and saved["tokens"].max() < 17
    unconditional = tmp_path / "uncond"
    train(token_config(data_dir, num_steps=10), unconditional, progress=False)
    with pytest.raises(SystemExit, match="Guidance needs a class-conditional run"):
        cli.main(["sample", "--workdir", str(unconditional), "--num", "4", "--steps", "2", "--guidance", "2"])


def test_a_token_unet_run_learns_the_digits_pixels(data_dir, tmp_path):
    """`--config.model.kind=unet`: the posterior network is a `TokenUNet` on the 8x8 grid, trained
    and scored by the same engine and ELBO as the transformer."""
    from fm_jax.train.token_eval import token_nll

    fields = {"model.kind": "unet", "num_steps": 100, "steps_per_call": 1, "log_every": 50, "checkpoint_every": 100}
    config = token_config(data_dir, **fields)
    train(config, tmp_path / "unet", progress=False)
    run = load_run(tmp_path / "unet")
    from fm_jax.train.state import build_module

    assert isinstance(build_module(run.spec.model), fm.models.TokenUNet)
    report = token_nll(run, 300, num_times=4)
    # log2(17) = 4.09 bits per pixel for a uniform model.
    assert report["bits_per_dim"] < 3.5, report["bits_per_dim"]
