"""Confusion matrices render to a real PNG and a markdown table that shows every cell."""

from __future__ import annotations

import base64
import io

from PIL import Image

from core.quality.metrics import confusion_matrix
from core.quality.plots import (
    INLINE_MARKDOWN_CHARS,
    THUMBNAIL_CELL_PX,
    confusion_inline_markdown,
    confusion_markdown,
    confusion_metadata_markdown,
    confusion_png,
    confusion_thumbnail_png,
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


def test_thumbnail_shades_cells_by_count_and_fits_inline_in_dagster():
    image = Image.open(io.BytesIO(confusion_thumbnail_png(MATRIX))).convert("RGB")
    assert image.size == (3 * THUMBNAIL_CELL_PX + 1,) * 2
    centre = THUMBNAIL_CELL_PX // 2
    empty = image.getpixel((2 * THUMBNAIL_CELL_PX + centre, centre))  # a -> c: 0 images
    one = image.getpixel((THUMBNAIL_CELL_PX + centre, centre))  # a -> b: 1 image (the peak)
    assert sum(one) < sum(empty)  # darker where more images
    markdown = confusion_inline_markdown(MATRIX, caption="`model`, n=3")
    assert len(markdown) < INLINE_MARKDOWN_CHARS  # Dagster renders it without a click
    src = markdown.split("](", 1)[1].split(")", 1)[0]
    assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).format == "PNG"
    assert "| **a** | 1 | 1 | 0 |" in markdown


def test_inline_markdown_drops_the_table_rather_than_hide_the_plot():
    big = confusion_matrix([str(i) for i in range(12)], [str(i) for i in range(12)])
    markdown = confusion_inline_markdown(big, caption="`m`, n=12")
    assert len(markdown) < INLINE_MARKDOWN_CHARS and "|" not in markdown
    assert "data:image/png;base64," in markdown
