"""The one name-table pattern (`fm_jax.Registry`) and the held-out helpers every evaluation shares."""

import jax
import numpy as np
import pytest

import fm_jax as fm
from fm_jax.primitives import padded_chunks
from fm_jax.train.held_out import NOISE, TARGET, held_out_key


def test_a_registry_names_its_field_and_every_choice():
    table = fm.Registry("config.thing", {"alpha": 1, "Beta": 2}, fold_case=True)
    assert table["ALPHA"] == 1 and table["beta"] == 2 and "BETA" in table and list(table) == ["alpha", "beta"]
    assert table.get("gamma") is None and table.get("Alpha") == 1 and 3 not in table
    with pytest.raises(ValueError, match=r"Unknown config.thing 'gamma'; choose one of \['alpha', 'beta'\]"):
        table["gamma"]
    with pytest.raises(ValueError, match="registered twice"):
        table.add("ALPHA", 3)
    exact = fm.Registry("solver")
    exact.register("Euler")(object)
    with pytest.raises(ValueError, match="Unknown solver 'euler'"):
        exact["euler"]
    # Every table of the library follows the pattern.
    for registry in (
        fm.paths.PATHS,
        fm.solvers.ODE_SOLVERS,
        fm.solvers.SDE_SOLVERS,
        fm.couplings.EXACT_SOLVERS,
        fm.data.toy2d.DENSITIES,
        fm.train.METHODS,
        fm.models.unet.PRESETS,
    ):
        assert isinstance(registry, fm.Registry) and len(registry) > 1


def test_padded_chunks_pad_the_last_chunk_with_its_last_row():
    x = np.arange(10 * 2).reshape(10, 2)
    labels = np.arange(10)
    chunks = list(padded_chunks(4, x, None, labels))
    assert [(start, rows) for start, rows, _ in chunks] == [(0, 4), (4, 4), (8, 2)]
    _, _, (last_x, none, last_labels) = chunks[-1]
    assert none is None and last_x.shape == (4, 2)
    np.testing.assert_array_equal(last_x, [x[8], x[9], x[9], x[9]])
    np.testing.assert_array_equal(last_labels, [8, 9, 9, 9])
    np.testing.assert_array_equal(np.concatenate([np.asarray(c[0])[:n] for _, n, c in chunks]), x)


def test_held_out_streams_are_distinct_and_reproducible():
    a, b = held_out_key(3, TARGET), held_out_key(3, NOISE)
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(held_out_key(3, TARGET)))
    np.testing.assert_array_equal(
        jax.random.key_data(a), jax.random.key_data(jax.random.fold_in(jax.random.key(3), TARGET))
    )
