"""Image preparation for the VLM backends: each image read and decoded once per run, for all tasks.

Why: the client's CPU, not the GPU, limited how fast a drop could be fed. Re-reading and
re-encoding every image for every task cost three full 12-megapixel decodes per photo with the
three built-in tasks. Now a batch of images is prepared once, and every task of the run is asked
about the same prepared payload. Preparation starts from the file's BYTES (`read_image`, the one
read site), so a safer open or a hash check can replace that single function.

For the SGLang client the payload is a JPEG `data:` URL:
- an original that already fits (a JPEG, RGB or greyscale, upright, longest side at most
  `max_side`, at most `passthrough_max_bytes`) is sent byte for byte: no decode, no generation
  loss;
- anything else decodes at the smallest JPEG DCT scale that is still at least the target size
  (`Image.draft`: a 4000x3000 photo decodes at 2000x1500, not in full), is resized to a longest
  side of `max_side` with bilinear resampling (antialiased when shrinking; the old bicubic
  resize from a full decode cost more than the decode) and encoded as JPEG at `quality`.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from PIL import Image

from core.ingest.decode import EXIF_ORIENTATION, load_rgb

if TYPE_CHECKING:
    from core.vlm.types import ImageInput, PreparedImage

PASSTHROUGH_MODES = frozenset({"RGB", "L"})
RESAMPLE = Image.Resampling.BILINEAR


def read_image(image: ImageInput) -> bytes:
    """The image's bytes: read once per run, safely and hash-checked, by `core.vlm.inputs`
    (`image.data`); a bare path (benchmarks, direct backend use) is read here."""
    return image.data if image.data is not None else image.path.read_bytes()


def passes_through(data: bytes, max_side: int, max_bytes: int) -> bool:
    """Whether the original bytes can be sent as they are: the server would see the same pixels.

    Only the header is parsed. EXIF-rotated files are re-encoded upright, since servers differ in
    whether they apply the orientation tag; palette, alpha, CMYK and 16-bit files are converted.
    """
    if len(data) > max_bytes:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in PASSTHROUGH_MODES:
                return False
            if max(image.size) > max_side:
                return False
            orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # unreadable here: the full decode below reports why
        return False
    return orientation in (None, 1)


def jpeg_payload(
    data: bytes, max_side: int = 1536, quality: int = 90, passthrough_max_bytes: int = 2_000_000
) -> bytes:
    """The JPEG bytes the server gets: the original when it fits, else decoded at scale, resized."""
    if passes_through(data, max_side, passthrough_max_bytes):
        return data
    picture = load_rgb(data, fit_within=max_side)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), resample=RESAMPLE)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def prepare_images(
    images: Sequence[ImageInput],
    make_payload: Callable[[bytes], Any],
    workers: int | None = None,
) -> list[PreparedImage]:
    """Read and prepare each image once, in parallel threads (Pillow releases the GIL).

    One image's failure is kept on its own entry, so it ends as a failure row for every task
    while the rest of the batch goes on.
    """
    from core.vlm.types import PreparedImage

    def one(image: ImageInput) -> PreparedImage:
        try:
            return PreparedImage(image=image, payload=make_payload(read_image(image)))
        except Exception as error:
            return PreparedImage(
                image=image, error=f"cannot read image: {type(error).__name__}: {error}"
            )

    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(images) <= 1:
        return [one(image) for image in images]
    with ThreadPoolExecutor(max_workers=min(workers, len(images))) as pool:
        return list(pool.map(one, images))
