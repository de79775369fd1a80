"""Inception FID of image runs: the training split's reference statistics cached once and
invalidated by the data, the input stage and the weights; `fm-jax eval` reporting it."""

import json
import shutil

import numpy as np
import pytest

from fm_jax import cli, fid
from fm_jax.data import prepare
from fm_jax.train import inception_fid

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The standard weights, converted once for this module."""
    from fm_jax import fid_weights

    return fid_weights.write_weights(tmp_path_factory.mktemp("weights") / "fid_inception.npz")


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 8, 8, 1), dtype=np.uint8)


def test_reference_statistics_are_cached_and_remade_when_what_they_depend_on_changes(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("FM_JAX_CACHE", str(tmp_path / "cache"))
    data = images(8, 0)  # 8 images everywhere in this module: one Inception program (batch 8) for all
    scorer = inception_fid.InceptionFID(weights)
    first = scorer.reference("toy", "train", data)
    (cached,) = (tmp_path / "cache" / "fid_stats").iterdir()
    assert cached.name.startswith("toy-train-")

    def computed(*args, **kwargs):
        raise AssertionError("the statistics were computed again")

    with monkeypatch.context() as m:
        m.setattr(fid, "feature_stats_of", computed)
        again = inception_fid.InceptionFID(weights).reference("toy", "train", data)
    np.testing.assert_array_equal(np.asarray(again.mu), np.asarray(first.mu))
    assert again.n == first.n == 8

    changed = data.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel
    other_weights = tmp_path / "other.npz"
    shutil.copy(weights, other_weights)
    with open(other_weights, "ab") as f:  # the same arrays, another file: other weights for the key
        f.write(b"\0")
    keys = {
        scorer.key(data),
        scorer.key(changed),
        inception_fid.InceptionFID(weights, resize="pytorch_fid").key(data),
        inception_fid.InceptionFID(weights, quantize=False).key(data),
        inception_fid.InceptionFID(other_weights).key(data),
    }
    assert len(keys) == 5
    scorer.reference("toy", "train", changed)
    assert len(list((tmp_path / "cache" / "fid_stats").iterdir())) == 2
    # A set scored against its own statistics: FID 0 (the distance is taken in float64).
    assert abs(scorer(inception_fid.to_rgb(data), first)) < 1e-6


def test_fid_stats_computes_a_prepared_cifar10_once_into_the_cache_that_eval_reads(
    weights, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FM_JAX_CACHE", str(tmp_path / "cache"))
    data_dir, out = str(tmp_path / "data"), tmp_path / "cifar10_train.npz"
    rng = np.random.default_rng(0)
    split = lambda n: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
    train = split(8)
    prepare.write_arrays("cifar10", data_dir, {"train": train, "test": split(2)}, num_classes=10)
    command = ["fid-stats", "--dataset", "cifar10", "--data-dir", data_dir, "--fid-weights", str(weights)]
    cli.main(command + ["--out", str(out)])
    captured = capsys.readouterr()
    cached = inception_fid.InceptionFID(weights).reference_path("cifar10", "train", train[0])
    assert f"cifar10 train: Inception statistics of 8 images (2048-d) in {cached} and {out}" in captured.out
    assert "reading the 8 train images (32, 32, 3) of cifar10" in captured.err
    expected = fid.feature_stats_of(fid.inception_extractor(weights), inception_fid.to_rgb(train[0]), batch_size=64)
    for stats in (fid.load_stats(out), fid.load_stats(cached)):
        np.testing.assert_allclose(stats.mu, expected.mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.sigma, expected.sigma, rtol=1e-4, atol=1e-6)
        assert stats.n == 8

    def computed(*args, **kwargs):
        raise AssertionError("the statistics were computed again")

    monkeypatch.setattr(fid, "feature_stats_of", computed)
    with pytest.raises(SystemExit, match="exists; pass --force"):
        cli.main(command + ["--out", str(out)])
    cli.main(command)  # from the cache
    assert str(cached) in capsys.readouterr().out
    with pytest.raises(SystemExit, match="has no split 'validation'"):
        cli.main(command + ["--split", "validation"])
    with pytest.raises(SystemExit, match="tfds build cifar10"):
        cli.main(["fid-stats", "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty")])


def test_eval_reports_the_inception_fid_of_an_image_run(weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FM_JAX_CACHE", str(tmp_path / "cache"))
    data_dir = tmp_path / "tfds"
    labels = np.zeros(8, np.int64)
    prepare.write_arrays(
        "tiny_digits", str(data_dir), {"train": (images(8, 1), labels), "test": (images(8, 2), labels)}
    )
    workdir = tmp_path / "run"
    overrides = [
        "--config.target=tfds:tiny_digits",
        f"--config.data.dir={data_dir}",
        "--config.model.preset=tiny",
        "--config.batch_size=8",
        "--config.num_steps=2",
        "--config.log_every=2",
        "--config.checkpoint_every=2",
    ]
    cli.main(["train", "--config", "images", "--workdir", str(workdir), *overrides])
    capsys.readouterr()
    cli.main(["eval", "--workdir", str(workdir), "--solvers", "euler:2", "--num", "8", "--fid-weights", str(weights)])
    out, err = capsys.readouterr()
    row = json.loads((workdir / "eval.json").read_text())["solvers"]["euler:2"]
    assert row["fid"] > 0 and row["fd_pixel"] > 0
    assert "FID reference statistics of 8 tiny_digits train images, once" in err
    assert "FID" in out.splitlines()[1]  # the table's header
    # The second evaluation reads the statistics back.
    cli.main(["eval", "--workdir", str(workdir), "--solvers", "euler:2", "--num", "8", "--fid-weights", str(weights)])
    assert "FID reference statistics of tiny_digits train from" in capsys.readouterr().err
    assert json.loads((workdir / "eval.json").read_text())["solvers"]["euler:2"]["fid"] == row["fid"]
    # Without weights at the named place the command says how to make them.
    with pytest.raises(SystemExit, match="fm-jax fid-weights --out"):
        cli.main(["eval", "--workdir", str(workdir), "--fid-weights", str(tmp_path / "none.npz")])
