"""Progress for the long calls (evaluation, likelihood, sampling, dataset writing): one line that
says what is being done, then a tqdm bar over the real units of work, both on stderr.

Each long public function takes `progress: bool = False` and, when True, `announce`s its task
and advances a `bar`; when False both are silent (the bar is tqdm's disabled bar, so the code
that advances it is the same either way). stdout stays for the results the caller prints.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["announce", "bar"]


def announce(line: str, enabled: bool) -> None:
    """Write `line` (what the call is about to do) to stderr when `enabled`, above any live bar."""
    if enabled:
        tqdm.write(line, file=sys.stderr)


def bar(total: int, desc: str, enabled: bool, unit: str = "batch") -> tqdm:
    """A tqdm bar on stderr over `total` units of work called `unit`, labelled `desc`; disabled
    (silent, every method a no-op) unless `enabled`. Use it as a context manager."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)
