"""Migrations land from parallel branches in any order: gaps and late lower numbers are fine."""

from __future__ import annotations

import duckdb
import pytest

from core.warehouse import schema
from core.warehouse.schema import migrate


def _versions(conn: duckdb.DuckDBPyConnection) -> list[int]:
    return [
        row[0]
        for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    ]


def test_quality_tables_exist_after_migrating(tmp_path):
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    migrate(conn)
    tables = {
        row[0]
        for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    assert {"quality_results", "evaluations"} <= tables
    conn.close()


def test_a_lower_number_arriving_after_a_higher_one_still_runs(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    first, *_ = schema.MIGRATIONS
    later = (4, "four", "CREATE TABLE four (x INTEGER)")
    monkeypatch.setattr(schema, "MIGRATIONS", [first, later])  # a branch with 1 and 4
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    assert migrate(conn) == {1, 4}
    merged = [first, (2, "two", "CREATE TABLE two (x INTEGER)"), later]
    monkeypatch.setattr(schema, "MIGRATIONS", merged)  # 2 merged later from another branch
    assert migrate(conn) == {1, 2, 4}
    assert _versions(conn) == [1, 2, 4]
    conn.execute("SELECT * FROM two").fetchall()
    conn.close()


def _one_row_everywhere(conn: duckdb.DuckDBPyConnection) -> None:
    """A row in every table, each NOT NULL column given a value of its type: migrations that
    alter tables are only tested for real on tables that hold rows."""
    value = {"VARCHAR": "'x'", "BOOLEAN": "true", "JSON": "'{}'", "BLOB": "'x'::BLOB"}
    tables = conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE NOT internal"
        " AND table_name <> 'schema_migrations'"
    ).fetchall()
    for (table,) in tables:
        columns = conn.execute(
            "SELECT data_type, is_nullable FROM information_schema.columns"
            " WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        values = []
        for data_type, nullable in columns:
            if nullable == "YES":
                values.append("NULL")
            elif data_type.endswith("[]") or data_type.startswith("MAP"):
                values.append(f"[]::{data_type}" if data_type.endswith("[]") else "MAP {}")
            elif data_type.startswith("TIMESTAMP"):
                values.append("now()")
            else:
                values.append(value.get(data_type, f"1::{data_type}"))
        conn.execute(f'INSERT INTO "{table}" VALUES ({", ".join(values)})')


@pytest.mark.parametrize(
    "number", [n for n, _, ddl in schema.MIGRATIONS if "ALTER TABLE" in ddl.upper()]
)
def test_each_altering_migration_upgrades_a_warehouse_that_holds_rows(tmp_path, number):
    """duckdb 1.5.5 fails some ALTER sequences only when the table holds rows (see `STEP`)."""
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    migrate(conn, only=frozenset(n for n, _, _ in schema.MIGRATIONS if n < number))
    _one_row_everywhere(conn)
    assert number in migrate(conn)
    conn.close()
