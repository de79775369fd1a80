"""Multi-process (multi-host) runs: `jax.distributed.initialize` from the config, before any
device is touched.

`config.distributed.mode`:
- "off": one process (the default);
- "auto": let JAX find the cluster (TPU pods, SLURM, ...);
- "manual": `coordinator` (host:port), `num_processes` and `process_id` given, e.g. per
  process on one machine with 127.0.0.1.

A peer that never arrives fails the run after `init_timeout_s`, a peer that dies after
`heartbeat_timeout_s`: never a hang. Every process runs the same program; process 0 writes
the config, logs and summary, and all of them write their shards of each checkpoint.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

__all__ = ["MODES", "agree", "barrier", "gather", "initialize", "is_primary"]

MODES = ("off", "auto", "manual")


def initialize(
    mode: str = "off",
    coordinator: str = "",
    num_processes: int = 1,
    process_id: int = 0,
    init_timeout_s: int = 300,
    heartbeat_timeout_s: int = 100,
) -> None:
    """Join the run's processes as a config's `distributed` section says; a no-op for mode "off".

    Args:
        mode: "off", "auto" (the cluster environment tells JAX the processes) or "manual".
        coordinator: HOST:PORT of process 0 ("manual").
        num_processes: the number of processes ("manual").
        process_id: this process's index ("manual").
        init_timeout_s: how long to wait for the other processes to join.
        heartbeat_timeout_s: how long a silent peer is waited for before the run ends.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown distributed.mode {mode!r}; choose one of {MODES}.")
    if mode == "off":
        return
    timeouts = {"initialization_timeout": init_timeout_s, "heartbeat_timeout_seconds": heartbeat_timeout_s}
    if mode == "auto":
        jax.distributed.initialize(**timeouts)
        if jax.process_count() > 1:
            _announce(heartbeat_timeout_s)
        return
    if not coordinator or not 0 <= process_id < num_processes:
        raise ValueError(
            f"distributed.mode='manual' needs coordinator=HOST:PORT and 0 <= process_id < num_processes; got "
            f"coordinator={coordinator!r}, process_id={process_id}, num_processes={num_processes}."
        )
    jax.distributed.initialize(coordinator, num_processes, process_id, **timeouts)
    _announce(heartbeat_timeout_s)


def _announce(heartbeat_timeout_s: int) -> None:
    """Say, before anything can fail, what a dead peer does and how to go on: JAX's distributed
    service (or gloo) ends the other processes at once from C++ (an abort no Python code can
    catch), and its message names the failed task but not what to do next."""
    print(
        f"fm-jax: process {jax.process_index()} of {jax.process_count()}. If a process dies, JAX ends the "
        f"others within {heartbeat_timeout_s} s (its message names the failed task); then run the same "
        "command on every process to resume from the last checkpoint.",
        file=sys.stderr,
        flush=True,
    )


def is_primary() -> bool:
    """Whether this process writes the run's shared files (config, logs, summary)."""
    return jax.process_index() == 0


def gather(values) -> np.ndarray:
    """Every process's int32 `values`, stacked as (processes, n), the same on every process:
    one small all-gather ((1, n) with one process, no communication)."""
    values = np.asarray(values, np.int32).reshape(-1)
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).reshape(jax.process_count(), -1)


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(stop: bool, count: int) -> tuple[bool, int]:
    """(whether any process was asked to stop, process 0's `count`), the same on every process.

    Called after each part of a train call: a pod's hosts get SIGTERM at different moments,
    and a process that stopped alone would leave the others waiting in the next step's
    collectives."""
    rows = gather([stop, count])
    return bool(rows[:, 0].any()), int(rows[0, 1])
