"""The warehouse as a Dagster resource: a DuckDB file, or DuckLake on PostgreSQL."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from core.warehouse import Warehouse, open_warehouse


class WarehouseResource(dg.ConfigurableResource):
    """Where runs, sensors and people's queries find the tables.

    `path` is a DuckDB file path (connections are opened per transaction or query behind a
    cross-process lock) or `ducklake:postgres:<libpq conninfo>` with `data_path` (DuckLake: a
    PostgreSQL catalog and Parquet files; readers never block writers). The conninfo holds no
    password: libpq reads PGPASSWORD, PGPASSFILE or a service file from the environment.
    """

    path: str = Field(
        description="DuckDB file path (created with its schema on first write), or"
        " ducklake:postgres:<conninfo without password> for the lake."
    )
    data_path: str | None = Field(
        default=None,
        description="The lake's data path (a folder or a DuckLake DATA_PATH URL); lake only.",
    )
    lock_timeout_s: float = Field(default=120.0, description="Longest wait for another writer.")

    def get(self, *, lock_timeout_s: float | None = None) -> Warehouse:
        return open_warehouse(
            self.path,
            data_path=self.data_path,
            lock_timeout_s=self.lock_timeout_s if lock_timeout_s is None else lock_timeout_s,
        )
