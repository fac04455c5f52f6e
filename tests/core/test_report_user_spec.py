"""The demo summary and the contact sheet's CLIP line follow the labeling spec."""

from __future__ import annotations

from core.labels.loader import default_spec
from core.report import summary
from core.review.gallery import Tile, sheet_label_set
from core.warehouse import Warehouse
from tests.fixtures import user_spec
from tests.fixtures.user_spec import SPEC


def test_the_summary_shows_a_table_per_task_of_a_user_spec(warehouse: Warehouse):
    warehouse.ensure_schema()
    user_spec.plant(warehouse)
    text = summary(warehouse, spec=SPEC)
    print(text)
    assert "task_product__defects" in text and "task_verdict" in text  # rows per table
    product = text.split("product (first 10)")[1].split("verdict (first 10)")[0]
    for column in ("category", "attributes", "boxed", "item_count", "fill", "caption", "defects"):
        assert column in product
    assert '["red", "worn"]' in product  # the multi-choice set of twin_b
    assert "mint" in text.split("verdict (first 10)")[1]


def test_the_contact_sheet_shows_the_first_choice_field_with_a_label_set():
    assert sheet_label_set(SPEC) == "category"
    assert sheet_label_set(default_spec()) == default_spec().tasks[0].fields[0].name
    bare = SPEC.model_copy(
        update={"tasks": (SPEC.task("verdict"),), "consistency": ()}
    )  # a choice field without CLIP phrases only
    assert sheet_label_set(bare) == ""
    tile = Tile(image_id="a", path="a.jpg", zero_shot=[("category", "bag", 0.8)])
    assert tile.top_labels("category") == ["no VLM label", "clip bag 0.80"]
    assert tile.top_labels("") == ["no VLM label", ""]
