"""User-supplied point files as densities: loading, checks before compiling, training on them end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_jax import cli, data
from fm_jax.data import points

CONFIG = "toy2d"
SHORT = ["--config.num_steps=400", "--config.steps_per_call=100", "--config.log_every=200"]


def test_npy_and_npz_load_as_read_only_float32(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, labels=np.arange(50))
    np.savez(tmp_path / "c.npz", x)
    for name in ("a.npy", "b.npz", "c.npz"):
        loaded = points.load_points(tmp_path / name)
        assert loaded.dtype == np.float32 and not loaded.flags.writeable
        np.testing.assert_allclose(loaded, x, rtol=1e-6)
    # A rewritten file is read again, not served from the cache.
    np.save(tmp_path / "a.npy", 2 * x)
    np.testing.assert_allclose(points.load_points(tmp_path / "a.npy"), 2 * x, rtol=1e-6)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.where(np.arange(20)[:, None] == 7, np.nan, np.ones((20, 2))), r"1 rows with NaN .* row 7"),
        (np.where(np.arange(20)[:, None] >= 11, np.inf, np.ones((20, 2))), r"9 rows with NaN .* row 11"),
        (np.ones(20), r"shape \(20,\): save N >= 2 points as an \(N, d\) array"),
        (np.ones((1, 2)), r"shape \(1, 2\)"),
        (np.array([["a", "b"], ["c", "d"]]), "save real numbers"),
    ],
)
def test_bad_point_files_are_named_with_the_fix(tmp_path, array, message):
    np.save(tmp_path / "p.npy", array)
    with pytest.raises(ValueError, match=message):
        points.load_points(tmp_path / "p.npy")


def test_missing_file_and_ambiguous_npz(tmp_path):
    with pytest.raises(ValueError, match="No point file .*missing.npy"):
        points.load_points(tmp_path / "missing.npy")
    np.savez(tmp_path / "two.npz", a=np.ones((4, 2)), b=np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"holds the arrays \['a', 'b'\]: save the points under the key 'x'"):
        points.load_points(tmp_path / "two.npz")


def test_empirical_draws_rows_uniformly_inside_jit():
    rows = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    draws = np.asarray(jax.jit(points.empirical(rows), static_argnums=1)(jax.random.key(0), 20_000))
    assert draws.shape == (20_000, 2) and np.all(draws[:, 0] == draws[:, 1])
    counts = np.bincount(draws[:, 0].astype(int), minlength=10)
    # Each row has probability 1/10: 2,000 expected, std ~42.
    assert np.all(np.abs(counts - 2000) < 200)


def test_normal_takes_the_dimension_of_the_other_side(tmp_path):
    np.save(tmp_path / "p.npy", np.ones((5, 3)))
    src, tgt = data.densities("normal", f"file:{tmp_path / 'p.npy'}")
    assert src.dim == tgt.dim == 3 and src.sample(jax.random.key(0), 4).shape == (4, 3)
    src, tgt = data.densities(str(tmp_path / "p.npy"), "normal")  # a .npy spec needs no prefix
    assert tgt.dim == 3
    # Names resolve as the toy densities; the 2D normal draws the same numbers as toy2d's.
    src, tgt = data.densities("normal", "moons")
    key = jax.random.key(1)
    assert jnp.array_equal(src.sample(key, 8), data.toy2d.sample(key, "normal", 8))
    with pytest.raises(ValueError, match="dimension 3 and the target 'moons' dimension 2"):
        data.densities(str(tmp_path / "p.npy"), "moons")


def test_train_sample_eval_on_a_3d_point_file(tmp_path, monkeypatch):
    # N(0, I) -> N(m, 0.25 I) in 3D, given as 4,000 points.
    m = np.array([2.0, -1.0, 0.5])
    np.save(tmp_path / "target.npy", m + 0.5 * np.random.default_rng(0).normal(size=(4000, 3)))
    monkeypatch.chdir(tmp_path)
    cli.main(
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            "run",
            *SHORT,
            "--config.method=icfm",
            "--config.target=target.npy",
            "--config.learning_rate=3e-3",
        ]
    )
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["target"] == f"file:{tmp_path / 'target.npy'}"  # absolute: the run works from anywhere
    monkeypatch.chdir(tmp_path.parent)
    cli.main(["eval", "--workdir", str(tmp_path / "run"), "--num", "500", "--solvers", "euler:20"])
    row = json.loads((tmp_path / "run" / "eval.json").read_text())["solvers"]["euler:20"]
    # W2(N(0, I), N(m, 0.25 I)) = sqrt(|m|^2 + 3 (1 - 0.5)^2) = 2.45; the trained flow lands far closer.
    assert row["w2"] < 0.8 and row["nfe"] == 20
    cli.main(["sample", "--workdir", str(tmp_path / "run"), "--solver", "euler", "--steps", "4", "--num", "200"])
    samples = np.load(tmp_path / "run" / "samples_euler_4steps.npz")
    assert samples["x1"].shape == (200, 3) and (tmp_path / "run" / "samples_euler_4steps.png").stat().st_size > 0


def test_one_dimensional_points_train_and_plot(tmp_path):
    np.save(tmp_path / "bimodal.npy", np.concatenate([np.full((50, 1), -2.0), np.full((50, 1), 2.0)]))
    run = tmp_path / "run"
    cli.main(
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(run),
            "--config.num_steps=100",
            "--config.steps_per_call=100",
            "--config.log_every=100",
            f"--config.target={tmp_path / 'bimodal.npy'}",
        ]
    )
    cli.main(["sample", "--workdir", str(run), "--solver", "euler", "--steps", "2", "--num", "100"])
    assert (run / "samples_euler_2steps.png").stat().st_size > 0


def test_nan_in_user_data_fails_before_compiling_and_keeps_the_workdir(tmp_path, monkeypatch):
    bad = np.random.default_rng(0).normal(size=(100, 2))
    bad[42, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me\n")

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled before checking the data")

    monkeypatch.setattr(jax, "jit", no_compiling)
    with pytest.raises(SystemExit, match=r"bad.npy has 1 rows with NaN or infinite values \(the first is row 42\)"):
        cli.main(
            ["train", "--config", CONFIG, "--workdir", str(workdir), f"--config.source=file:{tmp_path / 'bad.npy'}"]
        )
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]
    assert (workdir / "notes.txt").read_text() == "keep me\n"
