"""Safe image decoding: limits first, then a full decode, then one RGB picture for the models.

Pillow parses the header lazily, so size limits are checked before any pixel is decoded, and a
decompression bomb (a tiny file that claims a huge canvas) is rejected as `too_large`. Ingestion
decodes every file completely, since only a full decode finds truncated data; JPEGs decode at
1/8 scale for that (the entropy-coded data is still read to the end, so truncation still shows).
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.ingest.reasons import Rejected, RejectReason

try:  # HEIC/HEIF (iPhone photos) through libheif; everything else decodes without it.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pass

ImageFile.LOAD_TRUNCATED_IMAGES = False

EXIF_ORIENTATION = 0x0112
EXIF_DATETIME = 0x0132
EXIF_IFD = 0x8769
EXIF_DATETIME_ORIGINAL = 0x9003
_SWAPS_AXES = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_DIRECT_TO_RGB = {"1", "L", "RGB", "RGBX", "CMYK", "YCbCr", "HSV"}
_HIGH_DEPTH = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodeLimits:
    """Files over these limits are rejected (`too_large`, `extreme_aspect_ratio`) from their
    header, before their pixels are decoded.

    `max_aspect_ratio` bounds the longer side over the shorter: a model's preprocessing resizes
    the shorter side to its input size, so a 1x30,000 PNG of 413 bytes became a 224 x 6.7
    million canvas (7 GB) for ViT-B-32.
    """

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 150_000_000
    max_aspect_ratio: float = 50.0


_PILLOW_LIMIT = threading.Lock()


def _let_pillow_open(max_pixels: int) -> None:
    """Raise Pillow's own refusal (above 2 x `Image.MAX_IMAGE_PIXELS`, 179 MP by default) to
    let a run's larger `max_pixels` through to our check in `_open`.

    Pillow reads one process-wide value, so it is only ever raised (under a lock), never put
    back: a run with a smaller limit is still held to it by `_open`, and Pillow keeps refusing
    canvases over twice the largest limit any run in the process configured.
    """
    needed = -(-max_pixels // 2)
    with _PILLOW_LIMIT:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < needed:
            Image.MAX_IMAGE_PIXELS = needed


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str
    width: int
    height: int
    exif_orientation: int | None
    frame_count: int
    captured_at: datetime | None
    notes: tuple[str, ...] = field(default=())


def _open(path: Path | bytes, limits: DecodeLimits) -> Image.Image:
    _let_pillow_open(limits.max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    except Image.DecompressionBombError as error:
        raise Rejected(RejectReason.TOO_LARGE, str(error)) from error
    except UnidentifiedImageError as error:
        raise Rejected(
            RejectReason.NOT_AN_IMAGE, "no image decoder recognises the file's bytes"
        ) from error
    except (PermissionError, FileNotFoundError, IsADirectoryError) as error:
        raise Rejected(RejectReason.UNREADABLE, str(error)) from error
    except (SyntaxError, ValueError, EOFError, OSError) as error:
        # Pillow raises these from format plugins whose header parse fails half way.
        raise _decoder_error(error) from error
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise Rejected(RejectReason.CORRUPT, f"image claims an empty canvas {width}x{height}")
    if width * height > limits.max_pixels:
        image.close()
        raise Rejected(
            RejectReason.TOO_LARGE,
            f"{width}x{height} = {width * height} pixels is over the {limits.max_pixels} pixel limit",
        )
    if aspect_ratio(width, height) > limits.max_aspect_ratio:
        image.close()
        raise Rejected(
            RejectReason.EXTREME_ASPECT_RATIO,
            f"{width}x{height} is {aspect_ratio(width, height):.0f}:1, over the "
            f"{limits.max_aspect_ratio:g}:1 aspect ratio limit",
        )
    return image


def aspect_ratio(width: int, height: int) -> float:
    """The longer side over the shorter (1 for a square)."""
    return max(width, height) / max(1, min(width, height))


def _load(image: Image.Image) -> None:
    """Decode all pixels of the current frame, mapping decoder failures to reasons."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as error:
        raise Rejected(RejectReason.TOO_LARGE, str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise _decoder_error(error) from error


def _decoder_error(error: Exception) -> Rejected:
    """Pillow reports data that ends early in several wordings; everything else is corrupt."""
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if "truncated" in lowered or "broken data stream" in lowered or isinstance(error, EOFError):
        return Rejected(RejectReason.TRUNCATED, text)
    return Rejected(RejectReason.CORRUPT, text)


def _captured_at(exif: Image.Exif) -> tuple[datetime | None, str | None]:
    raw = exif.get_ifd(EXIF_IFD).get(EXIF_DATETIME_ORIGINAL) or exif.get(EXIF_DATETIME)
    if not raw:
        return None, None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip("\x00 ")
    try:
        return datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S"), None
    except ValueError:
        pass
    try:  # some tools write ISO 8601 instead of the EXIF layout
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=None), None
    except ValueError:
        return None, f"unparseable EXIF capture time {text!r}"


def _orientation(exif: Image.Exif) -> int | None:
    value = exif.get(EXIF_ORIENTATION)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def inspect_image(path: Path, limits: DecodeLimits = DecodeLimits()) -> ImageInfo:
    """Validate `path` with a full decode and describe it; raise `Rejected` if it is unusable."""
    with _open(path, limits) as image:
        file_format = image.format or "UNKNOWN"
        mode = image.mode
        width, height = image.size
        frame_count = int(getattr(image, "n_frames", 1) or 1)
        try:
            exif = image.getexif()
        except Exception:  # a broken EXIF block must not reject an otherwise good picture
            exif = Image.Exif()
        orientation = _orientation(exif)
        captured_at, date_note = _captured_at(exif)
        if file_format == "JPEG":
            image.draft(None, (1, 1))
        _load(image)
        notes = list(conversion_notes(mode, image.info))
        if date_note:
            notes.append(date_note)
        if frame_count > 1:
            notes.append(f"animated: first of {frame_count} frames used")
        if orientation and orientation != 1:
            notes.append(f"EXIF orientation {orientation} applied")
        if orientation in _SWAPS_AXES:
            width, height = height, width
    return ImageInfo(
        format=file_format,
        mode=mode,
        width=width,
        height=height,
        exif_orientation=orientation,
        frame_count=frame_count,
        captured_at=captured_at,
        notes=tuple(notes),
    )


def conversion_notes(mode: str, info: dict) -> list[str]:
    """What turning a picture of `mode` into RGB will change, for the `notes` column."""
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in info):
        return [f"{mode} with transparency flattened onto white"]
    if mode in _HIGH_DEPTH:
        return [f"{mode} scaled to 8 bits"]
    if mode in {"CMYK", "YCbCr", "HSV", "LAB"}:
        return [f"converted from {mode}"]
    if mode not in _DIRECT_TO_RGB | {"P"}:
        raise Rejected(RejectReason.UNSUPPORTED_MODE, f"pixel mode {mode!r} has no RGB conversion")
    return []


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and pixels.max(initial=0) <= 65535):
        scaled = pixels / 257.0
    else:
        low, high = float(pixels.min(initial=0)), float(pixels.max(initial=0))
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """One 8-bit RGB picture: alpha flattened onto white, deep pixels scaled, colour models converted."""
    mode = image.mode
    conversion_notes(mode, image.info)  # raises for modes we cannot convert
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in _HIGH_DEPTH:
        return _high_depth_to_l(image).convert("RGB")
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise Rejected(RejectReason.UNSUPPORTED_MODE, f"{mode} to RGB: {error}") from error


def load_rgb(
    path: Path | bytes,
    limits: DecodeLimits = DecodeLimits(),
    *,
    min_side: int | None = None,
    fit_within: int | None = None,
) -> Image.Image:
    """The picture a model sees: oriented upright, RGB, first frame; `path` may be the file's bytes.

    With `min_side`, JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side is
    still at least `min_side` pixels, which is several times faster than a full decode for
    camera-sized files; the caller's exact resize follows. With `fit_within`, the smallest scale
    that is still at least as large as the picture downscaled to a longest side of `fit_within`.

    A picture more elongated than `limits.max_aspect_ratio` (ingestion rejects new ones; rows
    from before the limit may hold one) is cut to its centre at that ratio, so a model's resize
    of the shorter side stays small; for the usual resize-then-centre-crop preprocessing the
    model's input is the same.
    """
    with _open(path, replace(limits, max_aspect_ratio=math.inf)) as image:
        if image.format == "JPEG":
            if min_side is not None:
                image.draft(None, (min_side, min_side))
            elif fit_within is not None and max(image.size) > fit_within:
                scale = fit_within / max(image.size)
                image.draft(None, tuple(math.ceil(side * scale) for side in image.size))
        _load(image)
        upright = ImageOps.exif_transpose(image) or image
        rgb = to_rgb(upright)
        if rgb is image:
            rgb = image.copy()  # detach from the file handle the `with` block closes
    return fit_aspect(rgb, limits.max_aspect_ratio)


def fit_aspect(image: Image.Image, max_ratio: float) -> Image.Image:
    """The centre of `image` cut to at most `max_ratio` : 1 (the picture itself if it fits)."""
    width, height = image.size
    if aspect_ratio(width, height) <= max_ratio:
        return image
    if width > height:
        keep = max(1, math.floor(height * max_ratio))
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    keep = max(1, math.floor(width * max_ratio))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))
