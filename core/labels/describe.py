"""The spec in use as a markdown table (task, field, kind, what it allows, where it is stored),
for the extraction asset's page in the Dagster UI: what the pipeline asks of each image."""

from __future__ import annotations

from core.labels.spec import (
    ChoiceField,
    EntitiesField,
    IntegerField,
    LabelsSpec,
    MultiChoiceField,
    NumberField,
    TextField,
)


def _allows(field: object) -> str:
    if isinstance(field, ChoiceField):
        text = ", ".join(f"`{v}`" for v in field.allowed)
        return text + (" (ordered)" if field.ordinal else "")
    if isinstance(field, MultiChoiceField):
        values = ", ".join(f"`{v}`" for v in field.values)
        return f"{field.min} to {field.max} of {values}"
    if isinstance(field, IntegerField | NumberField):
        return f"{field.min} to {field.max}"
    if isinstance(field, TextField):
        return f"at most {field.max_length} characters" if field.max_length else "a pattern"
    if isinstance(field, EntitiesField):
        inner = ", ".join(f"{f.name} ({f.kind})" for f in field.fields)
        return f"at most {field.max} of: {inner}"
    return "yes or no"


def spec_markdown(spec: LabelsSpec, source: str) -> str:
    """One row per field: task, field, kind, allowed answers, CLIP zero-shot, table."""
    lines = [
        f"Labeling spec `{source}` (`IMAGE_PIPELINE_LABELS`; reload the code location after "
        "editing it):",
        "",
        "| task | field | kind | answers | CLIP zero-shot | table |",
        "|---|---|---|---|---|---|",
    ]
    for task in spec.tasks:
        for field in task.fields:
            optional = " (optional)" if getattr(field, "optional", False) else ""
            zero_shot = "yes" if getattr(field, "phrases", None) else ""
            table = f"task_{task.name}" + (
                f"__{field.name}" if isinstance(field, EntitiesField) else ""
            )
            lines.append(
                f"| {task.name} | {field.name} | {field.kind}{optional} | "
                f"{_allows(field).replace('|', '/')} | {zero_shot} | `{table}` |"
            )
    return "\n".join(lines)
