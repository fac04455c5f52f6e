"""Sensor tick cost: one tick of the drop sensor's planner over many drops, ingested and unchanged.

Builds D drop folders of F small files each (their folders' mtimes aged, as a finished upload's
are), lets one tick request them all, then times:
- unchanged tick: what every tick costs afterwards (folders skipped by their signature);
- unchanged tick, full walk: the same with every folder walked (what the periodic re-walk costs,
  and what every tick cost before folder signatures);
and reports the cursor's size. Not a test: numbers for the machine that runs it.
Usage: python benchmarks/sensor_tick.py [--drops D] [--files F] [--repeat N] [--out F]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import print_table, write_json
from core.drops import Timing, WatcherState, plan_tick


def build(root: Path, drops: int, files: int) -> None:
    past = time.time() - 3600
    for d in range(drops):
        folder = root / f"drop-{d:05d}"
        folder.mkdir()
        for f in range(files):
            (folder / f"img-{f:04d}.jpg").write_bytes(b"\xff\xd8" + f"{d}-{f}".encode())
        os.utime(folder, (past, past))


def timed_tick(root: Path, state: WatcherState, timing: Timing, now: float) -> tuple[float, int]:
    started = time.perf_counter()
    plan = plan_tick(root, WatcherState.from_cursor(state.to_cursor()), now=now, timing=timing)
    plan.state.to_cursor()
    seconds = time.perf_counter() - started
    assert plan.ready == [], "an unchanged tick requested a run"
    return seconds, plan.walked


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sensor-tick-"))
    try:
        root = work / "drops"
        root.mkdir()
        build(root, args.drops, args.files)
        timing = Timing(quiet_period_s=0, rewalk_s=600)
        started = time.perf_counter()
        first = plan_tick(root, WatcherState(), now=1000.0, timing=timing)
        first_s = time.perf_counter() - started
        assert len(first.ready) == args.drops
        cursor = first.state.to_cursor()
        # Timed like the sensor: the cursor is parsed and written again on every tick.
        skipped = [timed_tick(root, first.state, timing, 1030.0) for _ in range(args.repeat)]
        full_timing = Timing(quiet_period_s=0, rewalk_s=0)
        walked = [timed_tick(root, first.state, full_timing, 1030.0) for _ in range(args.repeat)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Seconds to the microsecond: an unchanged tick over a small root takes well under a
    # millisecond, which 3 decimals printed as 0.0.
    results = {
        "drops": args.drops,
        "files_per_drop": args.files,
        "first_tick_s": round(first_s, 6),
        "unchanged_tick_s": round(statistics.median(s for s, _ in skipped), 6),
        "unchanged_tick_folders_walked": skipped[0][1],
        "full_walk_tick_s": round(statistics.median(s for s, _ in walked), 6),
        "full_walk_tick_folders_walked": walked[0][1],
        "cursor_bytes": len(cursor.encode()),
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    n = f"{args.drops} drops x {args.files} files"
    print_table(
        [
            (f"first tick ({n}, all requested)", f"{results['first_tick_s']:.4g} s"),
            ("unchanged tick (median)", f"{results['unchanged_tick_s']:.4g} s"),
            ("  folders walked", str(results["unchanged_tick_folders_walked"])),
            (
                "unchanged tick, every folder walked (re-walk)",
                f"{results['full_walk_tick_s']:.4g} s",
            ),
            ("cursor size", f"{results['cursor_bytes'] / 1024:.1f} KB"),
        ]
    )
    write_json(results, args.out)
    return results


if __name__ == "__main__":
    main()
