"""`python -m core.labels [SPEC]`: check a labeling spec (default: the one in use) and print its
tasks and fields, or every problem (file:line:column: task, field: what to fix); exit 1 if any."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from core.labels.derive import MAX_GRAMMAR_SUBSETS, subset_count
from core.labels.loader import SpecError, load_spec, spec_path
from core.labels.spec import MultiChoiceField


def summary(spec_file: str) -> str:
    spec = load_spec(spec_file)
    lines = [f"labeling spec {spec_file}: {len(spec.tasks)} tasks"]
    for task in spec.tasks:
        lines.append(f"  task_{task.name} (max {task.max_completion_tokens} tokens)")
        for field in task.fields:
            detail = field.kind
            if hasattr(field, "values"):
                detail += " [" + ", ".join(field.values) + "]"
            if isinstance(field, MultiChoiceField):
                sets = subset_count(field)
                detail += f" {field.min} to {field.max}: {sets} sets, " + (
                    "distinct by the grammar"
                    if sets <= MAX_GRAMMAR_SUBSETS
                    else f"over {MAX_GRAMMAR_SUBSETS}: distinct by validation only"
                )
            if getattr(field, "phrases", None):
                detail += " + CLIP zero-shot"
            lines.append(f"    {field.name}: {detail}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = args[0] if args else str(spec_path())
    try:
        print(summary(path))
    except SpecError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
