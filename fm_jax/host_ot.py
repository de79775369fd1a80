"""Exact assignments on the host: POT's network simplex, many coupling sets at once on the host's cores.

`ExactOT(solver="network_simplex")` solves through `network_simplex(cost)`, a
`jax.pure_callback` that receives every set of a vmapped call at once (the steps of a training
call times its coupling groups) and solves them in a thread pool. POT's `emd` runs the network
simplex in C++ with the GIL released, so the threads solve on as many cores as there are (two
threads on two idle cores: 1.6-2.1x the sets per second of one, results/README.md#couplings-how-long-a-minibatch-pairing-takes);
each set's solve is the same deterministic computation however many threads run, so the pairs
are bitwise those of one thread.

The pool's size is `threads()`: the `FM_JAX_HOST_THREADS` environment variable, else the
cores this process may run on; `set_threads(k)` overrides both.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["assignment", "assignments", "network_simplex", "set_threads", "threads"]

_threads: int | None = None
_pools: dict[int, ThreadPoolExecutor] = {}


def threads() -> int:
    """The number of threads the host solves use (at least 1)."""
    if _threads is not None:
        return _threads
    configured = os.environ.get("FM_JAX_HOST_THREADS", "")
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise ValueError(f"FM_JAX_HOST_THREADS must be a positive integer, got {configured!r}.")
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(count: int | None) -> None:
    """Use `count` threads for the host solves from now on (None: back to the default)."""
    global _threads
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"set_threads needs a positive integer or None, got {count!r}.")
    _threads = count


def assignment(cost: np.ndarray) -> np.ndarray:
    """perm[j] = the row paired with column j in an optimal assignment of one (n, n) cost."""
    import ot  # POT, and the scikit-learn it imports, load with the first host solve

    n = cost.shape[0]
    weights = np.full(n, 1.0 / n)
    plan = ot.emd(weights, weights, np.asarray(cost, np.float64), numItermax=max(100_000, 50 * n * n))
    # A vertex of the assignment polytope: a permutation matrix scaled by 1 / n.
    return np.argmax(plan, axis=0).astype(np.int32)


def assignments(costs: np.ndarray) -> np.ndarray:
    """`assignment` of every (n, n) cost of a (..., n, n) array, `threads()` at a time."""
    costs = np.asarray(costs)
    flat = costs.reshape(-1, *costs.shape[-2:])
    count = min(threads(), len(flat))
    if count <= 1:
        perms = [assignment(c) for c in flat]
    else:
        pool = _pools.get(count) or _pools.setdefault(count, ThreadPoolExecutor(count, "fm_jax-host-ot"))
        perms = list(pool.map(assignment, flat))
    return np.stack(perms).reshape(costs.shape[:-1]) if perms else np.zeros(costs.shape[:-1], np.int32)


def network_simplex(cost: jax.Array) -> jax.Array:
    """The optimal assignment of a cost (n, n) on the host, inside jit; under vmap every set of
    the batch reaches the host in one callback and is solved in parallel."""
    shape = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
    return jax.pure_callback(assignments, shape, cost, vmap_method="expand_dims")
