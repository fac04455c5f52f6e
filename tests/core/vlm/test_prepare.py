"""Image preparation: read and decoded once per run for all tasks, payloads as good as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import core.vlm.prepare as prepare_module
import core.vlm.transformers_backend as transformers_module
from core.ingest.decode import load_rgb
from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.tasks.registry import TASKS
from core.vlm.prepare import jpeg_payload, passes_through
from core.vlm.run import extract_drop
from core.vlm.sglang_client import SGLangClient, SGLangClientConfig
from core.vlm.types import ImageInput
from doubles.sglang_server import FakeSGLangConfig, FakeSGLangServer, standin_backend
from tests.conftest import SAMPLES, copy_samples

ALL_TASKS = list(TASKS.values())


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Photo-like content (smooth gradients, soft shapes, mild grain), not noise; cheap to make."""
    rng = np.random.default_rng(seed)
    w, h = max(8, width // 16), max(8, height // 16)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = [
        120 + 90 * np.sin(x / (w / (3 + c)) + c) * np.cos(y / (h / (2 + c))) for c in range(3)
    ]
    small = Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))
    picture = small.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.2) * width
        fill = tuple(int(v) for v in rng.integers(0, 255, size=3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    picture = picture.filter(ImageFilter.GaussianBlur(1.5))
    grain = Image.effect_noise((width, height), 6).convert("RGB")
    return Image.blend(picture, grain, 0.04)


def jpeg_bytes(picture: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=save.pop("quality", 90), **save)
    return buffer.getvalue()


def old_payload(data: bytes, max_side: int = 1536) -> bytes:
    """What the client sent before this change: full-scale decode, bicubic thumbnail, q90."""
    picture = load_rgb(data, min_side=max_side)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side))
    return jpeg_bytes(picture)


def psnr(a: bytes, b: bytes) -> float:
    left = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.float64)
    right = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)
    assert left.shape == right.shape
    return float(10 * np.log10(255**2 / np.mean((left - right) ** 2)))


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return jpeg_bytes(photo(4000, 3000))


def test_a_large_photo_is_sent_at_the_old_size_and_looks_the_same(large_jpeg: bytes):
    new, old = jpeg_payload(large_jpeg), old_payload(large_jpeg)
    assert Image.open(io.BytesIO(new)).size == Image.open(io.BytesIO(old)).size == (1536, 1152)
    assert Image.open(io.BytesIO(new)).format == "JPEG"
    assert len(new) <= 1.2 * len(old)  # payload bound: no bigger than the old one, give or take
    assert psnr(new, old) > 40  # decoded at 1/2 scale + bilinear vs full decode + bicubic


def test_the_large_photo_is_decoded_at_half_scale_not_in_full(large_jpeg: bytes):
    decoded = load_rgb(large_jpeg, fit_within=1536)
    assert decoded.size == (2000, 1500)  # the smallest DCT scale still >= 1536x1152


@pytest.mark.parametrize("max_side", [512, 700, 1536])
def test_payloads_never_exceed_the_longest_side(large_jpeg: bytes, max_side: int):
    size = Image.open(io.BytesIO(jpeg_payload(large_jpeg, max_side=max_side))).size
    assert max(size) == max_side


def test_an_original_that_fits_is_sent_byte_for_byte():
    for path in sorted(SAMPLES.glob("*.jpg")):  # RGB and greyscale JPEGs, all under 1536 px
        data = path.read_bytes()
        assert jpeg_payload(data) == data, path.name


def test_originals_that_do_not_fit_are_re_encoded(tmp_path: Path):
    small = photo(640, 480)
    rotated = jpeg_bytes(small, exif=_exif_orientation(6))
    png = io.BytesIO()
    small.save(png, format="PNG")
    cmyk = jpeg_bytes(small.convert("CMYK"))
    big_file = jpeg_bytes(small, quality=100)
    for data, why in ((rotated, "EXIF-rotated"), (png.getvalue(), "PNG"), (cmyk, "CMYK")):
        assert not passes_through(data, 1536, 2_000_000), why
        out = jpeg_payload(data)
        assert out != data and Image.open(io.BytesIO(out)).mode == "RGB", why
    assert Image.open(io.BytesIO(jpeg_payload(rotated))).size == (480, 640)  # upright
    assert jpeg_payload(big_file, passthrough_max_bytes=len(big_file) - 1) != big_file
    assert jpeg_payload(big_file, passthrough_max_bytes=len(big_file)) == big_file


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


SAMPLE_NAMES = ["astronaut.jpg", "camera.jpg"]  # an RGB and a greyscale JPEG


def _drop(drop_root: Path, warehouse, large: bytes) -> tuple[Path, list[str]]:
    """Two sample photos, a 4000x3000 photo and an EXIF-rotated one, ingested as drop `mixed`."""
    folder = copy_samples(drop_root, "mixed", SAMPLE_NAMES)
    (folder / "large.jpg").write_bytes(large)
    (folder / "rotated.jpg").write_bytes(jpeg_bytes(photo(640, 480, 2), exif=_exif_orientation(6)))
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("mixed"))
    return folder, ["large.jpg", "rotated.jpg"]


class _Counter:
    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.mark.parametrize("task_count", [1, 3])
def test_sglang_run_reads_and_decodes_each_image_once_whatever_the_task_count(
    warehouse, drop_root, monkeypatch, large_jpeg: bytes, task_count: int
):
    folder, re_encoded = _drop(drop_root, warehouse, large_jpeg)
    reads = _Counter(prepare_module.read_image)
    decodes = _Counter(prepare_module.load_rgb)
    monkeypatch.setattr(prepare_module, "read_image", reads)
    monkeypatch.setattr(prepare_module, "load_rgb", decodes)
    tasks = ALL_TASKS[:task_count]
    with FakeSGLangServer(standin_backend(), FakeSGLangConfig()) as server:
        client = SGLangClient(SGLangClientConfig(base_url=server.url))
        reports = extract_drop(
            warehouse, client, "mixed", drop_root, tasks, batch_size=4, log=lambda _: None
        )
    images = len(list(folder.iterdir()))
    assert reads.calls == images  # once per run, not once per task
    assert decodes.calls == len(re_encoded)  # the others went through untouched
    assert [r.done for r in reports] == [images] * task_count
    rows = warehouse.rows("SELECT task, status, count(*) FROM vlm_extractions GROUP BY ALL")
    assert sorted(rows) == sorted((t.name, "ok", images) for t in tasks)


def test_transformers_run_decodes_each_image_once_for_all_tasks(
    warehouse, drop_root, monkeypatch, large_jpeg: bytes
):
    folder, _ = _drop(drop_root, warehouse, large_jpeg)
    decodes = _Counter(transformers_module.load_rgb)
    monkeypatch.setattr(transformers_module, "load_rgb", decodes)
    reports = extract_drop(
        warehouse, standin_backend(), "mixed", drop_root, ALL_TASKS, batch_size=4,
        log=lambda _: None,
    )  # fmt: skip
    images = len(list(folder.iterdir()))
    assert decodes.calls == images
    assert [r.done for r in reports] == [images] * len(ALL_TASKS)


def test_an_unreadable_image_ends_as_a_failure_row_for_every_task(
    warehouse, drop_root, large_jpeg: bytes
):
    folder, _ = _drop(drop_root, warehouse, large_jpeg)
    (folder / "large.jpg").write_bytes(b"not a jpeg any more")  # changed after ingestion
    (folder / "rotated.jpg").unlink()  # gone after ingestion
    with FakeSGLangServer(standin_backend(), FakeSGLangConfig()) as server:
        client = SGLangClient(SGLangClientConfig(base_url=server.url))
        extract_drop(
            warehouse, client, "mixed", drop_root, ALL_TASKS, batch_size=3, log=lambda _: None
        )
    rows = warehouse.rows(
        """
        SELECT f.path, e.task, e.status, e.error FROM vlm_extractions e
        JOIN image_files f USING (image_id) ORDER BY 1, 2
        """
    )
    images = len(SAMPLE_NAMES) + 2
    assert len(rows) == images * len(ALL_TASKS)  # every image has a row for every task
    failed = {(path, task): status for path, task, status, _ in rows if status != "ok"}
    assert {path for path, _ in failed} == {"mixed/large.jpg", "mixed/rotated.jpg"}
    assert len(failed) == 2 * len(ALL_TASKS)
    # The bytes are checked against the image id before any preparation (core.vlm.inputs).
    assert {s for (p, _), s in failed.items() if p == "mixed/large.jpg"} == {"changed_since_ingest"}
    assert {s for (p, _), s in failed.items() if p == "mixed/rotated.jpg"} == {"unavailable"}
    assert all(status == "ok" for path, task, status, _ in rows if (path, task) not in failed)


def test_prepare_keeps_input_order_and_isolates_failures(tmp_path: Path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(photo(64, 48)))
    images = [
        ImageInput(image_id="a", path=good),
        ImageInput(image_id="b", path=tmp_path / "missing.jpg"),
        ImageInput(image_id="c", path=good),
    ]
    prepared = SGLangClient(SGLangClientConfig(base_url="http://127.0.0.1:9")).prepare(images)
    assert [p.image.image_id for p in prepared] == ["a", "b", "c"]
    assert prepared[0].payload.startswith("data:image/jpeg;base64,") and prepared[0].error is None
    assert prepared[1].payload is None and "FileNotFoundError" in prepared[1].error
