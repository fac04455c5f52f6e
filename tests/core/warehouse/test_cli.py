"""`python -m core.warehouse`: the shell way to query while the pipeline runs."""

from __future__ import annotations

from core.warehouse.__main__ import main


def test_prints_a_parameterized_query(ingested_samples, capsys):
    code = main(
        [
            "--db",
            str(ingested_samples.path),
            "SELECT count(*) AS wide FROM images WHERE width > ?",
            "600",
        ]
    )
    assert code == 0
    assert "wide" in capsys.readouterr().out


def test_a_missing_warehouse_is_a_clear_error(tmp_path, capsys):
    assert main(["--db", str(tmp_path / "none.duckdb"), "SELECT 1"]) == 2
    assert "no warehouse" in capsys.readouterr().err
