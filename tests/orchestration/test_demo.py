"""`make demo`, end to end: the whole chain on the bundled samples, into temp paths."""

import re

import dagster as dg

from core.report import summary
from core.warehouse import Warehouse
from orchestration.demo import run_demo
from orchestration.settings import REPO_ROOT, Settings


def readme_sql() -> list[str]:
    """Every SQL statement in the README's ```sql blocks."""
    blocks = re.findall(r"```sql\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    statements = [part.strip() for block in blocks for part in block.split(";")]
    return [s for s in statements if any(not line.startswith("--") for line in s.splitlines())]


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


def test_every_query_in_the_readme_runs_on_the_demo_warehouse(
    settings: Settings, instance: dg.DagsterInstance
):
    assert run_demo(settings, instance).success
    warehouse = Warehouse(settings.warehouse_path)
    statements = readme_sql()
    assert len(statements) >= 3
    for sql in statements:
        warehouse.query(sql)  # raises on a table, column or syntax the README got wrong
