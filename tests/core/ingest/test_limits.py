"""The run's limits are the ones that apply: the pixel limit above Pillow's own default, and an
aspect-ratio bound that keeps a thin image from blowing up in a model's resize."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from core.ingest.decode import DecodeLimits
from core.ingest.ingest import DropIngestor, IngestOptions
from core.ingest.scan import DropRef
from core.warehouse import Warehouse
from tests.fixtures.bad_inputs import bomb_png, jpeg_bytes


def _reasons(warehouse: Warehouse) -> dict[str, str]:
    return dict(warehouse.rows("SELECT path, reason FROM rejected_files"))


def _thin_png(width: int = 1, height: int = 30_000) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_pixel_limit_above_pillows_default_is_the_one_that_applies(
    drop_root: Path, tmp_path: Path
):
    """200 MP is over Pillow's own refusal (2 x 89.5 MP) but under a configured 300 MP."""
    folder = drop_root / "big"
    folder.mkdir()
    (folder / "200mp.png").write_bytes(bomb_png(20_000, 10_000))  # header only: data truncated
    roomy = Warehouse(tmp_path / "roomy.duckdb")
    options = IngestOptions(limits=DecodeLimits(max_pixels=300_000_000))
    DropIngestor(roomy, drop_root, options).ingest(DropRef.folder("big"))
    assert _reasons(roomy) == {"big/200mp.png": "truncated"}  # decoded, not refused as too large
    strict = Warehouse(tmp_path / "strict.duckdb")
    options = IngestOptions(limits=DecodeLimits(max_pixels=150_000_000))
    DropIngestor(strict, drop_root, options).ingest(DropRef.folder("big"))
    assert _reasons(strict) == {"big/200mp.png": "too_large"}
    (error,) = strict.rows("SELECT error FROM rejected_files")[0]
    assert "150000000 pixel limit" in error


def test_an_image_of_extreme_aspect_ratio_is_rejected_with_its_reason(
    drop_root: Path, warehouse: Warehouse
):
    folder = drop_root / "thin"
    folder.mkdir()
    (folder / "line.png").write_bytes(_thin_png())
    (folder / "panorama.jpg").write_bytes(jpeg_bytes(width=800, height=100))  # 8:1 stays
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("thin"))
    assert _reasons(warehouse) == {"thin/line.png": "extreme_aspect_ratio"}
    assert warehouse.rows("SELECT path FROM image_files") == [("thin/panorama.jpg",)]


_MEASURE = """
import json, resource, sys
import open_clip
from core.clip.decoding import load_tensors
data = open(sys.argv[1], "rb").read()
transform = open_clip.image_transform(224, is_train=False)  # ViT-B-32's preprocessing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tensors = load_tensors(data, {"global": transform}, 448)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_kb": after - before, "shape": list(tensors["global"].shape)}))
"""


def test_a_thin_image_costs_little_memory_in_clip_preprocessing(tmp_path: Path):
    """A 1x12,000 PNG (a few hundred bytes) through ViT-B-32's 224 px preprocessing: the
    shorter side's resize made a 224 x 2,688,000 canvas (2.4 GB) before the fix."""
    thin = tmp_path / "thin.png"
    thin.write_bytes(_thin_png(1, 12_000))
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(thin)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[3],
        check=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["shape"] == [3, 224, 224]
    assert measured["peak_growth_kb"] < 500 * 1024, measured
