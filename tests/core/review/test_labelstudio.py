"""Label Studio files: the export's tasks and config, importing good, re-imported, edited,
foreign and truncated exports, and `final_labels` before and after a review.

The export files here follow Label Studio's JSON export as its 1.23 server writes it (the shape
`test_labelstudio_server.py` gets from a real server): tasks with `data`, `annotations` (each
with `id`, `completed_by`, `result`, `was_cancelled`, `created_at`, `updated_at`) and more keys
we ignore.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from core.review.labelstudio import PIPELINE_MARK, ReviewImportError, controls, labeling_config
from core.review.queue import compute_queue, write_queue
from core.review.store import export_tasks, human_labelled_set, import_reviews, write_export
from core.tasks.registry import TASKS
from core.warehouse import Warehouse
from tests.core.review.planted import DROP, VLM, plant


@pytest.fixture
def queued(warehouse: Warehouse, drop_root: Path) -> dict[str, str]:
    ids = plant(warehouse, drop_root)
    write_queue(warehouse, compute_queue(warehouse, DROP))
    return ids


def annotate(task: dict, changes: dict[str, object], *, user: int = 7, at: str) -> dict:
    """What Label Studio exports after a reviewer accepted the prediction with `changes`."""
    result = copy.deepcopy(task["predictions"][0]["result"])
    for item in result:
        if item["from_name"] in changes:
            value = changes[item["from_name"]]
            key = {"choices": "choices", "number": "number", "textarea": "text"}[item["type"]]
            item["value"] = {key: value if key == "number" else [value]}
    return {
        "id": 100 + len(task.get("annotations", [])),
        "data": task["data"],
        "annotations": [
            {
                "id": 41,
                "completed_by": user,
                "result": result,
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": at,
                "updated_at": at,
                "lead_time": 4.5,
                "task": 1,
                "project": 1,
            }
        ],
        "predictions": [1],
        "meta": {},
    }


def test_the_config_has_a_control_per_field_with_the_enum_choices_and_per_person_slots():
    config = ET.fromstring(labeling_config(list(TASKS.values())))
    choices = {c.get("name"): [x.get("value") for x in c] for c in config.iter("Choices")}
    assert choices["scenery_people__scenery"] == [
        "blue_sky",
        "cloudy",
        "golden_hour",
        "indoors",
        "night_time",
    ]
    assert choices["age_gender__gender"] == ["female", "male"]
    assert choices["basketball_action__action"] == ["shooting", "dribbling", "passing"]
    for i in range(8):  # maxItems of people
        assert choices[f"scenery_people__people__{i}__age_group"][0] == "18-20"
    numbers = {n.get("name"): (n.get("min"), n.get("max")) for n in config.iter("Number")}
    assert numbers == {"scenery_people__people__count": ("0", "8")}
    texts = [t.get("name") for t in config.iter("TextArea")]
    assert texts == [f"scenery_people__people__{i}__shirt_color" for i in range(8)]
    names = [c.name for task in TASKS.values() for c in controls(task)]
    assert len(names) == len(set(names))
    assert all(c.get("toName") == "image" for c in config.iter("Choices"))


def test_exported_tasks_carry_the_image_the_reasons_and_the_vlm_answer_as_prediction(
    warehouse, queued, tmp_path
):
    tasks = export_tasks(warehouse, DROP)
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3, 4, 5, 6]
    first = tasks[0]
    assert first["data"]["image_id"] == queued["coffee.jpg"]
    assert first["data"]["image"] == "/data/local-files/?d=samples/coffee.jpg"
    assert first["data"]["pipeline"] == PIPELINE_MARK
    assert "extraction_failed" in first["data"]["reasons"]
    (prediction,) = first["predictions"]
    assert prediction["model_version"] == VLM
    by_name = {r["from_name"]: r for r in prediction["result"]}
    # coffee's age_gender was truncated: only scenery_people is prefilled
    assert set(by_name) == {
        "scenery_people__scenery",
        "scenery_people__people__count",
        "scenery_people__people__0__age_group",
        "scenery_people__people__0__shirt_color",
    }
    assert by_name["scenery_people__scenery"]["value"] == {"choices": ["indoors"]}
    assert by_name["scenery_people__people__count"]["value"] == {"number": 1}
    assert by_name["scenery_people__people__0__shirt_color"]["value"] == {"text": ["blue"]}
    camera = next(t for t in tasks if t["data"]["image_id"] == queued["camera.jpg"])
    names = {r["from_name"] for r in camera["predictions"][0]["result"]}
    assert {"age_gender__age_group", "age_gender__gender"} <= names
    out, config, count = write_export(warehouse, DROP, tmp_path / "reviews" / "samples.json")
    assert count == 6 and json.loads(out.read_text()) == tasks
    assert config.name == "samples.label_config.xml" and ET.fromstring(config.read_text())


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_an_import_changes_final_labels_and_a_reimport_changes_nothing(warehouse, queued, tmp_path):
    tasks = export_tasks(warehouse, DROP)
    camera = next(t for t in tasks if t["data"]["image_id"] == queued["camera.jpg"])
    before = warehouse.rows(
        "SELECT field, value, provenance FROM final_labels WHERE image_id = ?"
        " AND task = 'scenery_people' ORDER BY field",
        [queued["camera.jpg"]],
    )
    assert before == [
        ("people.count", "1", "model"),
        ("people[0].age_group", "31-40", "model"),
        ("people[0].shirt_color", "blue", "model"),
        ("scenery", "cloudy", "model"),
    ]
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            [
                annotate(
                    camera,
                    {"scenery_people__scenery": "indoors", "scenery_people__people__count": 0},
                    at="2026-12-01T10:00:00.123456Z",
                )
            ]
        )
    )
    counts = import_reviews(warehouse, export)
    assert counts["images"] == 1
    after = warehouse.rows(
        "SELECT field, value, provenance, model_value, reviewer FROM final_labels"
        " WHERE image_id = ? AND task = 'scenery_people' ORDER BY field",
        [queued["camera.jpg"]],
    )
    # the reviewer says nobody is there: the model's person disappears, scenery is corrected
    assert after == [
        ("people.count", "0", "human", "1", "user 7"),
        ("scenery", "indoors", "human", "cloudy", "user 7"),
    ]
    human = warehouse.rows(
        "SELECT task, field, value, reviewer, reviewed_at::VARCHAR, source_file FROM human_labels"
        " ORDER BY task, field"
    )
    assert [(t, f, v) for t, f, v, *_ in human] == [
        ("age_gender", "age_group", "31-40"),
        ("age_gender", "gender", "male"),
        ("scenery_people", "people.count", "0"),
        ("scenery_people", "scenery", "indoors"),
    ]
    assert {r[3] for r in human} == {"user 7"} and {r[5] for r in human} == {str(export)}
    assert human[0][4].startswith("2026-12-01 10:00:00.123456")
    others = warehouse.rows(
        "SELECT DISTINCT provenance FROM final_labels WHERE image_id <> ?", [queued["camera.jpg"]]
    )
    assert others == [("model",)]

    snapshot = warehouse.rows("SELECT * EXCLUDE (imported_at) FROM human_labels ORDER BY ALL")
    import_reviews(warehouse, export)  # the same file again
    assert warehouse.rows("SELECT * EXCLUDE (imported_at) FROM human_labels ORDER BY ALL") == (
        snapshot
    )

    older = tmp_path / "older.json"
    older.write_text(
        json.dumps(
            [annotate(camera, {"scenery_people__scenery": "blue_sky"}, at="2026-11-30T09:00:00Z")]
        )
    )
    assert import_reviews(warehouse, older)["kept_newer"] == 4  # an older export loses
    value = warehouse.rows(
        "SELECT value FROM final_labels WHERE image_id = ? AND field = 'scenery'",
        [queued["camera.jpg"]],
    )
    assert value == [("indoors",)]

    labelled = human_labelled_set(warehouse)
    assert labelled is not None and labelled.source == "human_labels"
    assert labelled.labels("scenery") == {queued["camera.jpg"]: "indoors"}
    assert labelled.labels("gender") == {queued["camera.jpg"]: "male"}


def _count(warehouse: Warehouse) -> int:
    return warehouse.rows("SELECT count(*) FROM human_labels")[0][0]


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_truncated_foreign_and_invalid_files_are_rejected_whole(warehouse, queued, tmp_path):
    tasks = export_tasks(warehouse, DROP)
    good = [annotate(t, {}, at="2026-12-01T10:00:00Z") for t in tasks[:3]]
    text = json.dumps(good)
    cases = {
        "truncated": (text[: len(text) // 2], "not valid JSON"),
        "not a list": (json.dumps({"tasks": good}), "a list of tasks"),
        "foreign": (
            json.dumps([*good, {"id": 9, "data": {"image": "x.jpg"}, "annotations": []}]),
            "not exported by this pipeline",
        ),
        "json-min": (
            json.dumps([{**good[0]["data"], "scenery_people__scenery": "indoors"}]),
            "not a task object",
        ),
        "unknown control": (
            json.dumps(
                [
                    {
                        **good[0],
                        "annotations": [
                            {
                                **good[0]["annotations"][0],
                                "result": [
                                    {
                                        "from_name": "sentiment",
                                        "to_name": "text",
                                        "type": "choices",
                                        "value": {"choices": ["Positive"]},
                                    }
                                ],
                            }
                        ],
                    }
                ]
            ),
            "'sentiment' is not in this pipeline's labeling config",
        ),
        "value outside the enum": (
            json.dumps(
                [annotate(tasks[0], {"scenery_people__scenery": "sunny"}, at="2026-12-01T10:00Z")]
            ),
            "'sunny' is not one of",
        ),
        "no annotations yet": (
            json.dumps([{**good[0], "annotations": []}]),
            "no completed annotations",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(content)
        with pytest.raises(ReviewImportError, match=message):
            import_reviews(warehouse, path)
        assert _count(warehouse) == 0, name

    other = tmp_path / "other_pipeline.json"
    stranger = copy.deepcopy(good)
    stranger[1]["data"]["image_id"] = "f" * 64  # marked as ours, but not in this warehouse
    other.write_text(json.dumps(stranger))
    with pytest.raises(ReviewImportError, match="images not in this warehouse"):
        import_reviews(warehouse, other)
    assert _count(warehouse) == 0  # the two good tasks in that file were not written either

    path = tmp_path / "good.json"
    path.write_text(text)
    import_reviews(warehouse, path)
    assert _count(warehouse) > 0


def test_a_cancelled_annotation_imports_nothing(warehouse, queued, tmp_path):
    task = export_tasks(warehouse, DROP)[0]
    skipped = annotate(task, {}, at="2026-12-01T10:00:00Z")
    skipped["annotations"][0]["was_cancelled"] = True
    path = tmp_path / "skipped.json"
    path.write_text(json.dumps([skipped]))
    with pytest.raises(ReviewImportError, match="no completed annotations"):
        import_reviews(warehouse, path)


def test_the_cli_exports_and_imports_and_refuses_a_bad_file(warehouse, queued, tmp_path, capsys):
    from core.review.__main__ import main

    out = tmp_path / "reviews" / "samples.json"
    db = ["--db", warehouse.target]
    assert main([*db, "export", "--drop", DROP, "--out", str(out)]) == 0
    assert "6 tasks" in capsys.readouterr().out
    tasks = json.loads(out.read_text())
    export = tmp_path / "export.json"
    export.write_text(json.dumps([annotate(tasks[0], {}, at="2026-12-01T10:00:00Z")]))
    assert main([*db, "import", str(export)]) == 0
    assert "imported 4 labels of 1 images" in capsys.readouterr().out
    export.write_text(export.read_text()[:100])
    assert main([*db, "import", str(export)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([*db, "export", "--drop", "nope", "--out", str(out)]) == 2
    assert "no review queue rows" in capsys.readouterr().err
