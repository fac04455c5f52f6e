"""Decoding into the one RGB picture the models see."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.ingest.decode import DecodeLimits, conversion_notes, inspect_image, load_rgb, to_rgb
from core.ingest.reasons import Rejected
from tests.fixtures.bad_inputs import bomb_png, jpeg_bytes


def test_transparent_palette_pixels_become_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.info["transparency"] = 0
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (200, 0, 0)
    assert rgb.getpixel((3, 3)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    deep = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert to_rgb(deep).getpixel((1, 0)) == (128, 128, 128)
    assert to_rgb(deep).getpixel((2, 0)) == (255, 255, 255)


def test_a_mode_without_rgb_conversion_is_unsupported():
    with pytest.raises(Rejected) as raised:
        conversion_notes("BGR;15", {})
    assert raised.value.reason.value == "unsupported_mode"


def test_load_rgb_applies_exif_orientation(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_bytes(40, 20, exif=exif.tobytes()))
    assert load_rgb(path).size == (20, 40)
    assert inspect_image(path).width == 20


def test_draft_decoding_keeps_the_shorter_side_at_least_min_side(tmp_path: Path):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(2000, 1500))
    assert load_rgb(path, min_side=300).size == (500, 375)  # 1/4 scale: 1/8 would give 187 < 300
    assert load_rgb(path).size == (2000, 1500)


def test_pixel_limit_rejects_before_decoding(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(5000, 5000))
    with pytest.raises(Rejected) as raised:
        inspect_image(path, DecodeLimits(max_pixels=1_000_000))
    assert raised.value.reason.value == "too_large"
    assert "pixel limit" in raised.value.error


def test_grey_jpeg_is_recorded_as_l_and_loads_as_rgb(tmp_path: Path):
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 77).save(buffer, "JPEG")
    path = tmp_path / "grey.jpg"
    path.write_bytes(buffer.getvalue())
    assert inspect_image(path).mode == "L"
    assert load_rgb(path).mode == "RGB"
