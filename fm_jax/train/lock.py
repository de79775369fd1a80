"""A run owns its workdir: an exclusive lock on `WORKDIR/lock`, held for the whole run.

The lock is `fcntl.flock` on the file, so the kernel drops it when the holding process dies
in any way (kill -9 included): a stale lock of a dead process never blocks a rerun, and the
PID and host in the file only serve the message. In a multi-process run process 0 takes it
and tells the others whether it got it, so that every process refuses together.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket
import time

from fm_jax.train import distributed

__all__ = ["LOCK", "WorkdirLocked", "workdir_lock"]

LOCK = "lock"


class WorkdirLocked(ValueError):
    """Another run holds the workdir."""


def _holder(path: pathlib.Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path, primary: bool = True):
    """Hold `workdir`'s lock (process 0 of a run) for the block; raise `WorkdirLocked` if held."""
    error, handle = "", None
    if primary:
        path = workdir / LOCK
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as err:
            error = f"Cannot create {path} ({err}): pass a --workdir you can write to (nothing was changed)."
    if handle is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            handle = None
            error = (
                f"{workdir} is in use by {_holder(path)}: wait for that run to end or stop it, "
                "or pass another --workdir (nothing was changed)."
            )
        except OSError as err:  # e.g. ENOLCK on a file system without locks
            handle.close()
            handle = None
            error = f"Cannot lock {path} ({err}): put the workdir on a file system with locks (nothing was changed)."
        else:
            handle.seek(0)
            handle.truncate()
            handle.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
    if not distributed.gather([not error])[0, 0] and not error:  # process 0's verdict holds for all
        error = f"{workdir} is in use by another run (process 0 could not lock it): nothing was changed."
    if error:
        raise WorkdirLocked(error)
    try:
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
