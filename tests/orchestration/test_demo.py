"""`make demo`, end to end: the whole chain on the bundled samples, into temp paths."""

import re

import dagster as dg
import pytest

from core.quality.summary import latest_check_outcomes, latest_evaluation
from core.report import summary
from core.warehouse import Warehouse
from orchestration.demo import run_demo
from orchestration.settings import REPO_ROOT, Settings
from tests.conftest import CHAIN_ASSETS

DOCS_WITH_SQL = ("README.md", "docs/quality.md")


def readme_sql() -> list[str]:
    """Every SQL statement in the ```sql blocks of the README and the docs it links."""
    text = "\n".join((REPO_ROOT / name).read_text() for name in DOCS_WITH_SQL)
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    statements = [part.strip() for block in blocks for part in block.split(";")]
    return [s for s in statements if any(not line.startswith("--") for line in s.splitlines())]


def _tables(warehouse: Warehouse) -> dict[str, list[tuple]]:
    """Every row of every pipeline table, sorted, so two snapshots compare value for value."""
    names = [
        name
        for (name,) in warehouse.rows(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        )
    ]
    return {
        name: sorted(warehouse.rows(f'SELECT * FROM "{name}"'), key=repr)
        for name in names
        # quality_results is keyed by run: each demo adds its own rows; label_agreement is
        # rewritten per drop (its run_id changes), evaluations only where inputs changed
        if name not in {"schema_migrations", "quality_results", "label_agreement"}
    }


@pytest.mark.both_backends
def test_the_demo_runs_the_chain_and_a_second_demo_changes_no_row(
    settings: Settings, instance: dg.DagsterInstance
):
    first = run_demo(settings, instance)
    assert first.success
    warehouse = settings.warehouse()
    before = _tables(warehouse)
    assert len(before["images"]) == len(before["image_files"]) == 7
    report = summary(warehouse)
    for section in ("Rows per table", "Quality checks", "Evaluation", "meaningless"):
        assert section in report
    evaluated = latest_evaluation(warehouse)
    assert set(evaluated["field"]) == {"scenery", "age_group", "gender", "imagenet_class"}
    assert evaluated.filter(field="imagenet_class")["top5"].is_not_null().all()
    assert evaluated["standin"].all()
    outcomes = latest_check_outcomes(warehouse)
    assets = set(outcomes["asset"])
    assert assets == set(CHAIN_ASSETS)
    assert outcomes.filter(outcomes["severity"] == "ERROR")["passed"].all()

    second = run_demo(settings, instance)
    assert second.success
    assert _tables(warehouse) == before
    # nothing new: the second evaluation evaluates nothing, every result is the first run's
    assert latest_evaluation(warehouse).equals(evaluated)
    assert warehouse.rows("SELECT count(DISTINCT run_id) FROM evaluations") == [(1,)]


def test_every_query_in_the_readme_runs_on_the_demo_warehouse(
    settings: Settings, instance: dg.DagsterInstance
):
    assert run_demo(settings, instance).success
    warehouse = Warehouse(settings.warehouse_path)
    statements = readme_sql()
    assert len(statements) >= 3
    for sql in statements:
        warehouse.query(sql)  # raises on a table, column or syntax the README got wrong
