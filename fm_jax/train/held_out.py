"""Held-out draws and fixed-size batches for evaluating a trained run.

Every random draw of an evaluation comes from `held_out_key(seed, stream)` =
`fold_in(key(seed), stream)`, one named stream per kind of draw. Training folds the step
number (an int32) into `key(config.seed)`, so streams at 2**31 or above never meet a training
key; `TARGET` (5,131,340) and `NOISE` (6,766) keep the values that the committed density-NLL
and image results were drawn with, and meet a step key only in runs that long.
`padded_chunks` cuts arrays into runs of a fixed number of rows, padding the last with
copies of its last row, so that one compile serves every chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NOISE", "PROBES", "REFERENCE", "TARGET", "held_out_key", "padded_chunks"]

TARGET = 0x4E4C4C  # held-out target points of density runs
NOISE = 0x1A6E  # source points to sample from (x0); image likelihoods' dequantization and probes
REFERENCE = 0x8000_05EF  # fresh source points of the reference W2(source, target)
PROBES = 0x8000_09B0  # Hutchinson probes of density likelihoods


def held_out_key(seed: int, stream: int) -> jax.Array:
    """The key of one kind of evaluation draw: `fold_in(key(seed), stream)`."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def padded_chunks(size: int, *arrays: np.ndarray | None) -> Iterator[tuple[int, int, list[jax.Array | None]]]:
    """(start, rows, chunks) over consecutive runs of `size` rows of each array (None passes through).

    Args:
        size: rows per chunk; the last chunk is padded to it with copies of its last row.
        arrays: arrays of one length (their first axis); None entries stay None.

    Yields:
        The first row of the chunk, how many of its rows are real, and the padded chunks.
    """
    num = len(next(a for a in arrays if a is not None))
    for start in range(0, num, size):
        rows = min(size, num - start)
        chunks = []
        for a in arrays:
            if a is None:
                chunks.append(None)
                continue
            part = np.asarray(a[start : start + rows])
            if rows < size:
                part = np.concatenate([part, np.repeat(part[-1:], size - rows, axis=0)])
            chunks.append(jnp.asarray(part))
        yield start, rows, chunks
