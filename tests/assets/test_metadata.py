"""Tables in the UI's metadata are readable: short numbers, lists joined, typed columns."""

from __future__ import annotations

import polars as pl

from assets.metadata import preview_table, records_table


def test_floats_in_tables_show_four_significant_digits():
    frame = pl.DataFrame({"path": ["a.jpg"], "score": [3.979587123], "tiny": [0.000123456]})
    (record,) = preview_table(frame).value.records
    assert record.data == {"path": "a.jpg", "score": 3.98, "tiny": 0.0001235}
    (record,) = records_table(
        [{"rate": 0.142857142857, "n": 7}], {"rate": "r", "n": "n"}
    ).value.records
    assert record.data == {"rate": 0.1429, "n": 7}


def test_lists_are_joined_into_one_cell():
    frame = pl.DataFrame({"reasons": [["low_margin", "clip_vlm_disagree"]]})
    (record,) = preview_table(frame).value.records
    assert record.data["reasons"] == "low_margin, clip_vlm_disagree"


def test_a_column_empty_in_every_row_is_left_out_of_a_preview():
    """Issue 20, item 4: the panel is narrow; `notes` (always []) cost a column of width."""
    frame = pl.DataFrame(
        {"path": ["a.jpg", "b.jpg"], "captured_at": [None, "2012"], "notes": [[], []]},
        schema={"path": pl.String, "captured_at": pl.String, "notes": pl.List(pl.String)},
    )
    table = preview_table(frame).value
    assert [column.name for column in table.schema.columns] == ["path", "captured_at"]
    assert [record.data for record in table.records] == [
        {"path": "a.jpg", "captured_at": None},
        {"path": "b.jpg", "captured_at": "2012"},
    ]
