"""Files replaced in one rename, so that a kill or a crash never leaves one half written.

Every file that fm_jax writes and later reads back (a run's config and metrics, converted
weights, cached FID statistics) goes through `replaced`: the contents go to a temporary file
beside the destination, which `os.replace` (atomic on POSIX within one file system) puts in
its place only once it is complete; on an error the temporary file is removed and whatever
the destination held is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replaced", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replaced(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) to write to; on a clean exit it replaces
    `path` with the permissions of a plainly created file. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent, prefix=f".{path.stem}-")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; the destination need not be
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace `path` by `text` in one rename."""
    with replaced(path) as tmp:
        tmp.write_text(text)
