"""`make demo`, end to end: the whole chain on the bundled samples, into temp paths."""

import dagster as dg

from core.report import summary
from core.warehouse import Warehouse
from orchestration.demo import run_demo
from orchestration.settings import Settings


def _tables(warehouse: Warehouse) -> dict[str, list[tuple]]:
    """Every row of every pipeline table, sorted, so two snapshots compare value for value."""
    names = [name for (name,) in warehouse.rows("SELECT table_name FROM duckdb_tables()")]
    return {
        name: sorted(warehouse.rows(f'SELECT * FROM "{name}"'), key=repr)
        for name in names
        if name not in {"schema_migrations", "quality_results"}
    }


def test_the_demo_runs_the_chain_and_a_second_demo_changes_no_row(
    settings: Settings, instance: dg.DagsterInstance
):
    first = run_demo(settings, instance)
    assert first.success
    warehouse = Warehouse(settings.warehouse_path)
    before = _tables(warehouse)
    assert len(before["images"]) == len(before["image_files"]) == 7
    assert "Rows per table" in summary(warehouse)

    second = run_demo(settings, instance)
    assert second.success
    assert _tables(warehouse) == before
