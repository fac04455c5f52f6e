"""Labelled sets for evaluation: a folder `<root>/<label>/<image>` or a CSV.

Images are identified by content, exactly as ingestion does (SHA-256 of the bytes), so a labelled
file matches its image wherever a drop put it.

A CSV is long (`path,label[,field]`; `value` may stand for `label`), one label per row, or wide
(`path,<field>,<field>,...`: a column per labelled field, an empty cell is "not labelled"). The
field of a long row is its `field` column or, when absent, the one choice field whose values hold
the label (`core.quality.fields`). Values by the field's kind: a choice value; a multi-label set
as `a|b|c` (distinct values, within the field's min and max); yes/no as `yes`, `no`, `true`,
`false`, `1` or `0`; integers and numbers within the field's range. Each value is kept in a
canonical text form (`canonical`): sets in the spec's value order, yes/no as `true`/`false`.
A set with a problem is refused whole, every problem listed by file and line: nothing is
half-loaded.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from core.ingest.hashing import sha256_file
from core.quality.fields import FIELDS, LabelField

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


class LabelledSetError(ValueError):
    """A labelled set that does not fit the spec: every problem, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"labelled set {source} is invalid ({count}):\n" + "\n".join(problems))


YES = {"yes", "true", "1"}
NO = {"no", "false", "0"}


def canonical(field: LabelField, raw: str) -> str:
    """The canonical text of a labelled value of `field`; ValueError saying what is wrong."""
    text = raw.strip()
    if field.kind == "choice":
        if text not in field.values:
            raise ValueError(f"{text!r} is not a value of {field.name!r}: {list(field.values)}")
        return text
    if field.kind == "multi_choice":
        items = [part.strip() for part in text.split("|")] if text else []
        unknown = [item for item in items if item not in field.values]
        if unknown:
            raise ValueError(
                f"{unknown} are not values of {field.name!r}: {list(field.values)} (separate "
                "a set's values with |)"
            )
        repeated = sorted({item for item in items if items.count(item) > 1})
        if repeated:
            raise ValueError(f"{field.name!r}: {repeated} repeated: a set holds each value once")
        low, high = field.min_items or 0, field.max_items
        if len(items) < low or (high is not None and len(items) > high):
            raise ValueError(
                f"{field.name!r} takes {low} to {high} values; {len(items)} given: {text!r}"
            )
        return "|".join(value for value in field.values if value in items)
    if field.kind == "yes_no":
        if text.lower() in YES:
            return "true"
        if text.lower() in NO:
            return "false"
        raise ValueError(f"{field.name!r} is yes/no: write yes, no, true or false, not {text!r}")
    try:
        number = int(text) if field.kind == "integer" else float(text)
    except ValueError:
        raise ValueError(f"{field.name!r} takes {field.kind} values, not {text!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{field.name!r} takes a finite number, not {text!r}")
    if (field.minimum is not None and number < field.minimum) or (
        field.maximum is not None and number > field.maximum
    ):
        raise ValueError(
            f"{text} is outside the range of {field.name!r}: {field.minimum} to {field.maximum}"
        )
    return str(number) if field.kind == "integer" else repr(float(number))


def _resolve_field(label: str, field: str | None, fields: dict[str, LabelField]) -> tuple[str, str]:
    """(field name, canonical value); ValueError with the reason."""
    if field:
        if field not in fields:
            raise ValueError(f"unknown field {field!r}; known: {sorted(fields)}")
        return field, canonical(fields[field], label)
    matches = [f for f in fields.values() if f.kind == "choice" and label in f.values]
    if not matches:
        known = {name: list(f.values) for name, f in fields.items() if f.kind == "choice"}
        raise ValueError(
            f"label {label!r} belongs to no known field (other kinds need a field column); "
            f"known labels: {known}"
        )
    if len(matches) > 1:
        names = ", ".join(f.name for f in matches)
        raise ValueError(f"label {label!r} is a value of several fields ({names}): name the field")
    return matches[0].name, label


Row = tuple[Path, str, str | None, str]  # image, raw value, field (None: inferred), where


def _build(
    source: str, rows: list[Row], fields: dict[str, LabelField] | None = None
) -> LabelledSet:
    fields = FIELDS if fields is None else fields
    problems: list[str] = []
    seen: dict[tuple[str, str], LabelledImage] = {}
    hashes: dict[Path, str] = {}
    for path, label, field, where in rows:
        try:
            name, value = _resolve_field(label, field, fields)
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        if path not in hashes:
            if not path.is_file():
                problems.append(f"{where}: no image at {path}")
                continue
            hashes[path] = sha256_file(path)[0]
        image_id = hashes[path]
        item = LabelledImage(image_id=image_id, path=str(path), field=name, label=value)
        earlier = seen.get((image_id, name))
        if earlier and earlier.label != value:
            problems.append(
                f"{where}: {path} is labelled {value!r} for {name}, but the same image "
                f"({earlier.path}) is labelled {earlier.label!r}"
            )
        seen.setdefault((image_id, name), item)
    if problems:
        raise LabelledSetError(source, problems)
    items = sorted(seen.values(), key=lambda item: (item.field, item.path))
    if not items:
        raise ValueError(f"{source}: no labelled images found")
    return LabelledSet(source=source, items=items)


def load_folder(
    root: str | Path, *, field: str | None = None, fields: dict[str, LabelField] | None = None
) -> LabelledSet:
    """`<root>/<label>/<image>`: every image file in a label folder carries that label."""
    root = Path(root)
    rows = [
        (image, folder.name, field, str(image.relative_to(root)))
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for image in sorted(folder.rglob("*"))
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES
    ]
    return _build(str(root), rows, fields)


def load_csv(path: str | Path, *, fields: dict[str, LabelField] | None = None) -> LabelledSet:
    """A long CSV `path,label[,field]` (or `path,field,value`) or a wide one `path,<field>,...`
    (see the module docstring); relative paths are relative to the CSV's folder."""
    path = Path(path)
    fields = FIELDS if fields is None else fields
    with open(path, newline="", encoding="utf-8") as handle:
        numbered = [
            (number, line)
            for number, line in enumerate(handle, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if not numbered:
        raise ValueError(f"{path}: empty; header must be path,label[,field] or path,<field>,...")
    parsed = list(csv.reader(line for _, line in numbered))
    header = [name.strip() for name in parsed[0]]
    if "path" not in header:
        raise ValueError(
            f"{path}:{numbered[0][0]}: header must be path,label[,field] (long) or "
            "path,<field>,... (wide); missing ['path']"
        )
    long = "label" in header or "value" in header
    value_column = "label" if "label" in header else "value"
    if not long:
        unknown = [name for name in header if name != "path" and name not in fields]
        if unknown:
            raise LabelledSetError(
                str(path),
                [
                    f"{path.name}:{numbered[0][0]}: unknown field {name!r} in the header "
                    f"(a wide CSV has a column per field; known: {sorted(fields)})"
                    for name in unknown
                ],
            )
    rows: list[Row] = []
    for (number, _), cells in zip(numbered[1:], parsed[1:], strict=True):
        where = f"{path.name}:{number}"
        record = dict(zip(header, (cell.strip() for cell in cells), strict=False))
        image = Path(record.get("path", ""))
        image = image if image.is_absolute() else path.parent / image
        if long:
            rows.append((image, record.get(value_column, ""), record.get("field") or None, where))
        else:
            rows += [
                (image, record[name], name, f"{where} ({name})")
                for name in header
                if name != "path" and record.get(name)
            ]
    return _build(str(path), rows, fields)


def load_labelled(
    location: str | Path, *, field: str | None = None, fields: dict[str, LabelField] | None = None
) -> LabelledSet:
    """A folder or a CSV, by what `location` is."""
    location = Path(location)
    if location.is_dir():
        return load_folder(location, field=field, fields=fields)
    if location.suffix.lower() == ".csv":
        return load_csv(location, fields=fields)
    raise ValueError(f"{location}: expected a folder of <label>/<image> or a .csv file")


def count_by_field(labelled: LabelledSet) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in labelled.items:
        counts[item.field][item.label] += 1
    return {field: dict(labels) for field, labels in counts.items()}
