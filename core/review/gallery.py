"""A picture of every drop: a contact sheet PNG and a static HTML page.

The page lives in `<reports>/<drop>/index.html` with its thumbnails in `<reports>/thumbs/`
(JPEG, named by image id, so an image shared by drops is scaled once and a rerun reuses every
thumbnail it already has). It lists the drop's latest check outcomes, its rejected files (path,
reason, message), the review queue (rank, reasons), then the rest of the drop by path, each
image with its labels per task (human values marked) and CLIP's top label per label set.
Thumbnails are made from bytes read through `core.files` that hash to the image id, as the
models read them: a file swapped for a FIFO or edited since ingestion gets no thumbnail.

Big drops stay fast: the page shows at most `max_images` images (default 1,000): the whole review
queue, then a fixed sample of the rest (the images with the smallest hash of their id, so the
sample is stable across reruns and does not depend on file names), and says how many it shows.
The contact sheet shows at most `sheet_images` (default 24) the same way. Thumbnails decode
JPEGs at a reduced DCT scale (`draft`), a few times faster than a full decode.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from core.copies import image_copies
from core.files import FileCopy, read_image_copy
from core.ingest.decode import load_rgb
from core.ingest.reasons import clean_error
from core.labels.loader import current_spec
from core.labels.spec import ChoiceField, LabelsSpec
from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGE_PATHS, table_exists

DEFAULT_MAX_IMAGES = 1000
DEFAULT_SHEET_IMAGES = 24
DEFAULT_MAX_REJECTED = 5000  # rejected files named on the page, by path
THUMB_PX = 160
SHEET_COLUMNS = 6
SHEET_THUMB_PX = 120
QUEUE_COLOUR = (220, 30, 30)


def sheet_label_set(spec: LabelsSpec | None = None) -> str:
    """The label set the contact sheet shows CLIP's top label of: the labeling spec's (default:
    the current one) first single-choice field with a label set; "" when it has none."""
    spec = current_spec() if spec is None else spec
    return next(
        (
            field.label_name
            for task in spec.tasks
            for field in task.fields
            if isinstance(field, ChoiceField) and field.has_label_set
        ),
        "",
    )


@dataclass
class Tile:
    image_id: str
    path: str
    rank: int | None = None  # review-queue rank
    reasons: list[str] = field(default_factory=list)
    labels: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # task -> rows
    zero_shot: list[tuple[str, str, float]] = field(default_factory=list)
    thumb: str | None = None  # relative to the page
    thumb_error: str | None = None

    def top_labels(self, label_set: str | None = None) -> list[str]:
        """Two short lines for the contact sheet: the VLM's scalars, and CLIP's top label in
        `label_set` (default: `sheet_label_set()`, the spec's first choice field with one)."""
        label_set = sheet_label_set() if label_set is None else label_set
        scalars = [
            value
            for rows in self.labels.values()
            for name, value, _ in rows
            if "[" not in name and "." not in name
        ]
        clip = next(
            (f"clip {label} {p:.2f}" for s, label, p in self.zero_shot if s == label_set), ""
        )
        return [" ".join(scalars[:3]) or "no VLM label", clip]


@dataclass
class GalleryReport:
    drop_id: str
    page: Path
    sheet: Path
    sheet_png: bytes
    images_in_drop: int
    images_shown: int
    queue_shown: int
    sheet_shown: int
    thumbs_made: int
    thumbs_reused: int
    thumb_failures: int


def select_tiles(warehouse: Warehouse, drop_id: str, max_images: int) -> tuple[list[Tile], int]:
    """The queue first (by rank), then a stable sample of the rest by path; and the drop size."""
    queue_sql = (
        "SELECT image_id, rank, reasons FROM review_queue WHERE drop_id = ?"
        if table_exists(warehouse, "review_queue")
        else "SELECT NULL::VARCHAR, NULL::INTEGER, NULL::VARCHAR[] WHERE ? IS NULL AND false"
    )
    rows = warehouse.rows(
        f"""
        WITH drop_images AS ({DROP_IMAGE_PATHS}),
        queue AS ({queue_sql.replace("?", "$drop")})
        SELECT d.image_id, d.path, q.rank, q.reasons, count(*) OVER () AS total
        FROM drop_images d LEFT JOIN queue q USING (image_id)
        ORDER BY q.rank IS NULL, q.rank, hash(d.image_id), d.image_id
        LIMIT $limit
        """,
        {"drop": drop_id, "limit": max_images},
    )
    total = int(rows[0][4]) if rows else 0
    tiles = [
        Tile(image_id, path, rank, list(reasons or [])) for image_id, path, rank, reasons, _ in rows
    ]
    queued = [t for t in tiles if t.rank is not None]
    rest = sorted((t for t in tiles if t.rank is None), key=lambda t: t.path)
    return queued + rest, total


def _attach_labels(warehouse: Warehouse, tiles: list[Tile]) -> None:
    by_id = {t.image_id: t for t in tiles}
    ids = list(by_id)
    if not ids:
        return
    if table_exists(warehouse, "final_labels") or _view_exists(warehouse, "final_labels"):
        rows = warehouse.rows(
            "SELECT image_id, task, field, value, provenance FROM final_labels"
            " WHERE list_contains(?, image_id) ORDER BY task, field",
            [ids],
        )
        grouped: dict[str, dict[str, list[tuple[str, str, str]]]] = defaultdict(dict)
        for image_id, task, name, value, provenance in rows:
            grouped[image_id].setdefault(task, []).append((name, value, provenance))
        for image_id, labels in grouped.items():
            by_id[image_id].labels = labels
    if table_exists(warehouse, "clip_zero_shot"):
        rows = warehouse.rows(
            "SELECT image_id, label_set, arg_max(top_label, created_at),"
            " arg_max(top_probability, created_at) FROM clip_zero_shot"
            " WHERE list_contains(?, image_id) GROUP BY 1, 2 ORDER BY 2",
            [ids],
        )
        for image_id, label_set, label, probability in rows:
            by_id[image_id].zero_shot.append((label_set, label, float(probability)))


def _view_exists(warehouse: Warehouse, name: str) -> bool:
    return bool(
        warehouse.rows("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name])[0][0]
    )


def check_outcomes(warehouse: Warehouse, drop_id: str) -> list[tuple]:
    """The latest outcome of every check on this drop: (asset, check, passed, severity, summary)."""
    if not table_exists(warehouse, "quality_results"):
        return []
    return warehouse.rows(
        "SELECT asset, check_name, arg_max(passed, evaluated_at), arg_max(severity, evaluated_at),"
        " arg_max(json_extract_string(details, '$.summary'), evaluated_at)"
        " FROM quality_results WHERE partition = ? GROUP BY 1, 2 ORDER BY 1, 2",
        [drop_id],
    )


def rejected_files(warehouse: Warehouse, drop_id: str, limit: int) -> tuple[list[tuple], int]:
    """The drop's rejected files present now, by path: (path, reason, clean message), and how
    many there are in all."""
    rows = warehouse.rows(
        "SELECT path, reason, error, count(*) OVER () FROM rejected_files"
        " WHERE drop_id = ? AND vanished_at IS NULL ORDER BY path LIMIT ?",
        [drop_id, limit],
    )
    total = int(rows[0][3]) if rows else 0
    return [(path, reason, clean_error(error)) for path, reason, error, _ in rows], total


def _make_thumb(
    drop_root: Path, tile: Tile, thumbs: Path, copies: list[FileCopy]
) -> tuple[str, bool]:
    """Write (or reuse) the tile's thumbnail; returns its file name and whether it was made.

    The bytes are read the way the models read them (`core.files`): beneath the root, never
    blocking on a FIFO, and only if they hash to the image id, since the thumbnail is cached
    under that id for every later page.
    """
    name = f"{tile.image_id}.jpg"
    target = thumbs / name
    if target.exists():
        return name, False
    _, data = read_image_copy(drop_root, tile.image_id, copies)
    image = load_rgb(data, min_side=THUMB_PX)
    image.thumbnail((THUMB_PX, THUMB_PX))
    partial = target.with_suffix(".part")
    image.save(partial, "JPEG", quality=80)
    partial.replace(target)  # a crash never leaves a half-written thumbnail under the real name
    return name, True


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def contact_sheet(tiles: list[Tile], thumbs: Path, drop_id: str, total: int) -> Image.Image:
    """A grid of thumbnails with two label lines each; queue images framed red with their rank."""
    label_set = sheet_label_set()
    cell_w, text_h, pad = SHEET_THUMB_PX + 8, 30, 4
    rows = max(1, -(-len(tiles) // SHEET_COLUMNS))
    header = 26
    sheet = Image.new("RGB", (SHEET_COLUMNS * cell_w, header + rows * (cell_w + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(11)
    queued = sum(t.rank is not None for t in tiles)
    draw.text(
        (pad, 5),
        f"drop {drop_id}: {len(tiles)} of {total} images, {queued} in the review queue (red)",
        fill="black",
        font=font,
    )
    for i, tile in enumerate(tiles):
        x = (i % SHEET_COLUMNS) * cell_w
        y = header + (i // SHEET_COLUMNS) * (cell_w + text_h)
        if tile.thumb and (thumbs / tile.thumb).exists():
            with Image.open(thumbs / tile.thumb) as thumb:
                small_thumb = ImageOps.contain(
                    thumb.convert("RGB"), (SHEET_THUMB_PX, SHEET_THUMB_PX)
                )
            sheet.paste(
                small_thumb,
                (
                    x + pad + (SHEET_THUMB_PX - small_thumb.width) // 2,
                    y + pad + (SHEET_THUMB_PX - small_thumb.height) // 2,
                ),
            )
        else:
            draw.rectangle(
                (x + pad, y + pad, x + pad + SHEET_THUMB_PX, y + pad + SHEET_THUMB_PX),
                fill=(200, 200, 200),
            )
            draw.text((x + pad + 8, y + pad + 50), "unreadable", fill="black", font=small)
        if tile.rank is not None:
            draw.rectangle(
                (x + 1, y + 1, x + cell_w - 2, y + cell_w - 2), outline=QUEUE_COLOUR, width=4
            )
            draw.rectangle((x + 4, y + 4, x + 44, y + 22), fill=QUEUE_COLOUR)
            draw.text((x + 8, y + 6), f"#{tile.rank}", fill="white", font=font)
        for line, text in enumerate(tile.top_labels(label_set)):
            draw.text((x + pad, y + cell_w + line * 14), text[:26], fill="black", font=small)
    return sheet


def _page(
    drop_id: str,
    tiles: list[Tile],
    total: int,
    outcomes: list[tuple],
    sheet_name: str,
    rejected: tuple[list[tuple], int] = ([], 0),
) -> str:
    esc = html.escape
    rejected_rows, rejected_total = rejected
    rejected_html = "".join(
        f"<tr><td>{esc(path)}</td><td>{esc(reason)}</td><td>{esc(message)}</td></tr>"
        for path, reason, message in rejected_rows
    )
    rejected_note = (
        f"<p>{rejected_total} files of this drop were rejected"
        + (
            f"; the first {len(rejected_rows)} by path are named here, every one is in the"
            " warehouse table <code>rejected_files</code>"
            if rejected_total > len(rejected_rows)
            else ""
        )
        + ".</p>"
        if rejected_total
        else "<p>none: every file of the drop is an image.</p>"
    )
    queued = [t for t in tiles if t.rank is not None]
    rows = []
    for asset, check, passed, severity, summary in outcomes:
        state = "passed" if passed else ("failed" if severity == "ERROR" else "warning")
        rows.append(
            f'<tr class="{state}"><td>{esc(asset)}</td><td>{esc(check)}</td>'
            f"<td>{state}</td><td>{esc(summary or '')}</td></tr>"
        )

    def card(tile: Tile) -> str:
        image = (
            f'<img src="{esc(tile.thumb)}" alt="{esc(tile.path)}" loading="lazy">'
            if tile.thumb
            else f'<div class="missing">{esc(tile.thumb_error or "no thumbnail")}</div>'
        )
        badge = f'<span class="rank">#{tile.rank}</span>' if tile.rank is not None else ""
        reasons = f'<p class="reasons">{esc(", ".join(tile.reasons))}</p>' if tile.reasons else ""
        labels = "".join(
            f"<dt>{esc(task)}</dt><dd>"
            + ", ".join(f'<span class="{esc(p)}">{esc(n)}={esc(v)}</span>' for n, v, p in values)
            + "</dd>"
            for task, values in sorted(tile.labels.items())
        )
        clip = ", ".join(f"{esc(s)}={esc(label)} ({p:.2f})" for s, label, p in tile.zero_shot)
        if clip:
            labels += f"<dt>clip zero-shot</dt><dd>{clip}</dd>"
        css = "card queued" if tile.rank is not None else "card"
        return (
            f'<figure class="{css}" id="img-{esc(tile.image_id[:12])}">{badge}{image}'
            f"<figcaption><b>{esc(tile.path)}</b>{reasons}<dl>{labels}</dl></figcaption></figure>"
        )

    shown = (
        f"all {total} images"
        if len(tiles) >= total
        else f"{len(tiles)} of {total} images: all {len(queued)} in the review queue and a fixed "
        "sample of the rest"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drop {esc(drop_id)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; font-size: 13px; text-align: left; }}
tr.failed td {{ background: #f8d0d0; }} tr.warning td {{ background: #fbefc4; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ width: 220px; margin: 0; border: 2px solid #ddd; padding: 6px; position: relative; }}
.card.queued {{ border-color: rgb{QUEUE_COLOUR}; }}
.card img, .missing {{ max-width: 160px; max-height: 160px; display: block; margin: auto; }}
.missing {{ width: 160px; height: 120px; background: #ccc; }}
.rank {{ position: absolute; left: 4px; top: 4px; background: rgb{QUEUE_COLOUR}; color: white;
  padding: 1px 5px; font-weight: bold; }}
figcaption {{ font-size: 12px; word-break: break-all; }}
.reasons {{ color: rgb{QUEUE_COLOUR}; margin: 2px 0; }}
dl {{ margin: 2px 0; }} dt {{ font-weight: bold; }} dd {{ margin: 0 0 2px 8px; }}
.human {{ background: #d5f5d5; }}
</style></head><body>
<h1>Drop {esc(drop_id)}</h1>
<p>Showing {shown}. Review queue: {len(queued)} images, framed red, first.
Labels in <span class="human">green</span> come from human review; the others are the model's.
Contact sheet: <a href="{esc(sheet_name)}">{esc(sheet_name)}</a>.</p>
<h2>Checks</h2>
<table><tr><th>asset</th><th>check</th><th>outcome</th><th>summary</th></tr>
{"".join(rows) or '<tr><td colspan="4">no check outcomes recorded for this drop</td></tr>'}
</table>
<h2>Rejected files</h2>
{rejected_note}
{
        "<table><tr><th>path</th><th>reason</th><th>message</th></tr>" + rejected_html + "</table>"
        if rejected_rows
        else ""
    }
<h2>Review queue</h2>
<div class="grid">{"".join(card(t) for t in queued) or "<p>empty</p>"}</div>
<h2>Other images</h2>
<div class="grid">{"".join(card(t) for t in tiles if t.rank is None) or "<p>none</p>"}</div>
</body></html>
"""


def build_gallery(
    warehouse: Warehouse,
    drop_root: Path,
    drop_id: str,
    reports: Path,
    *,
    max_images: int = DEFAULT_MAX_IMAGES,
    sheet_images: int = DEFAULT_SHEET_IMAGES,
    workers: int = 4,
    max_rejected: int = DEFAULT_MAX_REJECTED,
    log: Callable[[str], None] | None = None,
) -> GalleryReport:
    """Write the drop's page and contact sheet; returns where they are and what they show."""
    tiles, total = select_tiles(warehouse, drop_id, max_images)
    _attach_labels(warehouse, tiles)
    thumbs = reports / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    page_dir = reports / drop_id
    page_dir.mkdir(parents=True, exist_ok=True)
    made = reused = failed = 0
    copies = image_copies(warehouse, drop_id, [tile.image_id for tile in tiles])

    def one(tile: Tile) -> tuple[Tile, str | None, bool, str | None]:
        try:
            name, new = _make_thumb(drop_root, tile, thumbs, copies[tile.image_id])
            return tile, name, new, None
        except Exception as error:  # one unreadable file must not lose the page
            return tile, None, False, f"{type(error).__name__}: {error}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for tile, name, new, error in pool.map(one, tiles):
            tile.thumb_error = error
            if name is None:
                failed += 1
                continue
            tile.thumb = name
            made += new
            reused += not new
    if log and failed:
        log(f"{failed} thumbnails could not be made (their files are unreadable now)")
    for tile in tiles:
        if tile.thumb:
            tile.thumb = f"../thumbs/{tile.thumb}"
    sheet_tiles = tiles[:sheet_images]
    for tile in sheet_tiles:
        tile.thumb = tile.thumb and tile.thumb.removeprefix("../thumbs/")
    sheet = contact_sheet(sheet_tiles, thumbs, drop_id, total)
    for tile in sheet_tiles:
        tile.thumb = tile.thumb and f"../thumbs/{tile.thumb}"
    buffer = io.BytesIO()
    # 256 colours keep the inline PNG small; fast octree takes ~50 ms where median cut takes ~2 s
    sheet.quantize(256, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG")
    sheet_path = page_dir / "contact_sheet.png"
    sheet_path.write_bytes(buffer.getvalue())
    page = page_dir / "index.html"
    partial = page.with_suffix(".part")
    partial.write_text(
        _page(
            drop_id,
            tiles,
            total,
            check_outcomes(warehouse, drop_id),
            sheet_path.name,
            rejected_files(warehouse, drop_id, max_rejected),
        ),
        encoding="utf-8",
    )
    partial.replace(page)
    return GalleryReport(
        drop_id=drop_id,
        page=page,
        sheet=sheet_path,
        sheet_png=buffer.getvalue(),
        images_in_drop=total,
        images_shown=len(tiles),
        queue_shown=sum(t.rank is not None for t in tiles),
        sheet_shown=len(sheet_tiles),
        thumbs_made=made,
        thumbs_reused=reused,
        thumb_failures=failed,
    )


def sheet_markdown(png: bytes) -> str:
    """The contact sheet inline, the way Dagster's UI shows images (markdown with a data URI)."""
    return f"![contact sheet](data:image/png;base64,{base64.b64encode(png).decode()})"
