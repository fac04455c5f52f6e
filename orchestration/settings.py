"""Deployment settings, read from environment variables once, when the code location loads.

Paths are not secrets, so they come from plain variables with local defaults. Secrets (API keys)
never live here: resources read them through `dagster.EnvVar` at launch time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.warehouse import Warehouse, open_warehouse
from core.warehouse.connection import is_lake_target

REPO_ROOT = Path(__file__).resolve().parent.parent
Environment = Literal["local", "prod"]
DEMO_LABELLED = REPO_ROOT / "data" / "labelled" / "samples.csv"


class MissingSetting(RuntimeError):
    """A production deployment must name its paths; it never falls back to the demo's."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    environment: Environment = "local"
    # A DuckDB file path, or `ducklake:postgres:<libpq conninfo without password>` for the lake
    # (IMAGE_PIPELINE_WAREHOUSE), with the lake's data path (IMAGE_PIPELINE_LAKE_DATA_PATH).
    warehouse_path: Path | str = REPO_ROOT / "data" / "warehouse.duckdb"
    lake_data_path: str | None = None
    drop_root: Path = REPO_ROOT / "data" / "drops"
    # Labels CSV or <label>/<image> folder the `evaluation` asset runs against; None: no
    # evaluation. Local default: the bundled sample labels; prod: only IMAGE_PIPELINE_LABELLED.
    labelled_path: Path | None = DEMO_LABELLED
    sensor_running_by_default: bool = True
    sensor_interval_s: int = Field(default=30, ge=1)
    quiet_period_s: float = Field(default=30.0, ge=0)
    # Quiet loose files wait at most this long for others still arriving, then leave as a drop.
    loose_max_wait_s: float = Field(default=300.0, ge=0)
    # A folder that looks unchanged (same folder mtimes) is still walked this often, which finds
    # a file rewritten in place under the same name.
    rewalk_s: float = Field(default=600.0, ge=0)
    # A drop whose last run failed (Dagster's retries exhausted) is re-requested this long after
    # the failure; 0: only when its files change.
    retry_failed_s: float = Field(default=3600.0, ge=0)
    # `make ui` serves the reports folder (drop pages) on 127.0.0.1 at this port; the
    # drop_page asset links its page there.
    reports_port: int = Field(default=3001, ge=1, le=65535)

    @property
    def is_lake(self) -> bool:
        return is_lake_target(self.warehouse_path)

    def warehouse(self, *, lock_timeout_s: float = 120.0) -> Warehouse:
        """The warehouse these settings name (file or lake)."""
        return open_warehouse(
            str(self.warehouse_path), data_path=self.lake_data_path, lock_timeout_s=lock_timeout_s
        )

    @property
    def reports_url(self) -> str:
        return f"http://127.0.0.1:{self.reports_port}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        environment = env.get("IMAGE_PIPELINE_ENV", "local")
        values: dict[str, object] = {"environment": environment}
        if environment == "prod":
            missing = [k for k in ("IMAGE_PIPELINE_WAREHOUSE", "IMAGE_DROP_ROOT") if not env.get(k)]
            if missing:
                raise MissingSetting(f"IMAGE_PIPELINE_ENV=prod needs {', '.join(missing)} set")
        if env.get("IMAGE_PIPELINE_WAREHOUSE"):
            target = env["IMAGE_PIPELINE_WAREHOUSE"]
            values["warehouse_path"] = (
                target if is_lake_target(target) else Path(target).expanduser()
            )
        if env.get("IMAGE_PIPELINE_LAKE_DATA_PATH"):
            values["lake_data_path"] = env["IMAGE_PIPELINE_LAKE_DATA_PATH"]
        if env.get("IMAGE_DROP_ROOT"):
            values["drop_root"] = Path(env["IMAGE_DROP_ROOT"]).expanduser()
        labelled = env.get("IMAGE_PIPELINE_LABELLED")
        if labelled is not None:
            values["labelled_path"] = (
                None if labelled.strip().lower() in {"", "none"} else Path(labelled).expanduser()
            )
        elif environment == "prod":
            values["labelled_path"] = None
        if env.get("IMAGE_DROP_SENSOR"):
            status = env["IMAGE_DROP_SENSOR"].lower()
            if status not in {"running", "stopped"}:
                raise ValueError(
                    f"IMAGE_DROP_SENSOR must be 'running' or 'stopped', not {status!r}"
                )
            values["sensor_running_by_default"] = status == "running"
        if env.get("IMAGE_PIPELINE_REPORTS_PORT"):
            values["reports_port"] = int(env["IMAGE_PIPELINE_REPORTS_PORT"])
        if env.get("IMAGE_DROP_INTERVAL_SECONDS"):
            values["sensor_interval_s"] = int(env["IMAGE_DROP_INTERVAL_SECONDS"])
        for variable, key in (
            ("IMAGE_DROP_QUIET_SECONDS", "quiet_period_s"),
            ("IMAGE_DROP_LOOSE_MAX_WAIT_SECONDS", "loose_max_wait_s"),
            ("IMAGE_DROP_REWALK_SECONDS", "rewalk_s"),
            ("IMAGE_DROP_RETRY_FAILED_SECONDS", "retry_failed_s"),
        ):
            if env.get(variable):
                values[key] = float(env[variable])
        return cls.model_validate(values)
