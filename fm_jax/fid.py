"""Fréchet distances between image sets: FID with a feature extractor, and its pixel-space form.

The Fréchet (2-Wasserstein) distance between Gaussians N(mu1, S1) and N(mu2, S2) is
(Fréchet 1957; Dowson & Landau 1982)

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).

The Fréchet Inception Distance (Heusel et al. 2017) is d^2 between the Gaussians fitted to
the InceptionV3 pool features (2048-d, `fm_jax.models.inception`) of two image sets; the
same formula with any other `extractor(images) -> (batch, D)`, or the identity on flattened
pixels (`pixel_frechet_distance`, for digits and MNIST, where no Inception applies), gives
the corresponding distance in that feature space.

- `frechet_distance(mu1, sigma1, mu2, sigma2)`: d^2, in float64 on the host.
- `FeatureStats(mu, sigma, n)`, `feature_stats(features)`: mean and unbiased covariance.
- `feature_stats_of(extractor, images)`: the same, streamed over batches of images.
- `fid(extractor, a, b)`: d^2 between two image sets, either given as precomputed stats.
- `save_stats` / `load_stats`: stats as `.npz` (mu, sigma, n).
- `pixel_frechet_distance(a, b)`: d^2 of the pixels themselves.
- `inception_extractor(weights_path)`: the FID InceptionV3 with the weights of
  `fm-jax fid-weights` (`fm_jax.fid_weights`).

Images are float arrays, batch first, with values in [-1, 1] (NHWC for the Inception).
Nothing here downloads anything. Unlike the math modules this evaluation hook knows about
Flax, only so far as to pass an NNX extractor to the compiled step as a pytree argument.

`frechet_distance` in float64 on the host. As the reference implementations do (SciPy's
float64 `sqrtm`), the distance is computed in float64 on the CPU device, whatever the
platform of its inputs and whether or not `jax_enable_x64` is set: a FID of a set with
itself is then 0 to ~1e-12 of its traces instead of ~1e-3 at D = 2048 in float32, and TPUs,
which have no float64 linear algebra, are never asked for it. Features and their moments
stay float32 (`feature_stats_of`), as the extractor computes them. The trace of the matrix
square root is the nuclear norm of a product of covariance factors: with S_i = G_i G_i^T
(G_i = U_i L_i^{1/2} from the eigendecomposition S_i = U_i diag(L_i) U_i^T) and
K = G2^T G1, K^T K = G1^T S2 G1 has the nonzero eigenvalues of S2 S1, hence of
S1^{1/2} S2 S1^{1/2}, so

    tr (S1^{1/2} S2 S1^{1/2})^{1/2} = sum_i sigma_i(K)   (the singular values of K).

Singular values of K carry an absolute error O(eps ||K||); square roots of the eigenvalues
of S1^{1/2} S2 S1^{1/2} would turn its O(eps ||K||^2) rounding into O(sqrt(eps) ||K||) per
near-zero eigenvalue, and rank-deficient covariances (fewer samples than dimensions,
constant pixels) have many. Eigenvalues of S_i below the eigensolver's resolution,
sqrt(D) eps max(L_i), are set to 0 in the factor and in tr S_i alike. The cost is two
symmetric eigendecompositions and one singular-value decomposition of D x D matrices, a few
seconds at D = 2048 on a 2-core CPU.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fm_jax.primitives import padded_chunks
from fm_jax.progress import bar

__all__ = [
    "FeatureStats",
    "feature_stats",
    "feature_stats_of",
    "fid",
    "frechet_distance",
    "inception_extractor",
    "load_stats",
    "pixel_frechet_distance",
    "save_stats",
]

HIGHEST = jax.lax.Precision.HIGHEST
Extractor = Callable[[jax.Array], jax.Array]
_STATS_KEYS = ("mu", "sigma", "n")


class FeatureStats(NamedTuple):
    """Mean (D,), unbiased covariance (D, D) and number of samples of a set of features."""

    mu: jax.Array
    sigma: jax.Array
    n: int


def _compute_dtype(*arrays) -> jnp.dtype:
    dtype = jnp.result_type(*arrays, jnp.float32)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


def _psd_factor(sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(G, tr S') with G G^T = S': sigma with its eigenvalues below the eigensolver's resolution set to 0.

    sigma = U diag(L) U^T; eigenvalues L_i <= sqrt(D) eps max|L| are rounding noise of a
    float eigensolver (eigh resolves eigenvalues to about that absolute accuracy) and are
    zeroed; G = U diag(sqrt(L')).
    """
    eigenvalues, eigenvectors = jnp.linalg.eigh(0.5 * (sigma + sigma.T))
    cutoff = np.sqrt(sigma.shape[0]) * jnp.finfo(sigma.dtype).eps * jnp.max(jnp.abs(eigenvalues))
    eigenvalues = jnp.where(eigenvalues > cutoff, eigenvalues, 0.0)
    return eigenvectors * jnp.sqrt(eigenvalues), jnp.sum(eigenvalues)


@jax.jit
def _frechet_distance(mu1, sigma1, mu2, sigma2):
    g1, trace1 = _psd_factor(sigma1)
    g2, trace2 = _psd_factor(sigma2)
    trace_sqrt = jnp.sum(jnp.linalg.svd(jnp.matmul(g2.T, g1, precision=HIGHEST), compute_uv=False))
    diff = mu1 - mu2
    return jnp.dot(diff, diff, precision=HIGHEST) + trace1 + trace2 - 2.0 * trace_sqrt


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}) between N(mu1, S1) and N(mu2, S2).

    Computed in float64 on the CPU device (see the module docstring), from concrete arrays
    (not inside `jit`). Covariances must be symmetric positive semi-definite: they are
    symmetrized, and their eigenvalues below sqrt(D) eps max|eigenvalue| (rounding noise,
    negative ones included) count as 0. Not clipped at 0: identical statistics may give a
    value of order -1e-12 of the traces.
    """
    mu1, sigma1, mu2, sigma2 = (np.asarray(a, np.float64) for a in (mu1, sigma1, mu2, sigma2))
    for name, mu, sigma in (("1", mu1, sigma1), ("2", mu2, sigma2)):
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"mu{name} must be (D,) and sigma{name} (D, D), got {mu.shape} and {sigma.shape}.")
    if mu1.shape != mu2.shape:
        raise ValueError(f"The two Gaussians have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}.")
    with jax.enable_x64(True):
        cpu = jax.devices("cpu")[0]
        return float(_frechet_distance(*(jax.device_put(a, cpu) for a in (mu1, sigma1, mu2, sigma2))))


@jax.jit
def _moments(features):
    mu = jnp.mean(features, axis=0)
    centred = features - mu
    return mu, jnp.matmul(centred.T, centred, precision=HIGHEST) / (features.shape[0] - 1)


def feature_stats(features) -> FeatureStats:
    """Mean and unbiased covariance, sum_i (f_i - mu)(f_i - mu)^T / (N - 1), of features (N, D)."""
    features = jnp.asarray(features)
    features = features.astype(_compute_dtype(features))
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}.")
    if features.shape[0] < 2:
        raise ValueError(f"A covariance needs at least 2 samples, got {features.shape[0]}.")
    if not bool(jnp.all(jnp.isfinite(features))):
        raise ValueError("features contain NaN or inf.")
    mu, sigma = _moments(features)
    return FeatureStats(mu, sigma, int(features.shape[0]))


def _check_images(images, name: str) -> Any:
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"{name} must be a batch of images (N, ...), got shape {images.shape}.")
    if images.shape[0] < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 images, got {images.shape[0]}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be float images, got dtype {images.dtype} "
            "(map uint8 pixels to [-1, 1] with images / 127.5 - 1)."
        )
    return images


def _batch_moments(extractor, images, count, low, high):
    """Mean and centred second moment of extractor(images[:count]), and three error flags."""
    features = extractor(images)
    if features.ndim != 2 or features.shape[0] != images.shape[0]:
        raise ValueError(
            f"The extractor must map {images.shape[0]} images to ({images.shape[0]}, D) features, "
            f"got shape {features.shape}."
        )
    features = features.astype(jnp.float32)
    valid = (jnp.arange(images.shape[0]) < count)[:, None]
    flat = images.reshape(images.shape[0], -1)
    image_not_finite = jnp.any(valid & ~jnp.isfinite(flat))
    out_of_range = jnp.any(valid & ((flat < low) | (flat > high)))
    features_not_finite = jnp.any(valid & ~jnp.isfinite(features))
    mean = jnp.sum(jnp.where(valid, features, 0.0), axis=0) / count
    centred = jnp.where(valid, features - mean, 0.0)
    m2 = jnp.matmul(centred.T, centred, precision=HIGHEST)
    return mean, m2, jnp.stack([image_not_finite, out_of_range, features_not_finite])


# A Flax NNX module is a pytree: it is passed as an argument (its weights are not baked into
# the program, and one compilation serves every call with the same module structure). Any
# other callable is a static argument: one compilation per callable object and batch shape.
_module_batch_moments = jax.jit(_batch_moments)
_callable_batch_moments = jax.jit(_batch_moments, static_argnums=0)


@jax.jit
def _combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Pooled mean and centred second moment of two sample sets (Chan, Golub & LeVeque 1979)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    return mean_a + delta * (n_b / n), m2_a + m2_b + jnp.outer(delta, delta) * (n_a * n_b / n)


def _batch_moments_fn(extractor: Extractor) -> Callable:
    if isinstance(extractor, nnx.Module):
        return _module_batch_moments
    try:
        hash(extractor)
    except TypeError:
        jitted = jax.jit(functools.partial(_batch_moments, extractor))
        return lambda _, *args: jitted(*args)
    return _callable_batch_moments


def feature_stats_of(
    extractor: Extractor,
    images,
    *,
    batch_size: int = 128,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    progress: bool = False,
) -> FeatureStats:
    """FeatureStats of extractor(images), computed `batch_size` images at a time (`progress`: a
    bar over the images on stderr).

    `extractor(images_batch) -> (b, D)` is any callable: an NNX module (passed to the
    compiled step as a pytree, so its weights are arguments) or a function (compiled once per
    function object; its closure constants are baked in). The last batch is padded to
    `batch_size` (`primitives.padded_chunks`) and its padding rows masked out, so a ragged last batch does not recompile.
    Moments are pooled over batches in float32 with the pairwise update of Chan et al.,
    which stays accurate where sum(x x^T) - n mu mu^T would cancel. Images are cast to float32.

    Raises ValueError for fewer than 2 images, non-float images, non-finite images or
    features, and pixels outside `value_range` (None to skip that check).
    """
    images = _check_images(images, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    n = int(images.shape[0])
    batch = min(batch_size, n)
    low, high = (-np.inf, np.inf) if value_range is None else value_range
    low, high = jnp.float32(low), jnp.float32(high)
    step = _batch_moments_fn(extractor)
    n_seen, mean, m2, flags = 0, None, None, []
    with bar(n, "features", progress, unit="image") as images_done:
        for _, count, (chunk,) in padded_chunks(batch, images):  # padding rows are masked out by `count`
            mean_b, m2_b, flags_b = step(extractor, chunk.astype(jnp.float32), jnp.int32(count), low, high)
            flags.append(flags_b)
            if mean is None:
                mean, m2 = mean_b, m2_b
            else:
                mean, m2 = _combine(jnp.float32(n_seen), mean, m2, jnp.float32(count), mean_b, m2_b)
            n_seen += count
            images_done.update(count)
    image_not_finite, out_of_range, features_not_finite = np.asarray(jnp.any(jnp.stack(flags), axis=0))
    if image_not_finite:
        raise ValueError("images contain NaN or inf.")
    if out_of_range:
        raise ValueError(
            f"images have values outside {tuple(value_range)}: clip samples (jnp.clip(x, -1, 1)) and "
            "rescale pixels to [-1, 1], or pass value_range=None."
        )
    if features_not_finite:
        raise ValueError("The extractor returned NaN or inf features.")
    return FeatureStats(mean, m2 / (n - 1), n)


def _check_stats(stats: FeatureStats, name: str) -> FeatureStats:
    mu, sigma = jnp.asarray(stats.mu), jnp.asarray(stats.sigma)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}.")
    if int(stats.n) < 2:
        raise ValueError(f"{name}: statistics of fewer than 2 samples (n = {stats.n}).")
    return FeatureStats(mu, sigma, int(stats.n))


def _same_dimension(a: FeatureStats, b: FeatureStats) -> None:
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"The two sets have different feature dimensions: {a.mu.shape[0]} and {b.mu.shape[0]}.")


def fid(
    extractor: Extractor | None,
    images_a,
    images_b,
    *,
    batch_size: int = 128,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
) -> float:
    """Fréchet distance between the extractor features of two image sets (FID with the Inception extractor).

    Either set may be given as precomputed `FeatureStats` (e.g. `fid(inception, samples,
    load_stats("cifar10_train.npz"))`); with both precomputed the extractor is unused.
    Two image sets must have the same image shape.
    """
    is_stats = [isinstance(x, FeatureStats) for x in (images_a, images_b)]
    if not all(is_stats):
        if extractor is None:
            raise ValueError("An extractor is needed to compute statistics from images.")
        if not any(is_stats):
            a = _check_images(images_a, "images_a")
            b = _check_images(images_b, "images_b")
            if a.shape[1:] != b.shape[1:]:
                raise ValueError(f"The two image sets have different image shapes: {a.shape[1:]} and {b.shape[1:]}.")
    stats = []
    for name, x, precomputed in (("images_a", images_a, is_stats[0]), ("images_b", images_b, is_stats[1])):
        if precomputed:
            stats.append(_check_stats(x, name))
        else:
            stats.append(feature_stats_of(extractor, x, batch_size=batch_size, value_range=value_range))
    _same_dimension(*stats)
    return float(frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma))


def pixel_frechet_distance(images_a, images_b) -> float:
    """Fréchet distance between the pixel distributions: fid with the identity on flattened images.

    Either side may be precomputed FeatureStats (of flattened images). The covariance is
    D x D with D the number of pixel values (784 for MNIST). No range check on the pixels.
    """
    sides = []
    for name, x in (("images_a", images_a), ("images_b", images_b)):
        sides.append(_check_stats(x, name) if isinstance(x, FeatureStats) else _check_images(x, name))
    if not any(isinstance(x, FeatureStats) for x in sides) and sides[0].shape[1:] != sides[1].shape[1:]:
        raise ValueError(
            f"The two image sets have different image shapes: {sides[0].shape[1:]} and {sides[1].shape[1:]}."
        )
    stats = [x if isinstance(x, FeatureStats) else feature_stats(jnp.asarray(x).reshape(x.shape[0], -1)) for x in sides]
    _same_dimension(*stats)
    return float(frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma))


def save_stats(path: str | Path, stats: FeatureStats) -> None:
    """Write stats to `path` as an .npz with arrays mu (D,), sigma (D, D) and n (scalar)."""
    stats = _check_stats(stats, "stats")
    with open(path, "wb") as f:
        np.savez(f, mu=np.asarray(stats.mu), sigma=np.asarray(stats.sigma), n=np.int64(stats.n))


def load_stats(path: str | Path) -> FeatureStats:
    """FeatureStats from an .npz written by `save_stats` (keys mu, sigma, n); ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No statistics file at {path}.")
    arrays = _read_npz(path)
    missing = [k for k in _STATS_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"{path} lacks {missing} (has {sorted(arrays)}); statistics files hold mu, sigma and n. "
            "For mu/sigma files from other FID tools, add the sample count: np.savez(path, mu=mu, sigma=sigma, n=N)."
        )
    mu, sigma, n = arrays["mu"], arrays["sigma"], arrays["n"]
    if n.shape != () or not np.issubdtype(n.dtype, np.integer):
        raise ValueError(f"{path}: n must be an integer scalar, got {n.dtype} of shape {n.shape}.")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{path}: mu or sigma contain NaN or inf.")
    return _check_stats(FeatureStats(jnp.asarray(mu), jnp.asarray(sigma), int(n)), str(path))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not an .npz archive of arrays ({e}).") from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not an .npz archive of arrays (it holds a single {type(loaded).__name__}).")
    try:
        with loaded:
            return {k: np.asarray(loaded[k]) for k in loaded.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not an .npz archive of arrays ({e}).") from e


def inception_extractor(weights_path: str | Path, *, resize: str | None = "tf1", quantize: bool = True) -> nnx.Module:
    """The FID InceptionV3 with weights from `weights_path`: images (b, H, W, 3) in [-1, 1] -> (b, 2048).

    Images of any size are quantized to 8 bits and resized to 299x299 inside as the reference
    pipeline of StyleGAN2-ADA and EDM does (`fm_jax.models.inception`: TF1-style bilinear;
    `resize` and `quantize` change that). The weights file is the pytorch-fid state dict as
    .npz, written once by `fm-jax fid-weights --out PATH`.
    Raises ValueError for a missing file or mismatched names.
    """
    from fm_jax.models.inception import load_fid_inception

    return load_fid_inception(weights_path, resize=resize, quantize=quantize)
