"""The DuckDB warehouse as a Dagster resource."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from core.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """A DuckDB file shared by runs, sensors and people querying it.

    Connections are opened per transaction or query and closed at once, behind a cross-process
    lock, so concurrent runs and a user's SQL loop never trip over DuckDB's single-writer lock.
    """

    path: str = Field(
        description="Path of the DuckDB file; created with its schema on first write."
    )
    lock_timeout_s: float = Field(default=120.0, description="Longest wait for another writer.")

    def get(self) -> Warehouse:
        return Warehouse(self.path, lock_timeout_s=self.lock_timeout_s)
