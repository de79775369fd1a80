"""Held-out draws and fixed-size batches for evaluating a trained run.

Every random draw of an evaluation comes from `held_out_key(seed, stream)` =
`fold_in(key(seed), stream)`, one named stream per kind of draw. Training folds the step
number (an int32) into `key(config.seed)`, so streams at 2**31 or above never meet a training
key; `TARGET` (5,131,340) and `NOISE` (6,766) keep the values that the committed density-NLL
and image results were drawn with, and meet a step key only in runs that long.
Fixed-size batches come from `fm_jax.primitives.padded_chunks`.
"""

from __future__ import annotations

import jax

__all__ = ["NOISE", "PROBES", "REFERENCE", "TARGET", "held_out_key"]

TARGET = 0x4E4C4C  # held-out target points of density runs
NOISE = 0x1A6E  # source points to sample from (x0); image likelihoods' dequantization and probes
REFERENCE = 0x8000_05EF  # fresh source points of the reference W2(source, target)
PROBES = 0x8000_09B0  # Hutchinson probes of density likelihoods


def held_out_key(seed: int, stream: int) -> jax.Array:
    """The key of one kind of evaluation draw: `fold_in(key(seed), stream)`."""
    return jax.random.fold_in(jax.random.key(seed), stream)
