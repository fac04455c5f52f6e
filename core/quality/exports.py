"""Exports for downstream use: typed task tables as Parquet and JSONL with image paths, and
validated extractions as LLaVA-style instruction data for fine-tuning a smaller model.

Tables stream from DuckDB to files with `COPY ... TO` on a read-only connection, so exporting a
large warehouse needs no memory beyond DuckDB's buffers and never blocks writers for long.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from core.warehouse import Warehouse

FORMATS = {"parquet": "(FORMAT parquet)", "jsonl": "(FORMAT json)"}


class ExportedFile(BaseModel):
    table: str
    format: str
    path: str
    rows: int


def task_tables(warehouse: Warehouse) -> list[str]:
    """Every typed task table (`task_<name>` and child `task_<name>__<field>`), sorted."""
    return [
        name
        for (name,) in warehouse.rows(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_name LIKE 'task\\_%' ESCAPE '\\' ORDER BY table_name"
        )
    ]


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def task_table_query(warehouse: Warehouse, table: str) -> str:
    """The table's rows with `image_path` (the image's first path, relative to the drop root)."""
    if table not in task_tables(warehouse):
        raise ValueError(f"{table!r} is not a task table")
    columns = [name for name, _ in warehouse.columns(table)]
    order = ", ".join(
        f't."{c}"' for c in ("image_id", "model_id", "task_fingerprint", "idx") if c in columns
    )
    return (
        f'SELECT t.*, i.first_path AS image_path FROM "{table}" t'
        f" LEFT JOIN images i USING (image_id) ORDER BY {order}"
    )


def export_task_tables(
    warehouse: Warehouse,
    out_dir: str | Path,
    *,
    tables: Sequence[str] | None = None,
    formats: Sequence[str] = ("parquet", "jsonl"),
) -> list[ExportedFile]:
    """Write each task table to `<out_dir>/<table>.parquet` and `.jsonl`, with image paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {sorted(FORMATS)}")
    exported = []
    for table in tables if tables is not None else task_tables(warehouse):
        query = task_table_query(warehouse, table)
        with warehouse.reader() as conn:
            rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
            for fmt in formats:
                target = out / f"{table}.{fmt}"
                conn.execute(f"COPY ({query}) TO {_literal(target)} {FORMATS[fmt]}")
                exported.append(
                    ExportedFile(
                        table=table, format=fmt, path=str(target), rows=int(rows[0]) if rows else 0
                    )
                )
    return exported


class InstructionExport(BaseModel):
    path: str
    records: int
    skipped_invalid: int  # `ok` rows the task's model refuses today (e.g. after a schema edit)


def llava_conversation(image: str, instruction: str, answer: dict, image_id: str) -> dict:
    """One LLaVA-style training record laid out as inference prompts the model
    (`core.vlm.prompt.chat_messages`): the system prompt, then the instruction and the image
    in that order, then the JSON answer."""
    from core.vlm.prompt import SYSTEM_PROMPT

    return {
        "id": image_id,
        "image": image,
        "system": SYSTEM_PROMPT,
        "conversations": [
            {"from": "human", "value": f"{instruction}\n<image>"},
            {"from": "gpt", "value": json.dumps(answer, ensure_ascii=False, separators=(",", ":"))},
        ],
    }


def export_instruction_data(
    warehouse: Warehouse,
    out_path: str | Path,
    *,
    task: str,
    instruction: str,
    model: type[BaseModel] | None = None,
    model_id: str | None = None,
    task_fingerprint: str | None = None,
    image_root: str | Path | None = None,
) -> InstructionExport:
    """Validated extractions of `task` as a LLaVA fine-tuning file (a JSON list of records).

    One record per image: its latest `ok` result (optionally of one model and task version).
    With `model`, each answer is validated again and re-serialised in the schema's field order;
    rows it refuses are skipped and counted. Image paths are the image's first path, under
    `image_root` (the drop root) when given.
    """
    filters = ["x.task = ?", "x.status = 'ok'"]
    params: list[object] = [task]
    if model_id:
        filters.append("x.model_id = ?")
        params.append(model_id)
    if task_fingerprint:
        filters.append("x.task_fingerprint = ?")
        params.append(task_fingerprint)
    rows = warehouse.rows(
        f"""
        SELECT x.image_id, i.first_path, arg_max(CAST(x.parsed_json AS VARCHAR), x.created_at)
        FROM vlm_extractions x JOIN images i USING (image_id)
        WHERE {" AND ".join(filters)}
        GROUP BY x.image_id, i.first_path ORDER BY i.first_path
        """,
        params,
    )
    records, skipped = [], 0
    for image_id, first_path, parsed in rows:
        answer = json.loads(parsed)
        if model is not None:
            try:
                answer = model.model_validate(answer).model_dump(mode="json")
            except ValidationError:
                skipped += 1
                continue
        image = str(Path(image_root) / first_path) if image_root else first_path
        records.append(llava_conversation(image, instruction, answer, image_id))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return InstructionExport(path=str(out), records=len(records), skipped_invalid=skipped)


class ExportSummary(BaseModel):
    tables: list[ExportedFile]
    instructions: dict[str, InstructionExport]  # task name -> its LLaVA file


def export_all(
    warehouse: Warehouse, out_dir: str | Path, *, image_root: str | Path | None = None
) -> ExportSummary:
    """Every task table (Parquet + JSONL) and, per built-in task, its validated extractions of
    the current task version as `llava_<task>.json`, with the task's own prompt as instruction."""
    from core.tasks.registry import TASKS

    out = Path(out_dir)
    tables = export_task_tables(warehouse, out)
    present = set(task_tables(warehouse))
    instructions = {
        name: export_instruction_data(
            warehouse,
            out / f"llava_{name}.json",
            task=name,
            instruction=task.instruction,
            model=task.model,
            task_fingerprint=task.fingerprint,
            image_root=image_root,
        )
        for name, task in TASKS.items()
        if task.tables.table in present
    }
    return ExportSummary(tables=tables, instructions=instructions)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.quality.exports [--out DIR]`: export the configured warehouse."""
    import argparse

    from orchestration.settings import REPO_ROOT, Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "exports")
    parser.add_argument("--warehouse", type=Path, default=settings.warehouse_path)
    parser.add_argument(
        "--image-root",
        default=str(settings.drop_root),
        help="Prefix for image paths in the LLaVA files (default: the drop root).",
    )
    args = parser.parse_args(argv)
    if not args.warehouse.exists():
        parser.error(f"no warehouse at {args.warehouse}: run `make demo` or the pipeline first")
    summary = export_all(Warehouse(args.warehouse), args.out, image_root=args.image_root)
    for exported in summary.tables:
        print(f"{exported.rows:>8} rows  {exported.path}")
    for name, result in summary.instructions.items():
        print(
            f"{result.records:>8} conversations  {result.path}"
            + (
                f"  ({result.skipped_invalid} refused by the {name} schema)"
                if result.skipped_invalid
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
