"""Fréchet distances against float64 SciPy and closed forms; streamed statistics; the FID InceptionV3 and its weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

from fm_jax import fid
from fm_jax.models import inception


def frechet_reference(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64 with SciPy."""
    mu1, s1, mu2, s2 = (np.asarray(a, np.float64) for a in (mu1, s1, mu2, s2))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_stats(rng, d, rank, shift=0.0):
    """Mean and covariance of `rank + 1` samples in d dimensions (rank-deficient when rank < d)."""
    x = rng.normal(size=(rank + 1, d)) @ np.diag(rng.uniform(0.2, 2.0, d)) + shift
    return x.mean(0), np.cov(x, rowvar=False)


def sample_reference(x1, x2) -> float:
    """d^2 between the Gaussians fitted to two sample sets, exactly in float64: with centred
    samples C_i and S_i = C_i^T C_i / (n - 1), tr (S1^{1/2} S2 S1^{1/2})^{1/2} is the nuclear
    norm of C1 C2^T / (n - 1), well conditioned even where S1 S2 is singular (where SciPy's
    sqrtm loses ~1e-8 of the traces)."""
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    nuclear = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / (len(x1) - 1)
    traces = np.trace(np.cov(x1, rowvar=False)) + np.trace(np.cov(x2, rowvar=False))
    return float(np.sum((x1.mean(0) - x2.mean(0)) ** 2) + traces - 2 * nuclear)


@pytest.mark.parametrize("d, rank", [(8, 40), (64, 200), (64, 16), (64, 63)])
def test_frechet_distance_is_exact_in_float64(d, rank):
    rng = np.random.default_rng(d + rank)
    samples = lambda shift: rng.normal(size=(rank + 1, d)) @ np.diag(rng.uniform(0.2, 2.0, d)) + shift
    x1, x2 = samples(0.0), samples(0.3)
    (mu1, s1), (mu2, s2) = ((x.mean(0), np.cov(x, rowvar=False)) for x in (x1, x2))
    scale = np.trace(s1) + np.trace(s2)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    # float64 on the host with singular values of G2^T G1 (measured within 4e-16 of the traces).
    assert got == pytest.approx(sample_reference(x1, x2), abs=1e-13 * scale)
    assert got == pytest.approx(frechet_reference(mu1, s1, mu2, s2), abs=1e-7 * scale)
    # float32 statistics are computed in float64 too: only their own rounding remains.
    f32 = fid.frechet_distance(*(np.float32(a) for a in (mu1, s1, mu2, s2)))
    assert f32 == pytest.approx(got, abs=1e-6 * scale)
    # Symmetric in the two Gaussians; zero between identical statistics, also rank-deficient ones.
    assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, abs=1e-13 * scale)
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-13 * scale
    assert abs(fid.frechet_distance(*(np.float32(a) for a in (mu1, s1, mu1, s1)))) < 1e-13 * scale


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with variances s^2.
    for m1, s1, m2, s2 in [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.1, 3.0, 4.0)]:
        got = float(fid.frechet_distance(jnp.array([m1]), jnp.array([[s1**2]]), jnp.array([m2]), jnp.array([[s2**2]])))
        assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-5, abs=1e-6)
    # Commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2, with zero variances.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.0, 3.0, 32), rng.uniform(0.0, 3.0, 32)
    a[:5] = 0.0
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = float(fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)))
    assert got == pytest.approx(expected, rel=1e-5)
    # Invariant under a rotation of both Gaussians.
    q, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    rotated = float(fid.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T))
    assert rotated == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_bad_shapes():
    with pytest.raises(ValueError, match="different dimensions"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(D, D\)"):
        fid.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


def test_feature_stats_is_mean_and_unbiased_covariance():
    x = np.random.default_rng(1).normal(size=(50, 6)) * 3 + 10
    stats = fid.feature_stats(x)
    assert stats.n == 50
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False, ddof=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        fid.feature_stats(x[:1])
    with pytest.raises(ValueError, match="NaN"):
        fid.feature_stats(np.where(np.arange(6) == 2, np.nan, x))


class TinyConvNet(nnx.Module):
    """A small random feature extractor: conv 3x3 -> ReLU -> global mean -> linear, 16 features."""

    traces = 0

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.linear = nnx.Linear(8, 16, rngs=rngs)

    def __call__(self, images):
        type(self).traces += 1  # runs only while jax traces the compiled step
        return self.linear(jnp.mean(nnx.relu(self.conv(images)), axis=(1, 2)))


@pytest.fixture(scope="module")
def net():
    return TinyConvNet(nnx.Rngs(0))


def images(seed, n, size=8, scale=0.5):
    return np.random.default_rng(seed).uniform(-scale, scale, (n, size, size, 3)).astype(np.float32)


forward = jax.jit(lambda model, x: model(x))


def test_feature_stats_of_streams_batches_without_recompiling(net):
    x = images(0, 37, size=9)  # 9x9 images only here: the first compilation of this step
    one_go = fid.feature_stats(forward(net, x))
    TinyConvNet.traces = 0
    streamed = fid.feature_stats_of(net, x, batch_size=8)  # 4 full batches and a ragged one of 5
    assert TinyConvNet.traces == 1
    assert streamed.n == 37
    np.testing.assert_allclose(streamed.mu, one_go.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed.sigma, one_go.sigma, rtol=1e-4, atol=1e-6)

    # Any callable: a function is compiled once (chex counts its traces), not per batch.
    @chex.assert_max_traces(n=1)
    def features(batch):
        return net(batch)

    closure = fid.feature_stats_of(features, x, batch_size=10)
    np.testing.assert_allclose(closure.sigma, one_go.sigma, rtol=1e-4, atol=1e-6)
    # A batch larger than the set shrinks to the set.
    whole = fid.feature_stats_of(net, x, batch_size=1000)
    np.testing.assert_allclose(whole.mu, one_go.mu, rtol=1e-5, atol=1e-6)


def test_fid_is_zero_on_one_set_and_decreases_toward_it(net):
    x = images(1, 64)
    assert abs(fid.fid(net, x, x, batch_size=32)) < 1e-5
    direction = images(2, 64)
    values = [fid.fid(net, x, x + s * direction, batch_size=32) for s in (1.0, 0.5, 0.25, 0.1)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] > 0
    # Precomputed reference statistics on either side give the same number.
    reference = fid.feature_stats_of(net, x + direction, batch_size=32)
    assert fid.fid(net, x, reference, batch_size=32) == pytest.approx(values[0], rel=1e-4)
    assert fid.fid(None, reference, fid.feature_stats_of(net, x, batch_size=32)) == pytest.approx(values[0], rel=1e-4)


def test_fid_bad_inputs(net):
    x = images(3, 32)
    with pytest.raises(ValueError, match="different image shapes"):
        fid.fid(net, x, images(3, 32, size=6))
    nan = x.copy()
    nan[4, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fid.fid(net, x, nan, batch_size=32)
    with pytest.raises(ValueError, match="at least 2"):
        fid.fid(net, x, x[:1])
    with pytest.raises(ValueError, match="outside"):
        fid.fid(net, x, x * 4, batch_size=32)
    with pytest.raises(ValueError, match="uint8"):
        fid.fid(net, x, np.zeros((32, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="extractor is needed"):
        fid.fid(None, x, x)
    with pytest.raises(ValueError, match="feature dimensions"):
        fid.fid(net, x, fid.FeatureStats(jnp.zeros(3), jnp.eye(3), 100), batch_size=32)
    with pytest.raises(ValueError, match="fewer than 2"):
        fid.fid(net, x, fid.FeatureStats(jnp.zeros(16), jnp.eye(16), 1))


def test_save_and_load_stats(tmp_path, net):
    stats = fid.feature_stats_of(net, images(4, 20), batch_size=32)
    path = tmp_path / "reference_stats.npz"
    fid.save_stats(path, stats)
    loaded = fid.load_stats(path)
    assert loaded.n == 20
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)

    np.savez(tmp_path / "no_n.npz", mu=np.asarray(stats.mu), sigma=np.asarray(stats.sigma))
    with pytest.raises(ValueError, match=r"lacks \['n'\]"):
        fid.load_stats(tmp_path / "no_n.npz")
    np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(3), sigma=np.eye(4), n=10)
    with pytest.raises(ValueError, match="sigma"):
        fid.load_stats(tmp_path / "bad_shape.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not an .npz"):
        fid.load_stats(tmp_path / "text.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz"):
        fid.load_stats(tmp_path / "array.npy")
    with pytest.raises(FileNotFoundError):
        fid.load_stats(tmp_path / "absent.npz")


# SciPy warns that the product of singular covariances "might" have no square root; its root
# agrees with an eigendecomposition-based float64 reference to 1e-10 on such matrices.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_pixel_frechet_distance():
    from sklearn.datasets import load_digits

    # 8x8 digits: constant pixels and 64-d covariances from 100 images, rank-deficient.
    digits = load_digits().images[:100, :, :, None].astype(np.float32) / 8.0 - 1.0
    assert abs(fid.pixel_frechet_distance(digits, digits)) < 1e-4
    # A constant shift c of every image moves the mean only: d^2 = ||c||^2.
    c = np.random.default_rng(0).normal(size=(1, 8, 8, 1)).astype(np.float32) * 0.1
    assert fid.pixel_frechet_distance(digits, digits + c) == pytest.approx(np.sum(c**2), rel=1e-3, abs=1e-4)
    flat = fid.feature_stats(digits.reshape(100, -1))
    other = digits[::-1] * 0.5
    assert fid.pixel_frechet_distance(flat, other) == pytest.approx(fid.pixel_frechet_distance(digits, other))
    assert fid.pixel_frechet_distance(digits, other) == pytest.approx(
        frechet_reference(flat.mu, flat.sigma, *fid.feature_stats(other.reshape(100, -1))[:2]), abs=1e-3
    )
    with pytest.raises(ValueError, match="different image shapes"):
        fid.pixel_frechet_distance(digits, digits[:, :4])


# ---------------------------------------------------------------------------------------------
# The FID InceptionV3


def torch_state_dict(rng) -> dict[str, np.ndarray]:
    """Random weights named and laid out as pytorch-fid's state dict (convolutions OIHW), plus ignored entries."""
    _, flat = inception._abstract_inception("tf1", True, jax.lax.Precision.HIGHEST)
    state = {}
    for path, var in flat:
        name = inception.torch_name(path)
        if name.endswith("conv.weight"):
            kh, kw, cin, cout = var.shape
            state[name] = (rng.normal(size=(cout, cin, kh, kw)) * np.sqrt(2.0 / (kh * kw * cin))).astype(np.float32)
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, var.shape).astype(np.float32)
        else:
            state[name] = rng.uniform(-0.3, 0.3, var.shape).astype(np.float32) + (name.endswith("bn.weight"))
    state["fc.weight"] = np.zeros((1008, 2048), np.float32)
    state["fc.bias"] = np.zeros(1008, np.float32)
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = torch_state_dict(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("inception") / "fid_inception_v3.npz"
    np.savez(path, **state)
    return path, state


def test_inception_architecture():
    _, flat = inception._abstract_inception("tf1", True, jax.lax.Precision.HIGHEST)
    shapes = {inception.torch_name(p): v.shape for p, v in flat}
    # The FID InceptionV3: 94 conv + batch-norm layers, 17,216 normalized channels, 21,785,568 weights.
    assert sum(name.endswith("conv.weight") for name in shapes) == 94
    assert sum(s[0] for name, s in shapes.items() if name.endswith("running_mean")) == 17_216
    assert sum(int(np.prod(s)) for name, s in shapes.items() if "running" not in name) == 21_785_568
    hwio = {  # PyTorch names and OIHW shapes of the port, stored HWIO here
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch_pool.conv.weight": (192, 1280, 1, 1),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    }
    for name, (o, i, h, w) in hwio.items():
        assert shapes[name] == (h, w, i, o), name
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
    # Any image size is resized to 299x299 inside (shapes only: nothing runs).
    model = inception.InceptionV3(kernel_init=inception._shape_only, rngs=nnx.Rngs(0))
    assert nnx.eval_shape(forward, model, jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)).shape == (3, 2048)


def test_resize_is_bilinear_with_half_pixel_centres():
    """Against the align_corners=False formula written out: source (i + 1/2) in/out - 1/2, clamped at the borders."""

    def reference_1d(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        weights = np.zeros((n_out, n_in))
        np.add.at(weights, (np.arange(n_out), lo), 1 - (src - lo))
        np.add.at(weights, (np.arange(n_out), hi), src - lo)
        return weights

    x = np.random.default_rng(0).normal(size=(2, 5, 13, 3)).astype(np.float32)
    # Up 5 -> 12 rows, down 13 -> 4 columns (no antialiasing: only the two nearest columns count).
    expected = np.einsum("ih,jw,bhwc->bijc", reference_1d(5, 12), reference_1d(13, 4), x)
    np.testing.assert_allclose(inception.resize_bilinear(jnp.asarray(x), (12, 4)), expected, atol=1e-5)


def test_inception_weights_roundtrip_at_full_size(weights):
    path, state = weights
    loaded = fid.inception_extractor(path)
    np.testing.assert_array_equal(
        loaded.Mixed_6b.branch7x7_2.conv.kernel[...], state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0)
    )
    # The same weights set attribute by attribute, following the PyTorch names.
    direct = inception.InceptionV3(kernel_init=inception._shape_only, rngs=nnx.Rngs(1))
    renamed = {"weight": "kernel", "running_mean": "mean", "running_var": "var"}
    for name, value in state.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        *modules, layer, leaf = name.split(".")
        target = direct
        for m in (*modules, layer):
            target = getattr(target, m)
        leaf = "scale" if (layer, leaf) == ("bn", "weight") else renamed.get(leaf, leaf)
        getattr(target, leaf).set_value(jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value))
    # One full-size forward (two 32x32 images resized to 299x299 inside), one compilation for both models.
    x = images(5, 2, size=32, scale=1.0)
    out = forward(loaded, x)
    assert out.shape == (2, 2048)
    assert bool(jnp.all(out >= 0)) and float(jnp.std(out)) > 1e-3  # pooled ReLU features, not collapsed
    np.testing.assert_allclose(forward(direct, x), out, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="3\\)"):
        loaded(jnp.zeros((2, 32, 32, 1)))


def test_inception_weights_errors(weights, tmp_path):
    path, state = weights
    with pytest.raises(ValueError, match="No FID Inception weights .* `fm-jax fid-weights --out PATH`"):
        fid.inception_extractor(tmp_path / "absent.npz")
    renamed = {name: np.zeros(1) for name in state}  # names are checked before any array
    renamed["Mixed_5b.branch1x1.conv.kernel"] = renamed.pop("Mixed_5b.branch1x1.conv.weight")
    np.savez(tmp_path / "renamed.npz", **renamed)
    with pytest.raises(
        ValueError, match=r"missing 1 names \[Mixed_5b.branch1x1.conv.weight\]; unexpected 1 names \[Mixed_5b.branch1x1"
    ):
        inception.load_fid_inception(tmp_path / "renamed.npz")
    reshaped = dict(state)
    reshaped["Mixed_6b.branch7x7_2.conv.weight"] = reshaped["Mixed_6b.branch7x7_2.conv.weight"].transpose(0, 1, 3, 2)
    np.savez(tmp_path / "reshaped.npz", **reshaped)
    with pytest.raises(
        ValueError, match=r"branch7x7_2.conv.weight has shape \(128, 128, 7, 1\), expected \(128, 128, 1, 7\)"
    ):
        inception.load_fid_inception(tmp_path / "reshaped.npz")
