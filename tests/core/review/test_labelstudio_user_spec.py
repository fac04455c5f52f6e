"""Label Studio under a user's labeling spec: the config has the control of every field kind,
the VLM's answers are prefilled, and a review of every kind comes back into `final_labels`.

The spec is selected the way a user does it: IMAGE_PIPELINE_LABELS names the file.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import pytest

from core.review.labelstudio import ReviewImportError, labeling_config
from core.review.queue import compute_queue, write_queue
from core.review.store import import_reviews, write_export
from core.warehouse import Warehouse
from tests.fixtures import user_spec
from tests.fixtures.user_spec import DROP, SPEC_PATH, TASKS


@pytest.fixture
def queued(warehouse: Warehouse, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("IMAGE_PIPELINE_LABELS", str(SPEC_PATH))
    warehouse.ensure_schema()
    ids = user_spec.plant(warehouse)
    write_queue(warehouse, compute_queue(warehouse, DROP))
    return ids


def test_the_config_has_the_control_of_every_field_kind():
    config = ET.fromstring(labeling_config(list(TASKS.values())))
    choices = {c.get("name"): c for c in config.iter("Choices")}
    assert choices["product__category"].get("choice") == "single"
    assert [c.get("value") for c in choices["product__category"]] == ["shoe", "bag", "cannot_tell"]
    assert [c.get("value") for c in choices["product__size"]] == ["small", "medium", "large"]
    assert choices["product__attributes"].get("choice") == "multiple"
    assert [c.get("value") for c in choices["product__attributes"]] == ["leather", "red", "worn"]
    assert [c.get("value") for c in choices["product__boxed"]] == ["yes", "no"]
    assert [c.get("value") for c in choices["product__defects__3__defect"]] == [
        "scratch",
        "stain",
        "tear",
    ]
    numbers = {
        n.get("name"): (n.get("min"), n.get("max"), n.get("step")) for n in config.iter("Number")
    }
    assert numbers["product__item_count"] == ("0", "20", None)
    assert numbers["product__fill"] == ("0", "1", "any")
    assert numbers["product__defects__count"] == ("0", "4", None)
    assert numbers["product__defects__0__severity"] == ("1", "3", None)
    texts = {t.get("name"): t.get("maxSubmissions") for t in config.iter("TextArea")}
    assert texts == {"product__caption": "1"}


def review(task: dict, changes: dict[str, dict], at: str) -> list[dict]:
    """Label Studio's JSON export after a reviewer took the prediction with `changes` (values)."""
    result = copy.deepcopy(task["predictions"][0]["result"])
    for item in result:
        if item["from_name"] in changes:
            item["value"] = changes[item["from_name"]]
    annotation = {
        "id": 41,
        "completed_by": {"id": 7, "email": "r@example.com"},
        "result": result,
        "was_cancelled": False,
        "created_at": at,
        "updated_at": at,
    }
    return [{"id": 1, "data": task["data"], "annotations": [annotation]}]


def test_a_review_of_every_field_kind_comes_back_into_final_labels(warehouse, queued, tmp_path):
    tasks_file, _, _ = write_export(warehouse, DROP, tmp_path / "products.json")
    exported = json.loads(tasks_file.read_text())
    twin = next(t for t in exported if t["data"]["image_id"] == queued["twin_b"])
    prefilled = {i["from_name"]: i["value"] for i in twin["predictions"][0]["result"]}
    assert prefilled["product__attributes"] == {"choices": ["red", "worn"]}
    assert prefilled["product__boxed"] == {"choices": ["yes"]}
    assert prefilled["product__fill"] == {"number": 0.5}
    changes = {
        "product__attributes": {"choices": ["worn", "leather"]},
        "product__boxed": {"choices": ["no"]},
        "product__item_count": {"number": 3},
        "product__fill": {"number": 0.25},
        "product__caption": {"text": ["a worn bag"]},
        "product__defects__0__defect": {"choices": ["tear"]},
        "verdict__grade": {"choices": ["damaged"]},
    }
    path = tmp_path / "export.json"
    path.write_text(json.dumps(review(twin, changes, "2026-02-01T10:00:00Z")))
    import_reviews(warehouse, path)
    rows = dict(
        warehouse.rows(
            "SELECT task || '.' || field, value || ' / ' || coalesce(model_value, '-')"
            " FROM final_labels WHERE image_id = ? AND provenance = 'human'",
            [queued["twin_b"]],
        )
    )
    assert rows["product.attributes"] == "leather|worn / red|worn"
    assert rows["product.boxed"] == "false / true"
    assert rows["product.item_count"] == "3 / 1"
    assert rows["product.fill"] == "0.25 / 0.5"
    assert rows["product.caption"] == "a worn bag / a brown shoe"
    assert rows["product.defects[0].defect"] == "tear / scratch"
    assert rows["verdict.grade"] == "damaged / used"


@pytest.mark.parametrize(
    ("control", "value", "problem"),
    [
        ("product__attributes", {"choices": ["red", "red"]}, "repeats a value"),
        ("product__attributes", {"choices": []}, "0 values, expected 1 to 3"),
        ("product__attributes", {"choices": ["gold"]}, "are not among"),
        ("product__item_count", {"number": 2.5}, "not a whole number"),
        ("product__fill", {"number": 2}, "outside"),
        ("product__boxed", {"choices": ["maybe"]}, "not one of"),
    ],
)
def test_a_value_the_spec_forbids_rejects_the_file(
    warehouse, queued, tmp_path, control, value, problem
):
    tasks_file, _, _ = write_export(warehouse, DROP, tmp_path / "products.json")
    exported = json.loads(tasks_file.read_text())
    task = next(t for t in exported if t["data"]["image_id"] == queued["twin_b"])
    path = tmp_path / "export.json"
    path.write_text(json.dumps(review(task, {control: value}, "2026-02-01T10:00:00Z")))
    with pytest.raises(ReviewImportError, match=problem):
        import_reviews(warehouse, path)
    assert warehouse.rows("SELECT count(*) FROM human_labels")[0][0] == 0
