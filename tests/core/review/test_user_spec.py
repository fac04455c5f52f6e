"""The review queue under a user's labeling spec: every signal follows the spec's fields and
rules, and a warehouse written before the spec keeps its queue rows (schema migration 2113)."""

from __future__ import annotations

import duckdb
import pytest

from core.review.queue import compute_queue, write_queue
from core.warehouse import Warehouse
from core.warehouse.schema import MIGRATIONS, STEP, migrate
from tests.fixtures import user_spec
from tests.fixtures.user_spec import DROP, SPEC


def test_the_queue_follows_a_user_spec(warehouse: Warehouse):
    warehouse.ensure_schema()
    ids = user_spec.plant(warehouse)
    report = compute_queue(warehouse, DROP, spec=SPEC)
    rows = {row["image_id"]: row for row in report.frame.to_dicts()}
    name_of = {iid: name for name, iid in ids.items()}
    assert "clean" not in {name_of[i] for i in rows}
    assert rows[ids["disagree"]]["disagree_fields"] == ["category: clip=shoe vlm=bag"]
    assert rows[ids["no_defects"]]["reasons"] == ["consistency_violation"]
    assert rows[ids["no_defects"]]["consistency_violations"] == [
        "flaws: verdict answered, product.defects empty"
    ]
    assert rows[ids["failed"]]["failed_tasks"] == ["product: invalid"]
    assert rows[ids["twin_a"]]["conflict_fields"] == ["attributes: red vs red|worn"]
    assert rows[ids["twin_a"]]["near_duplicate_of"] == ids["twin_b"]
    assert write_queue(warehouse, report) == report.queued == 5
    # The same drop under a spec without rules: no consistency signal at all.
    bare = compute_queue(warehouse, DROP, spec=SPEC.model_copy(update={"consistency": ()}))
    assert ids["no_defects"] not in set(bare.frame["image_id"].to_list())
    assert bare.reason_counts["consistency_violation"] == 0


@pytest.mark.parametrize("crashed_after_steps", [0, 1, 2])
def test_a_queue_written_before_the_spec_is_migrated_with_its_rows(tmp_path, crashed_after_steps):
    """An existing warehouse (migrations up to 1451) keeps its queue rows: the built-in
    people_count_mismatch becomes a consistency violation, the column named after it goes.
    2113 runs in steps (duckdb 1.5 cannot commit them as one); a crash after any step and a
    rerun of the whole migration reach the same table."""
    path = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    for number, name, ddl in sorted(MIGRATIONS):
        if number < 2113:
            conn.execute(ddl)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [number, name]
            )
    conn.execute(
        "INSERT INTO review_queue VALUES ('d', 1, 'img1', 'a.jpg', 1.0,"
        " ['people_count_mismatch'], false, [], NULL, false, false, [], false, NULL, [], true, 0,"
        " NULL, 'vlm', now()),"
        " ('d', 2, 'img2', 'b.jpg', 1.0, ['clip_vlm_disagree'], true, ['f: clip=a vlm=b'], 0.5,"
        " false, false, [], false, NULL, [], false, 2, 'clip', 'vlm', now())"
    )
    steps = STEP.split(dict((n, ddl) for n, _, ddl in MIGRATIONS)[2113])
    for step in steps[:crashed_after_steps]:  # committed before the crash
        conn.execute(step)
    assert 2113 in migrate(conn)
    columns = {
        c
        for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'review_queue'"
        ).fetchall()
    }
    assert "people_count_mismatch" not in columns and "people_listed" not in columns
    rows = conn.execute(
        "SELECT image_id, reasons, consistency_violation, consistency_violations, disagree_fields"
        " FROM review_queue ORDER BY rank"
    ).fetchall()
    assert rows == [
        (
            "img1",
            ["consistency_violation"],
            True,
            ["people_count_mismatch"],
            [],
        ),
        ("img2", ["clip_vlm_disagree"], False, [], ["f: clip=a vlm=b"]),
    ]
    conn.close()
