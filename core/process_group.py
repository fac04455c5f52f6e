"""Stopping a child started with `start_new_session=True`: its whole process group.

A launcher's children (SGLang's scheduler, dagster's code server and run workers) can outlive
it, so the group is signalled and waited for, not only the leader.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone_within(process: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None or group_alive(process.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_process_group(
    process: subprocess.Popen,
    grace_s: float,
    *,
    on_kill: Callable[[], None] | None = None,
    kill_wait_s: float = 10.0,
) -> None:
    """SIGTERM the group (even when the leader already exited), wait up to `grace_s` for the
    leader and every member to go, then SIGKILL what is left and wait for it. Safe to call twice.
    """
    group = process.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    if _gone_within(process, grace_s):
        return
    if on_kill is not None:
        on_kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait(timeout=kill_wait_s)
    _gone_within(process, kill_wait_s)
