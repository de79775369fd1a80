"""The argument checks of the public boundary (`fm_jax.checks`): what counts as a key and a batch,
and that the checks see only shapes and dtypes, so they run on tracers under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_jax import checks


def test_keys_are_typed_keys_or_legacy_raw_ones():
    assert checks.is_key(jax.random.key(0)) and checks.is_key(jax.random.PRNGKey(0))
    assert checks.is_key(jax.random.key(0, impl="rbg")) and checks.is_key(jax.random.PRNGKey(0, impl="rbg"))
    for not_a_key in (
        0,
        "key",
        None,
        jax.random.split(jax.random.key(0), 3),  # several keys, not one
        jnp.zeros(2, jnp.float32),
        jnp.zeros(3, jnp.uint32),
        np.zeros(2, np.int32),
        {"key": jax.random.key(0)},
    ):
        assert not checks.is_key(not_a_key), not_a_key
    with pytest.raises(
        TypeError, match=r"k must be a JAX random key, jax.random.key\(seed\) \(the call is f\(k\)\); got str 'a'"
    ):
        checks.check_key("a", "k", "f(k)")
    # Tracers carry the dtype and shape the check reads.
    assert jax.jit(lambda k: jnp.asarray(checks.is_key(k)))(jax.random.key(1))


def test_batch_arrays_and_the_accounts_of_what_was_given():
    checks.check_batch_array(np.zeros((3, 2), np.float32), "x")
    checks.check_batch_array(jnp.zeros((3,), jnp.bfloat16), "x")
    checks.check_batch_array(jnp.zeros((3, 2), jnp.int32), "x", floating=False)
    with pytest.raises(ValueError, match=r"x must be batch-first with shape \(batch, dim, \.\.\.\); got shape \(3,\)"):
        checks.check_batch_array(jnp.zeros(3), "x", min_ndim=2)
    with pytest.raises(TypeError, match="x must hold floating-point values; got dtype int32"):
        checks.check_batch_array(jnp.zeros((3, 2), jnp.int32), "x")
    with pytest.raises(TypeError, match=r"x must be a batch-first array of shape \(batch, \.\.\.\); got a list"):
        checks.check_batch_array([[0.0, 1.0]], "x")
    assert checks.describe(jnp.zeros((2, 3))) == "an array of shape (2, 3) and dtype float32"
    assert checks.describe({"x1": 1, "label": 2}) == "a dict with keys ['label', 'x1']"
    assert checks.describe(jax.random.key(0)).startswith("a key array of shape ()")
    assert checks.describe(len) == "the callable 'len'"
    with pytest.raises(TypeError, match="f must be a function; got int 3"):
        checks.check_callable(3, "f", "a function")
