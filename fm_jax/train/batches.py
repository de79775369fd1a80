"""The batches a training call consumes: drawn on the devices, coupled on the host where the
coupling's solver lives there.

`make_batches(config, mesh, coupling)` returns `get(key, first_step)`, the
`steps_per_call` batches {"x0", "x1"} of shape (steps_per_call, batch, d) for steps
first_step, first_step + 1, ..., split over the mesh's "data" axis. Step s draws from
`fold_in(fold_in(key, DATA_STREAM), s)` on the devices, so a batch does not depend on the
device count.

A host coupling (`coupling.on_host`, e.g. `ExactOT(solver="network_simplex")`) is applied
here rather than inside the sharded step: the batches come to the host, each coupling set
(the whole batch, or each group of `coupling_group` examples) is solved in one single-device
call, and the coupled batches go back to the devices. A multi-device XLA program with host
callbacks in a loop deadlocks on CPU devices, and a solve on the host overlaps with the
devices' work on the previous call (the driver asks for the next batches right after
dispatching a call).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from fm_jax import data
from fm_jax.couplings import Coupling
from fm_jax.train.sharding import batch_sharding

__all__ = ["DATA_STREAM", "make_batches"]

DATA_STREAM = 0x5EED


def make_batches(
    config: ml_collections.ConfigDict, mesh: Mesh, coupling: Coupling, group: int
) -> Callable[[jax.Array, int], dict]:
    """`get(key, first_step) -> batches`; `group` examples per coupling set for a host coupling."""
    source, target = data.densities(config.source, config.target)
    n, calls = config.batch_size, config.steps_per_call
    sharding = batch_sharding(mesh, leading_axes=1)

    def one(key, step):
        k_x0, k_x1 = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, DATA_STREAM), step))
        return {"x0": source.sample(k_x0, n), "x1": target.sample(k_x1, n)}

    @jax.jit
    def sample(key, first_step):
        return jax.vmap(one, in_axes=(None, 0))(key, first_step + jnp.arange(calls))

    sample_sharded = jax.jit(sample, out_shardings=sharding)
    if not coupling.on_host:
        return sample_sharded

    cpu = jax.local_devices(backend="cpu")[0]
    assignments = jax.jit(jax.vmap(coupling.assignment))
    # The examples this process's devices hold: a contiguous run of the batch axis on a 1-axis mesh.
    rows = [index[1] for index in sharding.addressable_devices_indices_map((calls, n)).values()]
    local = slice(min(r.start or 0 for r in rows), max(n if r.stop is None else r.stop for r in rows))

    def get(key: jax.Array, first_step: int) -> dict:
        with jax.default_device(cpu):
            batch = jax.device_get(sample(jax.device_put(key, cpu), first_step))
            x0 = batch["x0"].reshape(-1, group, *batch["x0"].shape[2:])
            x1 = batch["x1"].reshape(x0.shape)
            perm = np.asarray(assignments(x0, x1))
        x0 = np.take_along_axis(x0, perm.reshape(perm.shape + (1,) * (x0.ndim - 2)), axis=1)
        # Every process couples the whole batch (the global coupling needs it), then keeps its rows.
        pairs = {"x0": x0.reshape(batch["x0"].shape)[:, local], "x1": batch["x1"][:, local]}
        return {
            name: jax.make_array_from_process_local_data(sharding, value, batch[name].shape)
            for name, value in pairs.items()
        }

    return get
