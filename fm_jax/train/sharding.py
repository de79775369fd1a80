"""Device meshes and the layout of the train state and batches on them.

One mesh axis, "data": batches are split along their example axis over it. Parameters (and
the optimizer state and EMA that mirror them) are laid out by `param_layout`:

- "replicated": every device holds all of them (data parallelism);
- "fsdp": each array is split over "data" along its largest axis that the device count
  divides, and kept whole where none does (fully sharded data parallelism, for models
  whose state does not fit one device). XLA gathers the pieces where a layer uses them.

Axes are `AxisType.Auto`, so XLA's partitioner places the collectives; the numbers do not
depend on the layout beyond floating-point reassociation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fm_jax.registry import Registry

__all__ = ["DATA", "LAYOUTS", "batch_sharding", "make_mesh", "place", "replicated", "state_shardings"]

DATA = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A one-axis "data" mesh over the first `num_devices` devices (0: all of them)."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(
            f"config.mesh.num_devices = {num_devices}, but {len(devices)} devices are visible: "
            f"choose 1..{len(devices)}, or 0 for all."
        )
    chosen = devices[: num_devices or len(devices)]
    return Mesh(np.asarray(chosen), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Examples split over "data" after `leading_axes` unsplit axes (e.g. the steps of one call)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), DATA))


def _fsdp_spec(shape: tuple[int, ...], devices: int) -> PartitionSpec:
    """Split the largest axis that `devices` divides; replicate when none does (biases of odd size, scalars)."""
    axes = [i for i in np.argsort(shape)[::-1] if shape[i] % devices == 0 and shape[i] >= devices]
    if not axes or devices == 1:
        return PartitionSpec()
    spec = [None] * len(shape)
    spec[axes[0]] = DATA
    return PartitionSpec(*spec)


def _replicated_leaf(x: Any, mesh: Mesh) -> NamedSharding:
    return replicated(mesh)


def _fsdp_leaf(x: Any, mesh: Mesh) -> NamedSharding:
    if not getattr(x, "shape", ()):
        return replicated(mesh)
    return NamedSharding(mesh, _fsdp_spec(tuple(x.shape), mesh.shape[DATA]))


# Parameter layouts: (leaf, mesh) -> its sharding.
LAYOUTS: Registry[Callable[[Any, Mesh], NamedSharding]] = Registry(
    "mesh.param_layout", {"replicated": _replicated_leaf, "fsdp": _fsdp_leaf}
)


def state_shardings(state: Any, mesh: Mesh, layout: str) -> Any:
    """A NamedSharding per leaf of a train state (arrays or ShapeDtypeStructs), as `LAYOUTS[layout]` places it."""
    leaf = LAYOUTS[layout]
    return jax.tree.map(lambda x: leaf(x, mesh), state)


def place(tree: Any, shardings: Any) -> Any:
    """Host values (the same on every process) laid out as global arrays with `shardings`.

    Unlike `jax.device_put`, this works when the mesh spans processes: each process fills
    only the shards of its own devices. Arrays already laid out so are returned as they are.
    """

    def leaf(x, sharding):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(leaf(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(leaf, tree, shardings)
