"""`python -m core.warehouse`: the shell way to query while the pipeline runs."""

from __future__ import annotations

import pytest

from core.warehouse.__main__ import main


def test_prints_a_parameterized_query(ingested_samples, capsys):
    code = main(
        [
            "--db",
            ingested_samples.target,
            "SELECT count(*) AS wide FROM images WHERE width > ?",
            "600",
        ]
    )
    assert code == 0
    assert "wide" in capsys.readouterr().out


def test_a_missing_warehouse_is_a_clear_error(tmp_path, capsys):
    assert main(["--db", str(tmp_path / "none.duckdb"), "SELECT 1"]) == 2
    assert "no warehouse" in capsys.readouterr().err


@pytest.mark.both_backends
def test_the_sql_prompt_answers_each_statement_and_never_writes(
    warehouse, monkeypatch: pytest.MonkeyPatch, capsys
):
    """`make sql`: statements end with `;`, an error does not end the prompt, and the
    warehouse is opened read-only (the file per statement, the lake attached READ_ONLY)."""
    warehouse.ensure_schema()
    lines = iter(
        [
            "SELECT count(*) AS nothing_yet",
            "FROM drops;",
            "INSERT INTO write_guards VALUES ('sneaky', 0);",
            "SELECT name FROM write_guards;",
        ]
    )

    def answer(_prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", answer)
    argv = ["--db", warehouse.target]
    if warehouse.data_path:
        argv += ["--data-path", warehouse.data_path]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing_yet" in out
    assert "error:" in out and "read-only" in out.lower().split("error:", 1)[1]
    assert warehouse.rows("SELECT name FROM write_guards") == [("images",)]
