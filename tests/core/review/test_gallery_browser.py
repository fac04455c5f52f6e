"""The drop page in a real browser: headless Chromium (the system's, through Playwright) opens
`data/reports/<drop>/index.html` from disk, every image on it loads, and the review queue is the
first section of images.

The page's thumbnails are `loading="lazy"`, so the test scrolls each into view as a reader would.
A screenshot lands in the test's temp dir, and is copied to $IMAGE_PIPELINE_UI_SHOTS when set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.review.gallery import build_gallery
from core.review.queue import compute_queue, write_queue
from core.warehouse import Warehouse
from tests.core.review.planted import DROP, plant

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')"
)


def find_chromium() -> str | None:
    """$IMAGE_PIPELINE_CHROMIUM, else a chromium on PATH (never a Playwright download)."""
    configured = os.environ.get("IMAGE_PIPELINE_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium found (apt-get install chromium, or set IMAGE_PIPELINE_CHROMIUM)",
)
EXTRA = 60  # + the 7 samples


def test_every_image_of_the_drop_page_loads_in_chromium_queue_first(tmp_path: Path) -> None:
    drop_root = tmp_path / "drops"
    folder = drop_root / DROP / "generated"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(EXTRA):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.jpg", quality=70)
    warehouse = Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=60)
    plant(warehouse, drop_root)
    write_queue(warehouse, compute_queue(warehouse, DROP))
    report = build_gallery(warehouse, drop_root, DROP, tmp_path / "reports")
    assert report.images_shown == EXTRA + 7 and report.queue_shown > 0

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.page.resolve().as_uri())
            images = page.locator("img")
            assert images.count() == report.images_shown
            for i in range(images.count()):  # lazy images load once scrolled into view
                images.nth(i).scroll_into_view_if_needed()
            page.wait_for_function(
                "Array.from(document.images).every(img => img.complete)", timeout=30_000
            )
            widths = page.evaluate(
                "Array.from(document.images).map(img => [img.getAttribute('src'), img.naturalWidth])"
            )
            broken = [src for src, width in widths if width <= 0]
            assert not broken, f"images that did not load: {broken[:5]}"
            # The sections of images, in page order: the review queue first.
            sections = page.evaluate(
                """Array.from(document.querySelectorAll('h2'))
                .filter(h => h.nextElementSibling && h.nextElementSibling.querySelector('img'))
                .map(h => h.textContent)"""
            )
            assert sections == ["Review queue", "Other images"]
            cards = page.evaluate(
                "Array.from(document.querySelectorAll('figure')).map(f => f.className)"
            )
            assert cards[: report.queue_shown] == ["card queued"] * report.queue_shown
            assert "card queued" not in cards[report.queue_shown :]
            ranks = page.locator("figure.queued .rank").all_text_contents()
            assert ranks == [f"#{r}" for r in range(1, report.queue_shown + 1)]
            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "drop_page.png"
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
    target = os.environ.get("IMAGE_PIPELINE_UI_SHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "drop_page.png")
