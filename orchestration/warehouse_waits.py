"""After every step of the pipeline job, one log line: how long the run's process waited on the
warehouse for other processes in that step, and in the run so far.

`core.warehouse.wait_seconds()` counts per process (file lock waits on the file backend, commit
conflicts replayed on the lake). A run's steps run one after another in its process (the
in-process executor), so the growth of the counter between two steps' ends is the later step's
wait. The line lands in the run's event log, where `benchmarks/multirun.py` reads it.
"""

from __future__ import annotations

import threading

import dagster as dg

from core.warehouse import wait_seconds

_LOCK = threading.Lock()
_last_reading = wait_seconds()
_run_totals: dict[str, float] = {}


def report_wait(context: dg.HookContext) -> None:
    global _last_reading
    with _LOCK:
        now = wait_seconds()
        step = max(0.0, now - _last_reading)
        _last_reading = now
        total = _run_totals[context.run_id] = _run_totals.get(context.run_id, 0.0) + step
    context.log.info(
        f"warehouse wait: {step:.3f} s in step {context.step_key}; {total:.3f} s in this run so far"
    )


@dg.success_hook(name="warehouse_wait_after_success")
def warehouse_wait_after_success(context: dg.HookContext) -> None:
    report_wait(context)


@dg.failure_hook(name="warehouse_wait_after_failure")
def warehouse_wait_after_failure(context: dg.HookContext) -> None:
    report_wait(context)


WAREHOUSE_WAIT_HOOKS = {warehouse_wait_after_success, warehouse_wait_after_failure}
