"""How long this process waited on the warehouse for other processes: one counter, cheap to bump.

The file backend adds the time spent waiting for the cross-process lock and for a foreign
process (a notebook, the DuckDB CLI) to release the file; the lake adds the attempts thrown away
by a commit conflict and the backoff before each replay. DuckLake's own in-commit retries (a
snapshot id taken by another writer, resolved without a conflict) happen inside COMMIT and are
not counted. Benchmarks read `wait_seconds()` before and after a run.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_TOTAL = 0.0


def add_wait(seconds: float) -> None:
    global _TOTAL
    if seconds > 0:
        with _LOCK:
            _TOTAL += seconds


def wait_seconds() -> float:
    """Cumulative seconds this process spent waiting on the warehouse for other processes."""
    with _LOCK:
        return _TOTAL
