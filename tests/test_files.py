"""Files replaced in one rename: complete or untouched, never half written."""

import os
import stat

import numpy as np
import pytest

from fm_jax import files


def test_a_file_is_replaced_whole_and_left_untouched_by_an_error(tmp_path):
    path = tmp_path / "sub" / "stats.npz"
    with files.replaced(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".npz" and not path.exists()
        np.savez(tmp, a=np.arange(3))
    assert np.load(path)["a"].tolist() == [0, 1, 2]
    plain = tmp_path / "plain"
    plain.write_text("")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
    with pytest.raises(RuntimeError), files.replaced(path) as tmp:
        np.savez(tmp, a=np.arange(5))
        raise RuntimeError("killed half way")
    assert np.load(path)["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.npz"]
    files.write_text(tmp_path / "config.json", "{}")
    assert (tmp_path / "config.json").read_text() == "{}"
