"""Checkpoints of a run: orbax's CheckpointManager under `WORKDIR/checkpoints/<step>`, each
verified by checksums on restore; a damaged one is moved aside and the one before it used.

Saves are asynchronous (the devices go on training while the state is written) and the
last `keep` are kept. A checkpoint holds four items:

- `state/`: the whole `TrainState` (step, params, optimizer state, EMA, key). Restoring places
  every array directly with the shardings of the current mesh, so a run saved on 8 devices
  resumes on 1 or 4.
- `data/`: the data position (JSON). For densities sampled on the devices it is the step
  itself (the batches of step s are a pure function of (key, s)); for image datasets the
  grain iterator's state (`fm_jax.train.batches`).
- `log/`: the per-step metrics of the log window the checkpoint cuts (JSON, {"metrics": {name:
  values}}; older checkpoints hold {"losses": values}), so that a resumed run logs the same
  means as one never interrupted.
- `checksums/`: two 32-bit position-weighted sums of the raw bits of every array of the state
  (on the host where this process holds the arrays whole; on the devices, on the global arrays,
  in a multi-process run, so every process gets the same numbers; both give the same sums),
  and the SHA-256 of the two JSON items. Any single bit flip in a
  restored array changes the first sum (its weights are odd, so a flip of bit k at element i
  adds +-2^k w_i != 0 mod 2^32); a decoder that returns changed values without an error is
  caught here.

A checkpoint that cannot be read or whose checksums do not match is *damaged*. A training run
(`read_only=False`) moves it to `checkpoints/damaged/<step>` (kept for inspection, never
deleted), warns in one line and resumes from the newest intact one; when every checkpoint is
damaged it refuses to start (`DamagedCheckpoints`) and moves nothing. A reader
(`read_only=True`: sample, eval) skips damaged ones without moving them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fm_jax.train import distributed
from fm_jax.train.state import TrainState, checkpoint_tree

__all__ = ["CHECKPOINTS", "DAMAGED", "Checkpoints", "DamagedCheckpoints", "Restored", "checksums"]

CHECKPOINTS = "checkpoints"
DAMAGED = "damaged"
# Odd multipliers (Knuth's and a second golden-ratio constant) of the element index.
_W1, _W2 = np.uint32(2654435761), np.uint32(2246822519)


class DamagedCheckpoints(ValueError):
    """Every checkpoint of a workdir is damaged: the run refuses to start over them."""


class _Damaged(ValueError):
    """A checkpoint that cannot be read; its message is the one-line reason."""


class Restored(NamedTuple):
    """A checkpoint read back: the state (placed), its step, the data position and the log window."""

    state: TrainState
    step: int
    data: dict
    log: dict


def _bits(x: jax.Array) -> jax.Array:
    """The raw bits of `x` as uint32 (wider types as several words, narrower ones widened)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size < 4:
        return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of 2 words


@jax.jit
def _device_sums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """([sum1, sum2], all finite) of one global array, on its devices: one small program per
    (shape, dtype, sharding), shared by the params, the optimizer moments and the EMA (one
    program for the whole tree took ~10 s to compile on a CPU for a tiny U-Net's state)."""
    bits = _bits(x)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = np.uint32(1)
    for axis in reversed(range(bits.ndim)):  # the row-major element index, built without a reshape
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * stride
        stride = np.uint32(stride * np.uint32(bits.shape[axis]))
    w1, w2 = index * _W1 | 1, (index ^ np.uint32(0x9E3779B9)) * _W2 | 1
    sums = jnp.stack([jnp.sum(bits * w1, dtype=jnp.uint32), jnp.sum((bits ^ (bits >> 15)) * w2, dtype=jnp.uint32)])
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return sums, finite


def _host_sums(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """`_device_sums` of an array on the host, the same numbers (uint32 arithmetic wraps mod 2^32
    in NumPy as in XLA; the row-major index of a C-ordered array is its flat position)."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        bits = x.astype(np.uint32).ravel()
    elif x.dtype.itemsize < 4:
        bits = x.view({1: np.uint8, 2: np.uint16}[x.dtype.itemsize]).astype(np.uint32).ravel()
    else:
        bits = x.view(np.uint32).ravel()  # 8 bytes: each element's two words in order, as bitcast gives them
    index = np.arange(bits.size, dtype=np.uint32)
    w1, w2 = index * _W1 | 1, (index ^ np.uint32(0x9E3779B9)) * _W2 | 1
    sums = np.array([np.sum(bits * w1, dtype=np.uint32), np.sum((bits ^ (bits >> 15)) * w2, dtype=np.uint32)])
    finite = bool(np.all(np.isfinite(x))) if jnp.issubdtype(x.dtype, jnp.inexact) else True  # bfloat16 too
    return sums, finite


def checksums(tree: Any) -> tuple[dict[str, list[int]], bool]:
    """({leaf path: [sum1, sum2]}, whether every float is finite) of a tree of (global) arrays.

    Arrays this process holds whole are summed on the host (no compile: a CLI command that
    reads a checkpoint starts at once); a multi-process run's global arrays on their devices
    (`_device_sums`), so that every process gets the same numbers. Both give the same sums."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if all(getattr(x, "is_fully_addressable", True) for _, x in flat):
        out = [_host_sums(np.asarray(x)) for _, x in flat]
    else:
        out = jax.device_get([_device_sums(x) for _, x in flat])
    sums = {jax.tree_util.keystr(path): [int(v) for v in np.asarray(s)] for (path, _), (s, _) in zip(flat, out)}
    return sums, all(bool(finite) for _, finite in out)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _one_line(err: Exception) -> str:
    """An error as one short line: orbax's messages carry whole TensorStore specs."""
    if isinstance(err, _Damaged):
        return str(err)
    text = str(err).strip().splitlines()[0].split(" See full TensorStore details")[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


class Checkpoints:
    """`Checkpoints(workdir, keep=3)`: save(state, step, data, log), restore_latest(like, shardings), wait(), close()."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, read_only: bool = False, primary: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINTS
        self.read_only, self.primary = read_only, primary
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        _ABSL.addFilter(_READ_ONLY_NOTICE)  # once: adding a filter twice is a no-op
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, step: int, data: dict, log: dict | None = None) -> None:
        """Start writing `state`, the data position and the log window as checkpoint `step`;
        returns before the write ends. A state with a NaN or infinity is never written."""
        tree = checkpoint_tree(state)
        sums, finite = checksums(tree)
        if not finite:
            raise FloatingPointError(f"The state at step {step} holds NaN or infinite values: it was not checkpointed.")
        log = log or {}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(tree),
            data=ocp.args.JsonSave(data),
            log=ocp.args.JsonSave(log),
            checksums=ocp.args.JsonSave({"state": sums, "data": _digest(data), "log": _digest(log)}),
        )
        self.manager.save(step, args=args, force=True)

    def _restore(self, step: int, target: Any) -> Restored:
        # A checkpoint written before checksums existed holds only state/ and data/: it is read
        # unverified (with a warning) rather than taken for damaged.
        folder = self.directory / str(step)
        verified = any((folder / item).is_dir() for item in ("checksums", "log")) or not (folder / "data").is_dir()
        items = {"state": ocp.args.StandardRestore(target), "data": ocp.args.JsonRestore()}
        if verified:
            items |= {"log": ocp.args.JsonRestore(), "checksums": ocp.args.JsonRestore()}
        restored, why = None, None
        with _quiet():
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except (MemoryError, PermissionError):
                raise  # not damage: the checkpoint may be fine
            except Exception as err:  # orbax raises many types for a damaged checkpoint
                why = _one_line(err)  # the error (and the failed reads its traceback holds) is freed here
        # Each process reads its own shards: all must have read theirs before the checksums,
        # which are collectives, and all must reach the same verdict.
        if not distributed.gather([why is None]).all():
            raise _Damaged(why or "another process could not read its part")
        data = dict(restored["data"])
        if not verified:
            if self.primary:
                warnings.warn(
                    f"Checkpoint {self.directory / str(step)} predates checksums: restored unverified.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return Restored(_state(restored["state"]), step, data, {})
        saved, log = restored["checksums"], dict(restored["log"])
        sums, _ = checksums(restored["state"])
        changed = sorted(k for k in set(sums) | set(saved["state"]) if sums.get(k) != saved["state"].get(k))
        if changed:
            raise ValueError(f"checksum mismatch in {len(changed)} array(s), e.g. {changed[0]}")
        for name, item in (("data", data), ("log", log)):
            if _digest(item) != saved[name]:
                raise ValueError(f"checksum mismatch in the {name} item")
        state = _state(restored["state"])
        if int(state.step) != step:
            raise ValueError(f"it holds the state of step {int(state.step)}")
        return Restored(state, step, data, log)

    def intact(self, step: int, like: Any) -> bool:
        """Whether checkpoint `step` reads back onto this process's first device and matches its
        checksums; `like` is a (possibly abstract) `checkpoint_tree` of the state."""
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        try:
            self._restore(step, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like))
        except Exception:  # any damage
            return False
        return True

    def restore_latest(self, like: TrainState, shardings: Any) -> Restored | None:
        """The newest intact checkpoint, its state placed with `shardings` (a tree like `like`);
        None if there is none. Damaged ones newer than it are moved aside (training) or skipped
        (read-only); if all are damaged, `DamagedCheckpoints` (training) or None (read-only)."""
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            checkpoint_tree(like),
            shardings._asdict(),
        )
        damaged, found = [], None
        for step in reversed(self.steps()):
            try:
                found = self._restore(step, target)
                break
            except Exception as err:  # orbax raises many types for a damaged checkpoint
                damaged.append((step, _one_line(err)))
        if damaged and found is None and not self.read_only:
            steps = ", ".join(f"{s} ({why})" for s, why in damaged)
            raise DamagedCheckpoints(
                f"Every checkpoint in {self.directory} is damaged: {steps}. Nothing was changed. Either move them "
                f"aside (e.g. mv {self.directory} {self.directory}.damaged) and rerun the same command to restart "
                "from step 0, or pass a new --workdir."
            )
        for step, why in damaged:
            where = self._move_aside(step) if not self.read_only else None
            if not self.primary:
                continue
            warnings.warn(
                f"Checkpoint {self.directory / str(step)} is damaged ({why}); "
                + (f"moved to {where}; " if where else "")
                + (f"using step {found.step}." if found else "no intact checkpoint is left."),
                RuntimeWarning,
                stacklevel=2,
            )
        if damaged and not self.read_only:
            distributed.barrier("fm_jax_checkpoints_moved")
            self.manager.reload()
        return found

    def _move_aside(self, step: int) -> pathlib.Path:
        """Move checkpoint `step` to damaged/<step> (damaged/<step>.1, ... when taken); process 0 only."""
        distributed.barrier(f"fm_jax_checkpoint_{step}_read")  # no process still reads it
        aside = self.directory / DAMAGED / str(step)
        for n in range(1, 1000):
            if not aside.exists():
                break
            aside = self.directory / DAMAGED / f"{step}.{n}"
        if self.primary:
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(self.directory / str(step)), aside)
        return aside

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class _DropReadOnlyNotice(logging.Filter):
    """Drops orbax's "Given directory is read only=..." notice, which every reader of a run's
    checkpoints (sample, eval, nll, a resumed run's first check) would print: reading is
    what `read_only=True` asks for. Every other absl message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


_ABSL = logging.getLogger("absl")
_READ_ONLY_NOTICE = _DropReadOnlyNotice()


@contextlib.contextmanager
def _quiet():
    """Keep orbax's reports of a damaged read to the one line `restore_latest` warns: its absl
    warnings (a missing metadata file, ...) while a checkpoint is read, and the ~50-line
    TensorStore specs of the reads that failed beside the first, which Python prints as
    "Exception ignored in <coroutine ...>" when the failed reads are collected."""
    absl, level, hook = logging.getLogger("absl"), logging.getLogger("absl").level, sys.unraisablehook
    absl.setLevel(logging.ERROR)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()  # the failed reads' coroutines, while their reports are still muted
        sys.unraisablehook = hook
        absl.setLevel(level)


def _state(tree: dict) -> TrainState:
    state = TrainState(**tree)
    return state._replace(key=jax.random.wrap_key_data(state.key))
