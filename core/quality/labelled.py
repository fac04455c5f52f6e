"""Labelled sets for evaluation: a folder `<root>/<label>/<image>` or a CSV `path,label[,field]`.

Images are identified by content, exactly as ingestion does (SHA-256 of the bytes), so a labelled
file matches its image wherever a drop put it. The field of a label is the CSV's `field` column,
or, when absent, the one field whose vocabulary holds the label (`core.quality.fields`).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from core.ingest.hashing import sha256_file
from core.quality.fields import FIELDS, field_for_label

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
}


class LabelledImage(BaseModel, frozen=True):
    image_id: str
    path: str
    field: str
    label: str


class LabelledSet(BaseModel):
    source: str
    items: list[LabelledImage]

    def fields(self) -> list[str]:
        return sorted({item.field for item in self.items})

    def labels(self, field: str) -> dict[str, str]:
        """image_id -> label for one field."""
        return {item.image_id: item.label for item in self.items if item.field == field}

    def image_ids(self) -> list[str]:
        return sorted({item.image_id for item in self.items})


def _resolve_field(label: str, field: str | None, where: str) -> str:
    if field:
        if field not in FIELDS:
            raise ValueError(f"{where}: unknown field {field!r}; known: {sorted(FIELDS)}")
        if label not in FIELDS[field].values:
            raise ValueError(
                f"{where}: {label!r} is not a value of {field!r}: {list(FIELDS[field].values)}"
            )
        return field
    try:
        return field_for_label(label).name
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _build(source: str, rows: list[tuple[Path, str, str | None, str]]) -> LabelledSet:
    seen: dict[tuple[str, str], LabelledImage] = {}
    for path, label, field, where in rows:
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no image at {path}")
        name = _resolve_field(label, field, where)
        image_id, _ = sha256_file(path)
        item = LabelledImage(image_id=image_id, path=str(path), field=name, label=label)
        earlier = seen.get((image_id, name))
        if earlier and earlier.label != label:
            raise ValueError(
                f"{where}: {path} is labelled {label!r} for {name}, but the same image "
                f"({earlier.path}) is labelled {earlier.label!r}"
            )
        seen.setdefault((image_id, name), item)
    items = sorted(seen.values(), key=lambda item: (item.field, item.path))
    if not items:
        raise ValueError(f"{source}: no labelled images found")
    return LabelledSet(source=source, items=items)


def load_folder(root: str | Path, *, field: str | None = None) -> LabelledSet:
    """`<root>/<label>/<image>`: every image file in a label folder carries that label."""
    root = Path(root)
    rows = [
        (image, folder.name, field, str(image.relative_to(root)))
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for image in sorted(folder.rglob("*"))
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES
    ]
    return _build(str(root), rows)


def load_csv(path: str | Path) -> LabelledSet:
    """A CSV with a header `path,label[,field]`; relative paths are relative to the CSV's folder."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(
            line for line in handle if line.strip() and not line.lstrip().startswith("#")
        )
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: header must be path,label[,field]; missing {sorted(missing)}"
            )
        rows = []
        for number, row in enumerate(reader, start=2):
            image = Path(row["path"].strip())
            image = image if image.is_absolute() else path.parent / image
            field = (row.get("field") or "").strip() or None
            rows.append((image, row["label"].strip(), field, f"{path.name} row {number}"))
    return _build(str(path), rows)


def load_labelled(location: str | Path, *, field: str | None = None) -> LabelledSet:
    """A folder or a CSV, by what `location` is."""
    location = Path(location)
    if location.is_dir():
        return load_folder(location, field=field)
    if location.suffix.lower() == ".csv":
        return load_csv(location)
    raise ValueError(f"{location}: expected a folder of <label>/<image> or a .csv file")


def count_by_field(labelled: LabelledSet) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in labelled.items:
        counts[item.field][item.label] += 1
    return {field: dict(labels) for field, labels in counts.items()}
