"""Confusion matrices render to a real PNG and a markdown table that shows every cell."""

from __future__ import annotations

import base64
import io

from PIL import Image

from core.quality.metrics import confusion_matrix
from core.quality.plots import (
    confusion_markdown,
    confusion_metadata_markdown,
    confusion_png,
)

MATRIX = confusion_matrix(["a", "a", "b"], ["a", "b", "b"], labels=["a", "b", "c"])


def test_png_is_a_decodable_image():
    image = Image.open(io.BytesIO(confusion_png(MATRIX, title="t")))
    assert image.format == "PNG" and image.width > 100


def test_markdown_table_has_a_row_per_truth_and_a_column_per_prediction():
    table = confusion_markdown(MATRIX)
    lines = table.splitlines()
    assert lines[0] == "| labelled \\ predicted | a | b | c |"
    assert lines[2] == "| **a** | 1 | 1 | 0 |"
    assert lines[3] == "| **b** | 0 | 1 | 0 |"
    assert len(lines) == 5


def test_metadata_markdown_inlines_the_png_as_a_data_url():
    markdown, written = confusion_metadata_markdown(MATRIX, title="scenery: clip")
    assert written is None
    encoded = markdown.split("data:image/png;base64,")[1].split(")")[0]
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "PNG"
    assert "| **a** | 1 | 1 | 0 |" in markdown


def test_a_large_plot_is_written_to_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr("core.quality.plots.MAX_INLINE_PNG_BYTES", 10)
    markdown, written = confusion_metadata_markdown(MATRIX, title="big", out_dir=tmp_path)
    assert written is not None and written.read_bytes()[:4] == b"\x89PNG"
    assert "base64" not in markdown
