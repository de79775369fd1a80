"""Reading image datasets: TFDS ArrayRecord data on disk, read by random access with grain, no TensorFlow.

Images live where TFDS puts them, `DATA_DIR/NAME[/CONFIG]/VERSION/`, in the ArrayRecord file
format, which `tfds.builder_from_directory` reads without TensorFlow (pillow decodes the PNGs).
`fm_jax.data.prepare` writes the two offline datasets (digits, mnist5k) and in-memory arrays
there; any other TFDS image dataset (mnist, cifar10, downsampled_imagenet/32x32, ...) must be
prepared once where TensorFlow is installed:

    pip install tensorflow-cpu tensorflow-datasets
    tfds build cifar10 --data_dir=DIR --file_format=array_record

after which `info`, `load_split` and `batches` read it from DIR. `info` finds the newest
prepared version (or the one named), `fingerprint` identifies the data on disk for resumed
runs. Every check (missing data, TFRecord files, non-uint8 images, a batch larger than the
shard) raises a ValueError on the host before anything compiles, and nothing here touches the
network.

`batches` is an infinite, checkpointable grain iterator over this process's shard of a split;
`preprocess` maps its uint8 images to [-1, 1] on device (uniform dequantization as in
`fm_jax.likelihood.dequantized_bits_per_dim`), `to_unit` maps samples back to uint8 levels
(`fm_jax.plots.save_grid` writes them as a PNG grid). tensorflow_datasets and grain are
imported on first use, not with the module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pathlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import grain

__all__ = [
    "ImageInfo",
    "batches",
    "default_data_dir",
    "fingerprint",
    "info",
    "load_split",
    "from_tokens",
    "preprocess",
    "to_tokens",
    "to_unit",
]

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


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
    from fm_jax.data.prepare import OFFLINE  # not at import: prepare imports this module

    if name in OFFLINE:
        return ValueError(
            f"The dataset {name!r} is not prepared in {root}. Prepare it once with "
            f"`fm-jax prepare --dataset {name}` (or fm_jax.data.prepare.prepare({name!r}, data_dir)); "
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
# On device: uint8 -> [-1, 1]; and back to uint8 levels on the host, for pictures


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


def to_tokens(key: jax.Array, images: jax.Array, levels: int, *, flip: bool = False) -> jax.Array:
    """uint8 images (b, H, W, C) -> int32 tokens (b, H W C) for a discrete flow: each pixel's level
    round(v (levels - 1) / 255), which recovers digits' 17 grey levels (stored round(l 255 / 16))
    exactly and binarizes at v > 127.5 with levels = 2; `flip` mirrors as `preprocess` does."""
    x = preprocess(key, images, flip=flip, dequantize=False)
    values = jnp.round((x + 1.0) * 127.5)
    return jnp.round(values * (levels - 1) / 255.0).astype(jnp.int32).reshape(images.shape[0], -1)


def from_tokens(tokens, levels: int, shape: tuple[int, int, int]) -> np.ndarray:
    """int tokens (b, H W C) of `levels` values -> uint8 images (b, H, W, C), level l at round(l 255 / (levels - 1))."""
    values = np.rint(np.asarray(tokens, np.float64) * 255.0 / (levels - 1))
    return np.clip(values, 0, 255).astype(np.uint8).reshape(-1, *shape)


def to_unit(images_float) -> np.ndarray:
    """Images in [-1, 1] -> uint8 levels 0..255 for pictures: floor((x + 1) * 128), clipped.

    The 256 equal bins of [-1, 1] are the dequantization cells of `preprocess`, so this inverts
    both of its conventions exactly (v -> v for any noise u, and for v / 127.5 - 1). Values outside
    [-1, 1] are clipped; NaN becomes 0.
    """
    x = np.nan_to_num(np.asarray(images_float, np.float32), nan=-1.0)
    return np.clip(np.floor((x + 1.0) * 128.0), 0, 255).astype(np.uint8)
