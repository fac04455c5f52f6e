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
