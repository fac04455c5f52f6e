"""The drop page and contact sheet on a drop of a few hundred images: queue first, every image
shown (or the documented cap and sample), thumbnails reused, an unreadable file survived."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.quality.outcome import CheckOutcome, record_outcomes
from core.review.gallery import build_gallery
from core.review.queue import compute_queue, write_queue
from core.warehouse import Warehouse
from tests.core.review.planted import DROP, plant

EXTRA = 293  # + the 7 samples = 300 images


@pytest.fixture(scope="module")
def big_drop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Warehouse, Path]:
    """Built once for the module: ingesting 300 files is the slow part."""
    base = tmp_path_factory.mktemp("gallery")
    drop_root = base / "drops"
    warehouse = Warehouse(base / "warehouse.duckdb", lock_timeout_s=60)
    folder = drop_root / DROP / "generated"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(EXTRA):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.jpg", quality=70)
    plant(warehouse, drop_root)
    write_queue(warehouse, compute_queue(warehouse, DROP))
    record_outcomes(
        warehouse,
        [CheckOutcome(check_name="nothing_lost", passed=True, severity="ERROR", summary="ok")],
        run_id="r1",
        asset="images",
        partition=DROP,
    )
    return warehouse, drop_root


def figures(page: str) -> list[str]:
    return re.findall(r'<figure class="([^"]+)"', page)


def test_the_page_shows_every_image_with_the_queue_first(big_drop, tmp_path):
    warehouse, drop_root = big_drop
    reports = tmp_path / "reports"
    report = build_gallery(warehouse, drop_root, DROP, reports)
    assert (report.images_in_drop, report.images_shown, report.queue_shown) == (300, 300, 6)
    assert report.thumbs_made == 300 and report.thumb_failures == 0
    page = report.page.read_text()
    assert report.page == reports / DROP / "index.html"
    assert figures(page) == ["card queued"] * 6 + ["card"] * 294
    assert "Showing all 300 images" in page
    assert page.index("samples/coffee.jpg") < page.index("samples/camera.jpg")  # rank 1 first
    assert "extraction_failed" in page and "scenery=indoors" in page
    assert "nothing_lost" in page  # the drop's check outcomes
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (report.page.parent / src).is_file()
    with Image.open(report.sheet) as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == (6 * 128, 26 + 4 * (128 + 30))  # 24 tiles: 6 columns, 4 rows
        rgb = sheet.convert("RGB")
        assert rgb.getpixel((2, 28)) == pytest.approx((220, 30, 30), abs=40)  # #1's red frame
    assert report.sheet_png == report.sheet.read_bytes()

    again = build_gallery(warehouse, drop_root, DROP, reports)
    assert (again.thumbs_made, again.thumbs_reused) == (0, 300)


def test_a_big_drop_is_capped_to_the_queue_and_a_stable_sample(big_drop, tmp_path):
    warehouse, drop_root = big_drop
    first = build_gallery(warehouse, drop_root, DROP, tmp_path / "a", max_images=20)
    second = build_gallery(warehouse, drop_root, DROP, tmp_path / "b", max_images=20)
    assert (first.images_shown, first.queue_shown) == (20, 6)
    page = first.page.read_text()
    assert figures(page) == ["card queued"] * 6 + ["card"] * 14
    assert "20 of 300 images: all 6 in the review queue and a fixed sample of the rest" in page
    assert page == second.page.read_text()  # the same sample every time


def test_an_unreadable_file_gets_a_placeholder_not_a_failed_page(big_drop, tmp_path):
    warehouse, drop_root = big_drop
    damaged = drop_root / DROP / "generated" / "img_000.jpg"
    original = damaged.read_bytes()
    damaged.write_bytes(b"not a jpeg any more")
    try:
        report = build_gallery(warehouse, drop_root, DROP, tmp_path / "reports")
    finally:
        damaged.write_bytes(original)
    assert report.thumb_failures == 1 and report.images_shown == 300
    assert 'class="missing"' in report.page.read_text()
