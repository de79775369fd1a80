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

import jax
import ml_collections

__all__ = ["MODES", "initialize", "is_primary"]

MODES = ("off", "auto", "manual")


def initialize(config: ml_collections.ConfigDict) -> None:
    """Join the run's processes as the config says; a no-op for mode "off"."""
    d = config.distributed
    if d.mode not in MODES:
        raise ValueError(f"Unknown distributed.mode {d.mode!r}; choose one of {MODES}.")
    if d.mode == "off":
        return
    timeouts = {"initialization_timeout": d.init_timeout_s, "heartbeat_timeout_seconds": d.heartbeat_timeout_s}
    if d.mode == "auto":
        jax.distributed.initialize(**timeouts)
        return
    if not d.coordinator or not 0 <= d.process_id < d.num_processes:
        raise ValueError(
            f"distributed.mode='manual' needs coordinator=HOST:PORT and 0 <= process_id < num_processes; got "
            f"coordinator={d.coordinator!r}, process_id={d.process_id}, num_processes={d.num_processes}."
        )
    jax.distributed.initialize(d.coordinator, d.num_processes, d.process_id, **timeouts)


def is_primary() -> bool:
    """Whether this process writes the run's shared files (config, logs, summary)."""
    return jax.process_index() == 0
