"""Argument checks at the public boundary of the math modules, with messages that name the argument.

A swapped or ill-shaped argument otherwise fails deep inside JAX or Diffrax (a key used as a
batch dict fails with `Array.__contains__`). Each check reads only the Python type, shape and
dtype of its argument, which are known at trace time, so it costs nothing inside `jax.jit`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_batch_array", "check_callable", "check_key", "describe", "is_key"]


def describe(value: Any) -> str:
    """A short account of what was passed, for an error message: its kind, shape and dtype."""
    if isinstance(value, (jax.Array, np.ndarray)) or (hasattr(value, "shape") and hasattr(value, "dtype")):
        kind = "a key array" if is_key(value) else "an array"
        return f"{kind} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f"{type(value).__name__} {value!r}"
    if callable(value):
        return f"the callable {getattr(value, '__name__', type(value).__name__)!r}"
    return f"a {type(value).__name__}"


def is_key(value: Any) -> bool:
    """Whether `value` is one JAX random key: a typed key of shape () (`jax.random.key`), or a
    legacy raw uint32 key of shape (2,) (threefry, `jax.random.PRNGKey`) or (4,) (rbg)."""
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is None or shape is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return tuple(shape) == ()
    return dtype == jnp.uint32 and len(shape) == 1 and shape[0] in (2, 4)


def check_key(key: Any, name: str = "key", call: str = "") -> None:
    """A TypeError unless `key` is one JAX random key (`is_key`), naming the argument and the call."""
    if not is_key(key):
        where = f" (the call is {call})" if call else ""
        raise TypeError(f"{name} must be a JAX random key, jax.random.key(seed){where}; got {describe(key)}.")


def check_batch_array(x: Any, name: str, call: str = "", min_ndim: int = 1, floating: bool = True) -> None:
    """A TypeError/ValueError unless `x` is a batch-first array (batch, ...) with at least
    `min_ndim` axes (and of a floating dtype when `floating`), naming the argument and the call."""
    where = f" (the call is {call})" if call else ""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")) or is_key(x):
        raise TypeError(f"{name} must be a batch-first array of shape (batch, ...){where}; got {describe(x)}.")
    if len(x.shape) < min_ndim:
        axes = "(batch, dim, ...)" if min_ndim >= 2 else "(batch, ...)"
        raise ValueError(f"{name} must be batch-first with shape {axes}{where}; got shape {tuple(x.shape)}.")
    if floating and not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(f"{name} must hold floating-point values{where}; got dtype {x.dtype} (cast it with .astype).")


def check_callable(f: Any, name: str, what: str, call: str = "") -> None:
    """A TypeError unless `f` is callable; `what` says what it should be, e.g. "the field vf(t, x) -> dx/dt"."""
    if not callable(f):
        where = f" (the call is {call})" if call else ""
        raise TypeError(f"{name} must be {what}{where}; got {describe(f)}.")
