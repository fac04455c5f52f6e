"""The bytes the VLM sees: read once and safely, and only if they hash to the image id.

For each pending image the first recorded file that still exists and still hashes right is read
(`core.copies`, `core.files`); the backend gets those bytes in `ImageInput.data` and decodes them
instead of reopening a path. An image with no such file gets a failure row (`unavailable` or
`changed_since_ingest`) without reaching the model, and what was found at its paths is written
back so the next ingestion re-checks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.copies import image_copies, record_unreadable
from core.files import ImageUnreadable, read_image_copy
from core.vlm.types import ExtractionResult, ImageInput
from core.warehouse import Warehouse


def read_inputs(
    warehouse: Warehouse, drop_root: Path, drop_id: str, images: Sequence[ImageInput]
) -> tuple[list[ImageInput], list[ExtractionResult]]:
    """(images with their verified bytes, failure results for those with none)."""
    copies = image_copies(warehouse, drop_id, [image.image_id for image in images])
    readable: list[ImageInput] = []
    failed: list[ImageUnreadable] = []
    for image in images:
        try:
            key, data = read_image_copy(drop_root, image.image_id, copies[image.image_id])
        except ImageUnreadable as failure:
            failed.append(failure)
            continue
        # The file as the OS names it (its key is escaped when the name is not plain text).
        relative = next(c.relative for c in copies[image.image_id] if c.key == key)
        readable.append(ImageInput(image_id=image.image_id, path=drop_root / relative, data=data))
    if failed:
        warehouse.write(lambda conn: record_unreadable(conn, failed))
    results = [
        ExtractionResult(image_id=f.image_id, status=f.status, error=str(f), attempts=0)  # type: ignore[arg-type]
        for f in failed
    ]
    return readable, results
