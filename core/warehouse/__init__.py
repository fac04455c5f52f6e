"""The DuckDB warehouse: schema, cross-process locking and the connection helpers readers use."""

from core.warehouse.connection import LockTimeout, Warehouse, WarehouseNotFound
from core.warehouse.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "LockTimeout", "Warehouse", "WarehouseNotFound"]
