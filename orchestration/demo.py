"""`make demo`: run the whole chain on the bundled sample images, then print a summary from SQL.

The sample photographs are copied into the drop root as the drop `samples` (mtimes kept, so a
second demo finds nothing new), the drop's partition is added to the persistent Dagster instance
in DAGSTER_HOME, and the pipeline job runs in this process. `make ui` shows the same runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from core.report import summary
from orchestration.definitions import build_definitions
from orchestration.jobs import PIPELINE_JOB_NAME
from orchestration.partitions import image_drops
from orchestration.settings import REPO_ROOT, Settings

SAMPLES = REPO_ROOT / "data" / "samples"
DEMO_DROP = "samples"


def stage_samples(drop_root: Path) -> Path:
    target = drop_root / DEMO_DROP
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(SAMPLES.iterdir()):
        if source.name.startswith(".") or not source.is_file() or source.suffix == ".md":
            continue
        destination = target / source.name
        if not destination.exists() or destination.stat().st_size != source.stat().st_size:
            shutil.copy2(source, destination)
    return target


def run_demo(
    settings: Settings, instance: dg.DagsterInstance, resources: dict[str, Any] | None = None
) -> dg.ExecuteInProcessResult:
    """Stage the samples as drop `samples` and run the whole chain on it in this process;
    `resources` replace the environment's (make sglang-demo's launched server)."""
    folder = stage_samples(settings.drop_root)
    print(f"demo drop: {folder}")
    print(f"warehouse: {settings.warehouse_path}")
    if not instance.has_dynamic_partition(image_drops.name, DEMO_DROP):
        instance.add_dynamic_partitions(image_drops.name, [DEMO_DROP])
    job = build_definitions(settings, resources=resources).resolve_job_def(PIPELINE_JOB_NAME)
    return job.execute_in_process(
        partition_key=DEMO_DROP,
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        raise_on_error=False,
    )


def main() -> int:
    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    result = run_demo(settings, dg.DagsterInstance.get())
    print(summary(settings.warehouse()))
    if not result.success:
        print(f"\nrun {result.run_id} failed: see `make ui` for its logs", file=sys.stderr)
        return 1
    print(f"\nrun {result.run_id} succeeded; `make ui` shows it, and README.md has SQL to try.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
