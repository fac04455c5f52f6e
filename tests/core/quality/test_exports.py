"""Exports round-trip: the files hold exactly the warehouse's rows, plus image paths."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from core.quality.exports import export_instruction_data, export_task_tables, task_tables
from core.tasks.registry import get_task
from core.vlm.prompt import SYSTEM_PROMPT
from tests.fixtures.contracts import add_drop, add_extraction, plant_sql

SCENERY_PEOPLE = get_task("scenery_people")
SceneryPeople = SCENERY_PEOPLE.model

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PEOPLE = [
    {"age_group": "21-30", "shirt_color": "red"},
    {"age_group": "51-60", "shirt_color": "navy blue"},
]


@pytest.fixture
def extracted(warehouse):
    ids = add_drop(warehouse, "d1", ["a", "b", "c"], at=T0)
    add_extraction(
        warehouse, ids[0], "scenery_people", "m", "ok", {"scenery": "indoors", "people": PEOPLE}
    )
    add_extraction(
        warehouse, ids[1], "scenery_people", "m", "ok", {"scenery": "cloudy", "people": []}
    )
    add_extraction(warehouse, ids[2], "scenery_people", "m", "truncated")
    add_extraction(
        warehouse, ids[0], "age_gender", "m", "ok", {"age_group": "41-50", "gender": "female"}
    )
    return ids


def test_parquet_and_jsonl_hold_the_same_rows_as_the_tables(warehouse, extracted, tmp_path):
    files = export_task_tables(warehouse, tmp_path / "out")
    assert {(f.table, f.format) for f in files} == {
        (t, fmt) for t in task_tables(warehouse) for fmt in ("parquet", "jsonl")
    }
    for table in task_tables(warehouse):
        stored = warehouse.query(f'SELECT * FROM "{table}"')
        exported = pl.read_parquet(tmp_path / "out" / f"{table}.parquet")
        assert exported["image_path"].null_count() == 0
        keys = [c for c in ("image_id", "idx") if c in stored.columns]
        assert_frame_equal(exported.drop("image_path").sort(keys), stored.sort(keys))
        lines = (tmp_path / "out" / f"{table}.jsonl").read_text().splitlines()
        assert len(lines) == stored.height
    people = pl.read_parquet(tmp_path / "out" / "task_scenery_people__people.parquet")
    assert people.select("image_path", "idx", "shirt_color").rows() == [
        ("d1/a.jpg", 0, "red"),
        ("d1/a.jpg", 1, "navy blue"),
    ]


def test_validated_extractions_become_llava_conversations(warehouse, extracted, tmp_path):
    plant_sql(  # an ok row of an older task version that today's schema refuses
        warehouse,
        "INSERT INTO vlm_extractions (image_id, task, task_fingerprint, model_id, status,"
        " parsed_json, attempts, drop_id, created_at)"
        " VALUES (?, 'scenery_people', 'old', 'm', 'ok', '{\"scenery\": \"space\"}', 1, 'd1', now())",
        [extracted[2]],
    )
    result = export_instruction_data(
        warehouse,
        tmp_path / "llava.json",
        task="scenery_people",
        instruction="Describe the scenery and the people.",
        model=SceneryPeople,
        image_root="/data/drops",
    )
    assert (result.records, result.skipped_invalid) == (2, 1)
    records = json.loads((tmp_path / "llava.json").read_text())
    first = records[0]
    assert first["image"] == "/data/drops/d1/a.jpg" and first["id"] == extracted[0]
    human, gpt = first["conversations"]
    # The inference layout: the instruction, then the image; the system prompt beside it.
    assert human == {"from": "human", "value": "<image>\nDescribe the scenery and the people."}
    assert first["system"] == SYSTEM_PROMPT
    assert gpt["from"] == "gpt"
    assert SceneryPeople.model_validate_json(gpt["value"]).people[1].shirt_color == "navy blue"


def test_the_export_command_writes_every_table_and_one_llava_file_per_task(
    warehouse, extracted, tmp_path, capsys
):
    from core.quality.exports import main

    assert (
        main(
            [
                "--warehouse",
                str(warehouse.path),
                "--out",
                str(tmp_path / "x"),
                "--image-root",
                "/drops",
            ]
        )
        == 0
    )
    written = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert "task_age_gender.parquet" in written and "task_scenery_people__people.jsonl" in written
    assert {"llava_scenery_people.json", "llava_age_gender.json"} <= set(written)
    records = json.loads((tmp_path / "x" / "llava_scenery_people.json").read_text())
    assert [r["image"] for r in records] == ["/drops/d1/a.jpg", "/drops/d1/b.jpg"]
    assert records[0]["conversations"][0]["value"] == "<image>\n" + SCENERY_PEOPLE.instruction
    for table in task_tables(warehouse):  # JSONL round-trips too
        stored = warehouse.query(f'SELECT * FROM "{table}"')
        exported = pl.read_ndjson(tmp_path / "x" / f"{table}.jsonl", schema_overrides=stored.schema)
        keys = [c for c in ("image_id", "idx") if c in stored.columns]
        assert_frame_equal(exported.drop("image_path").sort(keys), stored.sort(keys))
    assert "conversations" in capsys.readouterr().out


def test_export_all_leaves_stand_in_rows_out_unless_asked_and_names_every_model(
    warehouse, extracted, tmp_path
):
    from core.quality.exports import export_all
    from core.vlm.standin import STANDIN_MODEL_ID

    standin_only = add_drop(warehouse, "d2", ["s"], at=T0)[0]
    add_extraction(
        warehouse,
        standin_only,
        "scenery_people",
        STANDIN_MODEL_ID,
        "ok",
        {"scenery": "night_time", "people": []},
    )
    summary = export_all(warehouse, tmp_path / "real")
    records = json.loads((tmp_path / "real" / "llava_scenery_people.json").read_text())
    assert [r["id"] for r in records] == extracted[:2]
    assert {r["model_id"] for r in records} == {"m"}
    table = pl.read_parquet(tmp_path / "real" / "task_scenery_people.parquet")
    assert STANDIN_MODEL_ID not in table["model_id"].to_list()
    assert summary.standin_rows_left_out > 0
    export_all(warehouse, tmp_path / "all", include_standin=True)
    records = json.loads((tmp_path / "all" / "llava_scenery_people.json").read_text())
    assert {r["model_id"] for r in records} == {"m", STANDIN_MODEL_ID}
    table = pl.read_parquet(tmp_path / "all" / "task_scenery_people.parquet")
    assert STANDIN_MODEL_ID in table["model_id"].to_list()


def test_the_exported_human_turn_is_the_inference_prompt_of_every_task(
    warehouse, extracted, tmp_path
):
    """Fine-tuning data must be prompted as inference is: system prompt, then the user turn's
    parts in the layout's order (image, instruction text), so the rendering is derived from `chat_messages`."""
    from core.quality.exports import export_all
    from core.tasks.registry import TASKS
    from core.vlm.prompt import chat_messages

    summary = export_all(warehouse, tmp_path / "x")
    assert summary.instructions["scenery_people"].records == 2
    for name in summary.instructions:
        task = TASKS[name]
        records = json.loads((tmp_path / "x" / f"llava_{name}.json").read_text())
        system, user = chat_messages(task)
        rendered = "\n".join(
            part["text"] if part["type"] == "text" else "<image>" for part in user["content"]
        )
        for record in records:
            assert record["system"] == system["content"]
            assert record["conversations"][0] == {"from": "human", "value": rendered}


def test_the_llava_export_streams_in_bounded_memory(warehouse, tmp_path):
    """Thousands of `ok` rows: the file is written as rows are read, so Python's peak memory is
    a batch's worth, a small part of the file it writes (materialising holds all of it)."""
    import tracemalloc

    from core.vlm import store as vlm_store
    from core.vlm.types import ExtractionResult

    count = 6000
    names = [f"img{i:05d}" for i in range(count)]
    warehouse.ensure_schema()
    plant_sql(  # the drop's images, in bulk (add_drop inserts one at a time)
        warehouse,
        "INSERT INTO images SELECT sha256(n), 100, 'JPEG', 'RGB', 64, 48, NULL, 1, NULL, [],"
        " 'd1', 'd1/' || n || '.jpg', ? FROM unnest(?) AS t(n)",
        [T0, names],
    )
    ids = [r[0] for r in warehouse.rows("SELECT image_id FROM images ORDER BY first_path")]
    answer = {"scenery": "indoors", "people": PEOPLE}
    # The writer makes the first image's rows (and the task's tables); SQL copies them to the
    # other images in bulk (the writer's per-row inserts would spend a minute on 6,000).
    vlm_store.write_batch(
        warehouse,
        SCENERY_PEOPLE,
        "m",
        "d1",
        [ExtractionResult(image_id=ids[0], status="ok", parsed=answer)],
    )
    tables = ["vlm_extractions", SCENERY_PEOPLE.tables.table]
    tables += [child.table for child in SCENERY_PEOPLE.tables.children]
    for table in tables:
        plant_sql(
            warehouse,
            f'INSERT INTO "{table}" SELECT t.* REPLACE (i.image_id AS image_id)'
            f' FROM "{table}" t, images i WHERE i.image_id <> ?',
            [ids[0]],
        )
    out = tmp_path / "llava.json"
    tracemalloc.start()
    try:
        result = export_instruction_data(
            warehouse,
            out,
            task="scenery_people",
            instruction=SCENERY_PEOPLE.instruction,
            model=SceneryPeople,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    records = json.loads(out.read_text())
    assert result.records == len(records) == count
    assert [r["id"] for r in records] == ids
    assert records[-1]["image"] == f"d1/{names[-1]}.jpg"
    size = out.stat().st_size
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
