"""The warehouse: a DuckDB file or a DuckLake lake behind one interface (see connection.py)."""

from core.warehouse.connection import (
    CommitConflict,
    FileWarehouse,
    LockTimeout,
    Warehouse,
    WarehouseHeld,
    WarehouseNotFound,
    open_warehouse,
)
from core.warehouse.schema import SCHEMA_VERSION
from core.warehouse.waits import wait_seconds

__all__ = [
    "SCHEMA_VERSION",
    "CommitConflict",
    "FileWarehouse",
    "LockTimeout",
    "Warehouse",
    "WarehouseHeld",
    "WarehouseNotFound",
    "open_warehouse",
    "wait_seconds",
]
