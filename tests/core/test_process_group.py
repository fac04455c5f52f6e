"""Stopping a child's whole process group (core/process_group.py), with real processes."""

from __future__ import annotations

import subprocess
import sys
import time

from core.process_group import group_alive, stop_process_group

# A child that ignores SIGTERM, in the group of a leader that exits at once.
ORPHAN = (
    "import signal, subprocess, sys;"
    "subprocess.Popen([sys.executable, '-c',"
    " 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']);"
)


def _start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_group_that_goes_on_sigterm_is_not_killed():
    process = _start("import time; time.sleep(60)")
    killed = []
    stop_process_group(process, grace_s=10, on_kill=lambda: killed.append(True))
    assert process.returncode == -15 and not killed and not group_alive(process.pid)


def test_a_member_that_outlives_its_leader_and_ignores_sigterm_is_killed():
    process = _start(ORPHAN)
    process.wait(timeout=30)  # the leader is gone; its child is not
    time.sleep(0.5)
    assert group_alive(process.pid)
    killed = []
    stop_process_group(process, grace_s=0.5, on_kill=lambda: killed.append(True))
    assert killed == [True] and not group_alive(process.pid)
    stop_process_group(process, grace_s=0.5)  # safe to call twice
