"""The batches a training call consumes: drawn on the devices, or read from an image dataset,
and coupled on the host where the coupling's solver lives there.

`make_batches(spec, mesh, coupling, group)` returns a `Batches`: `batches(key, first_step)`
gives the `steps_per_call` batches {"x0", "x1"[, "label"]} of shape (steps_per_call, batch,
...) for steps first_step, first_step + 1, ..., split over the mesh's "data" axis;
`batches.position(step)` is the data position to checkpoint with the state at `step`, and
`batches.restore(position, step)` resumes there.

- Precomputed pairs (a teacher's, `config.teacher.precompute`): step s draws `batch` indices
  into them with replacement from the same key as the densities; the position is the step.
- Densities (`fm_jax.data`): step s draws from `fold_in(fold_in(key, DATA_STREAM), s)` on the
  devices, so a batch does not depend on the device count, and the position is the step.
- Image datasets (`tfds:NAME`): each process reads its shard of the examples with grain
  (`fm_jax.data.images.batches`: shuffled per epoch from `config.seed`) as uint8, the arrays
  are assembled into global ones, and on the devices step s's key dequantizes / flips the
  images into x1 in [-1, 1] and draws x0 ~ N(0, I). The position is the grain iterator's
  state before the batches of that step were read, so a resumed run reads the same examples.

A host coupling (`on_host(coupling)`: `ExactOT(solver="network_simplex")`) is applied
here rather than inside the sharded step: the batches come to the host, each coupling set
(the whole batch, or each group of `group` examples) is solved in one single-device
call, and the coupled batches go back to the devices. A multi-device XLA program with host
callbacks in a loop deadlocks on CPU devices, and a solve on the host overlaps with the
devices' work on the previous call (the driver asks for the next batches right after
dispatching a call).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fm_jax.couplings import Coupling, ExactOT
from fm_jax.train.sharding import batch_sharding, place, replicated
from fm_jax.train.spec import RunSpec

__all__ = ["DATA_STREAM", "Batches", "DensityBatches", "ImageBatches", "PairBatches", "make_batches", "on_host"]

DATA_STREAM = 0x5EED


def on_host(coupling: Coupling) -> bool:
    """Whether a coupling calls back into the host (POT's network simplex): the batches are then
    paired here, outside the multi-device step."""
    return isinstance(coupling, ExactOT) and coupling.solver == "network_simplex"


class Batches:
    """`batches(key, first_step) -> dict`; `position(step)` and `restore(position, step)` for checkpoints."""

    def __init__(self, spec: RunSpec, mesh: Mesh, coupling: Coupling, group: int):
        self.calls, self.n = spec.engine.steps_per_call, spec.engine.batch_size
        self.sharding = batch_sharding(mesh, leading_axes=1)
        self.coupling, self.group, self.host = coupling, group, on_host(coupling)
        if self.host:
            self._assignments = jax.jit(jax.vmap(coupling.assignment))
            # The examples this process's devices hold: a contiguous run of the batch axis on a 1-axis mesh.
            rows = [index[1] for index in self.sharding.addressable_devices_indices_map((self.calls, self.n)).values()]
            self.local = slice(min(r.start or 0 for r in rows), max(self.n if r.stop is None else r.stop for r in rows))

    def __call__(self, key: jax.Array, first_step: int) -> dict:
        raise NotImplementedError

    def position(self, step: int) -> dict:
        raise NotImplementedError

    def restore(self, position: dict, step: int) -> None:
        raise NotImplementedError

    def _couple_on_host(self, batch: dict) -> dict:
        """Pair the host arrays of the whole batch (every process does it: the global coupling
        needs all of it), keep this process's rows, and assemble the global arrays."""
        x0 = batch["x0"].reshape(-1, self.group, *batch["x0"].shape[2:])
        x1 = batch["x1"].reshape(x0.shape)
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            perm = np.asarray(self._assignments(x0, x1))
        x0 = np.take_along_axis(x0, perm.reshape(perm.shape + (1,) * (x0.ndim - 2)), axis=1)
        pairs = {name: value[:, self.local] for name, value in batch.items()} | {
            "x0": x0.reshape(batch["x0"].shape)[:, self.local]
        }
        return {
            name: jax.make_array_from_process_local_data(self.sharding, value, batch[name].shape)
            for name, value in pairs.items()
        }


class _DrawnBatches(Batches):
    """Batches drawn on the devices from (key, step): the data position is the step."""

    def position(self, step: int) -> dict:
        return {"step": int(step)}

    def restore(self, position: dict, step: int) -> None:
        if position.get("step") != step:
            raise ValueError(f"The checkpoint of step {step} holds the data position {position}; it is damaged.")


class DensityBatches(_DrawnBatches):
    """Batches drawn on the devices from the config's source and target densities."""

    def __init__(self, spec, mesh, coupling, group):
        super().__init__(spec, mesh, coupling, group)
        source, target = spec.data.densities()
        n, calls = self.n, self.calls

        def one(key, step):
            k_x0, k_x1 = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, DATA_STREAM), step))
            return {"x0": source.sample(k_x0, n), "x1": target.sample(k_x1, n)}

        def sample(key, first_step):
            return jax.vmap(one, in_axes=(None, 0))(key, first_step + jnp.arange(calls))

        self._sample = jax.jit(sample)
        self._sample_sharded = jax.jit(sample, out_shardings=self.sharding)

    def __call__(self, key: jax.Array, first_step: int) -> dict:
        if not self.host:
            return self._sample_sharded(key, first_step)
        cpu = jax.local_devices(backend="cpu")[0]
        with jax.default_device(cpu):
            batch = jax.device_get(self._sample(jax.device_put(key, cpu), first_step))
        return self._couple_on_host(batch)


class PairBatches(_DrawnBatches):
    """Batches drawn on the devices, with replacement, from a fixed set of (x0, x1) pairs (a
    teacher's pairs computed once before training, `fm_jax.train.teachers.precompute_pairs`)."""

    def __init__(self, spec, mesh, coupling, group, pairs: dict):
        super().__init__(spec, mesh, coupling, group)
        pairs = place(pairs, {name: replicated(mesh) for name in pairs})  # every process computed the same pairs
        count, n, calls = pairs["x1"].shape[0], self.n, self.calls

        def one(key, step):
            index = jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, DATA_STREAM), step), (n,), 0, count)
            return {name: value[index] for name, value in pairs.items()}

        self._sample = jax.jit(
            lambda key, first: jax.vmap(one, in_axes=(None, 0))(key, first + jnp.arange(calls)),
            out_shardings=self.sharding,
        )

    def __call__(self, key: jax.Array, first_step: int) -> dict:
        return self._sample(key, first_step)


class ImageBatches(Batches):
    """Batches of an image dataset read with grain on each process; x1 and x0 made on the devices."""

    def __init__(self, spec, mesh, coupling, group):
        super().__init__(spec, mesh, coupling, group)
        from fm_jax.data import images

        d, labels = spec.data.image, spec.data.num_classes > 0
        processes = jax.process_count()
        self._iterator = images.batches(
            d.name,
            d.dir,
            d.split,
            self.n // processes,
            seed=spec.seed,
            shard_index=jax.process_index(),
            shard_count=processes,
            num_threads=d.num_threads,
        )
        self._next, self._positions = 0, {}
        flip, dequantize, levels = d.flip, d.dequantize, spec.data.levels

        def one(key, step, image):
            k_x0, k_x1 = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, DATA_STREAM), step))
            if levels:  # a discrete flow's tokens; its loss draws the source itself
                return {"x1": images.to_tokens(k_x1, image, levels, flip=flip)}
            x1 = images.preprocess(k_x1, image, flip=flip, dequantize=dequantize)
            return {"x0": jax.random.normal(k_x0, x1.shape, x1.dtype), "x1": x1}

        def prepare(key, first_step, image, label):
            batch = jax.vmap(one, in_axes=(None, 0, 0))(key, first_step + jnp.arange(self.calls), image)
            return batch | ({"label": label} if labels else {})

        self._prepare = jax.jit(prepare)
        self._prepare_sharded = jax.jit(prepare, out_shardings=self.sharding)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        """The next `steps_per_call` host batches of this process: uint8 images and int32 labels."""
        batches = [next(self._iterator) for _ in range(self.calls)]
        return np.stack([b["image"] for b in batches]), np.stack([b["label"] for b in batches]).astype(np.int32)

    def __call__(self, key: jax.Array, first_step: int) -> dict:
        if first_step != self._next:
            raise RuntimeError(
                f"Image batches are read in order: asked for step {first_step}, the next is {self._next}."
            )
        self._positions = {first_step: self._iterator.get_state()} | {
            s: p for s, p in self._positions.items() if s == first_step - self.calls
        }
        self._next = first_step + self.calls
        image, label = self._read()
        shape = (self.calls, self.n)
        if self.host:  # single process (checked by the driver): the host holds the whole batch
            cpu = jax.local_devices(backend="cpu")[0]
            with jax.default_device(cpu):
                batch = jax.device_get(self._prepare(jax.device_put(key, cpu), first_step, image, label))
            return self._couple_on_host(batch)
        image = jax.make_array_from_process_local_data(self.sharding, image, shape + image.shape[2:])
        label = jax.make_array_from_process_local_data(self.sharding, label, shape)
        return self._prepare_sharded(key, first_step, image, label)

    def position(self, step: int) -> dict:
        """The iterator state before the call holding `step` was read (a stop may cut a call)."""
        if step == self._next:
            return self._iterator.get_state()
        step -= step % self.calls
        if step not in self._positions:
            raise RuntimeError(
                f"No data position recorded for step {step} (the next batches are for step {self._next})."
            )
        return self._positions[step]

    def restore(self, position: dict, step: int) -> None:
        self._iterator.set_state(position)
        self._next, self._positions = step - step % self.calls, {}


def make_batches(spec: RunSpec, mesh: Mesh, coupling: Coupling, group: int, pairs: dict | None = None) -> Batches:
    """The batch source of a run; `group` examples per coupling set for a host coupling;
    `pairs`: precomputed {"x0", "x1"} to draw the batches from instead of the densities.
    Image batches carry the class labels when the run is class-conditional."""
    if pairs is not None:
        return PairBatches(spec, mesh, coupling, group, pairs)
    if spec.data.image is not None:
        return ImageBatches(spec, mesh, coupling, group)
    return DensityBatches(spec, mesh, coupling, group)
