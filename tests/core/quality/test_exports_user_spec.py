"""Exports under a user's labeling spec: every task table (a multi-choice set stays a list) and
one LLaVA file per task of the spec."""

from __future__ import annotations

import json

import polars as pl

from core.quality.exports import export_all
from core.warehouse import Warehouse
from tests.fixtures import user_spec
from tests.fixtures.user_spec import SPEC


def test_every_task_of_a_user_spec_is_exported(warehouse: Warehouse, tmp_path):
    warehouse.ensure_schema()
    ids = user_spec.plant(warehouse)
    summary = export_all(warehouse, tmp_path, spec=SPEC)
    assert set(summary.instructions) == {"product", "verdict"}
    product = pl.read_parquet(tmp_path / "task_product.parquet")
    twin = product.filter(pl.col("image_id") == ids["twin_b"]).row(0, named=True)
    assert twin["attributes"] == ["red", "worn"] and twin["boxed"] is True
    defects = pl.read_parquet(tmp_path / "task_product__defects.parquet")
    assert set(defects["defect"]) == {"scratch"} and defects.height == 4
    records = json.loads((tmp_path / "llava_product.json").read_text())
    assert len(records) == 5  # the `failed` image has no valid answer
    answers = [json.loads(r["conversations"][1]["value"]) for r in records]
    assert ["red", "worn"] in [a["attributes"] for a in answers]
