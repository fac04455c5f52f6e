"""Confusion matrices as PNG (matplotlib, Agg) and markdown, and as Dagster-ready markdown.

The Dagster UI renders `MetadataValue.md` with GitHub-flavoured markdown, including an image
whose source is a `data:image/png;base64,...` URL (the pattern of Dagster's quickstart_etl
example), so a small plot travels inside the event log; larger files go to disk and are linked
with `MetadataValue.path`.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; safe in Dagster's worker processes
import matplotlib.pyplot as plt

from core.quality.metrics import ConfusionMatrix

MAX_INLINE_PNG_BYTES = 200_000  # above this, write a file instead of inlining


def confusion_png(
    matrix: ConfusionMatrix,
    *,
    title: str = "",
    true_axis: str = "labelled",
    predicted_axis: str = "predicted",
    dpi: int = 80,
) -> bytes:
    """A small annotated heat map: rows are truths, columns predictions."""
    size = max(2.5, 0.55 * len(matrix.labels) + 1.5)
    figure, axes = plt.subplots(figsize=(size + 0.8, size), dpi=dpi)
    try:
        axes.imshow(matrix.matrix or [[0]], cmap="Blues")
        ticks = range(len(matrix.labels))
        axes.set_xticks(ticks, matrix.labels, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(ticks, matrix.labels, fontsize=8)
        axes.set_xlabel(predicted_axis)
        axes.set_ylabel(true_axis)
        if title:
            axes.set_title(title, fontsize=9)
        peak = max((max(row) for row in matrix.matrix), default=0)
        for i, row in enumerate(matrix.matrix):
            for j, count in enumerate(row):
                colour = "white" if peak and count > peak / 2 else "black"
                axes.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def confusion_markdown(
    matrix: ConfusionMatrix, *, true_axis: str = "labelled", predicted_axis: str = "predicted"
) -> str:
    """A markdown table: one row per true label, one column per predicted label."""
    corner = f"{true_axis} \\ {predicted_axis}"
    lines = [
        "| " + " | ".join([corner, *matrix.labels]) + " |",
        "|" + "---|" + "---:|" * len(matrix.labels),
    ]
    for label, row in zip(matrix.labels, matrix.matrix, strict=True):
        lines.append("| " + " | ".join([f"**{label}**", *(str(c) for c in row)]) + " |")
    return "\n".join(lines)


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def confusion_metadata_markdown(
    matrix: ConfusionMatrix,
    *,
    title: str,
    out_dir: Path | None = None,
    file_stem: str = "confusion",
    **axes: str,
) -> tuple[str, Path | None]:
    """Markdown with the plot (inline, or written to `out_dir` when large) and the table.

    Returns (markdown, file written or None); the caller wraps it in `dg.MetadataValue.md` and,
    when a file was written, may add `dg.MetadataValue.path(file)` too.
    """
    png = confusion_png(matrix, title=title, **axes)
    written: Path | None = None
    if out_dir is not None and len(png) > MAX_INLINE_PNG_BYTES:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = out_dir / f"{file_stem}.png"
        written.write_bytes(png)
        image = f"plot: `{written}`"
    else:
        image = f"![{title}]({png_data_url(png)})"
    return f"**{title}**\n\n{image}\n\n{confusion_markdown(matrix, **axes)}", written


INLINE_MARKDOWN_CHARS = 1000  # Dagster 1.13 renders a markdown value inline below this length
THUMBNAIL_CELL_PX = 20


def confusion_thumbnail_png(matrix: ConfusionMatrix, *, cell: int = THUMBNAIL_CELL_PX) -> bytes:
    """A heat map without text, a few hundred bytes: small enough that Dagster shows it inline
    (its UI puts markdown of 1000 characters or more behind a "[Show Markdown]" button).
    Rows are truths, columns predictions; the darker, the more images; the diagonal is framed
    so right answers stand out."""
    from PIL import Image, ImageDraw

    n = max(1, len(matrix.labels))
    peak = max((max(row) for row in matrix.matrix), default=0) or 1
    image = Image.new("P", (n * cell + 1, n * cell + 1), 0)
    # palette: 0 grid/background white, 1 diagonal frame, 2..17 eight-bit blues light to dark
    palette = [255, 255, 255, 200, 60, 40]
    for step in range(16):
        t = step / 15
        palette += [int(247 - t * 239), int(251 - t * 203), int(255 - t * 148)]
    image.putpalette(palette)
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(matrix.matrix):
        for j, count in enumerate(row):
            shade = 2 + round(15 * count / peak)
            box = (j * cell + 1, i * cell + 1, (j + 1) * cell - 1, (i + 1) * cell - 1)
            draw.rectangle(box, fill=shade, outline=1 if i == j else shade)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, bits=5)
    return buffer.getvalue()


def confusion_inline_markdown(
    matrix: ConfusionMatrix,
    *,
    caption: str,
    true_axis: str = "labelled",
    predicted_axis: str = "predicted",
) -> str:
    """The thumbnail, a caption, and the count table when it still fits inline (else the
    table goes and the caption points to `evaluations.details`)."""
    image = f"![confusion: rows {true_axis}, columns {predicted_axis}]"
    image += f"({png_data_url(confusion_thumbnail_png(matrix))})"
    with_table = (
        f"{image}\n\n{caption}\n\n"
        f"{confusion_markdown(matrix, true_axis=true_axis, predicted_axis=predicted_axis)}"
    )
    if len(with_table) < INLINE_MARKDOWN_CHARS:
        return with_table
    return f"{image}\n\n{caption} (rows: {true_axis}, columns: {predicted_axis})"
