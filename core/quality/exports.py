"""Exports for downstream use: typed task tables as Parquet and JSONL with image paths, and
validated extractions as LLaVA-style instruction data for fine-tuning a smaller model.

Tables stream from DuckDB to files with `COPY ... TO` on a read-only connection, so exporting a
large warehouse needs no memory beyond DuckDB's buffers and never blocks writers for long. The
LLaVA file is written the same way: DuckDB copies the selected rows to a scratch Parquet file,
which is read back and turned into records `EXPORT_BATCH_ROWS` at a time.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from core.labels.derive import build_tasks
from core.labels.loader import current_spec
from core.labels.spec import LabelsSpec
from core.warehouse import Warehouse

EXPORT_BATCH_ROWS = 512  # LLaVA records made and written per batch: memory is one batch's
FORMATS = {"parquet": "(FORMAT parquet)", "jsonl": "(FORMAT json)"}
# Model ids of the locally built random-weight VLM stand-in (core/vlm/standin.py): its labels are
# meaningless, so exports leave them out unless asked.
STANDIN_PREFIX = "standin/"
_NOT_STANDIN = "NOT starts_with({column}, '" + STANDIN_PREFIX + "')"


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


def task_table_query(warehouse: Warehouse, table: str, *, include_standin: bool = True) -> str:
    """The table's rows with `image_path` (the image's first path, relative to the drop root);
    without `include_standin`, rows of stand-in models are left out."""
    if table not in task_tables(warehouse):
        raise ValueError(f"{table!r} is not a task table")
    columns = [name for name, _ in warehouse.columns(table)]
    order = ", ".join(
        f't."{c}"' for c in ("image_id", "model_id", "task_fingerprint", "idx") if c in columns
    )
    where = "" if include_standin else " WHERE " + _NOT_STANDIN.format(column="t.model_id")
    return (
        f'SELECT t.*, i.first_path AS image_path FROM "{table}" t'
        f" LEFT JOIN images i USING (image_id){where} ORDER BY {order}"
    )


def export_task_tables(
    warehouse: Warehouse,
    out_dir: str | Path,
    *,
    tables: Sequence[str] | None = None,
    formats: Sequence[str] = ("parquet", "jsonl"),
    include_standin: bool = True,
) -> list[ExportedFile]:
    """Write each task table to `<out_dir>/<table>.parquet` and `.jsonl`, with image paths
    (and, unless `include_standin`, without the rows of stand-in models)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {sorted(FORMATS)}")
    exported = []
    for table in tables if tables is not None else task_tables(warehouse):
        query = task_table_query(warehouse, table, include_standin=include_standin)
        with warehouse.reader() as conn:
            rows = conn.execute(f"SELECT count(*) FROM ({query})").fetchone()
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
    standin_left_out: int = 0  # images whose only `ok` results came from stand-in models


def llava_conversation(
    image: str, instruction: str, answer: dict, image_id: str, model_id: str
) -> dict:
    """One LLaVA-style training record laid out as inference prompts the model
    (`core.vlm.prompt.chat_messages`): the system prompt, then the image and the instruction in
    the prompt layout's order, then the JSON answer; and the model that gave it (so a training
    set never mixes models unknowingly)."""
    from core.vlm.prompt import SYSTEM_PROMPT, user_content

    human = "\n".join(
        part["text"] if isinstance(part, dict) else part
        for part in user_content(instruction, "<image>")
    )

    return {
        "id": image_id,
        "model_id": model_id,
        "image": image,
        "system": SYSTEM_PROMPT,
        "conversations": [
            {"from": "human", "value": human},
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
    include_standin: bool = False,
) -> InstructionExport:
    """Validated extractions of `task` as a LLaVA fine-tuning file (a JSON list of records),
    written as the rows are read, in batches: memory does not grow with the table.

    One record per image: its latest `ok` result (optionally of one model and task version),
    naming its `model_id`. Stand-in models' results are left out unless `include_standin`.
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
    every = f"""
        SELECT count(DISTINCT x.image_id) FROM vlm_extractions x JOIN images i USING (image_id)
        WHERE {" AND ".join(filters)}
    """
    if not include_standin:
        filters.append(_NOT_STANDIN.format(column="x.model_id"))
    latest = f"""
        SELECT x.image_id, i.first_path,
               arg_max(CAST(x.parsed_json AS VARCHAR), x.created_at) AS parsed,
               arg_max(x.model_id, x.created_at) AS model_used
        FROM vlm_extractions x JOIN images i USING (image_id)
        WHERE {" AND ".join(filters)}
        GROUP BY x.image_id, i.first_path ORDER BY i.first_path
        """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = skipped = 0
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".llava-") as work:
        # DuckDB writes the selected rows to a scratch file (the read lock is held only for
        # that); the records are then made and written one batch at a time, never all at once.
        rows_file = Path(work) / "rows.parquet"
        with warehouse.reader() as conn:
            conn.execute(f"COPY ({latest}) TO {_literal(rows_file)} (FORMAT parquet)", params)
            total = conn.execute(every, params).fetchone()
        partial = Path(work) / out.name
        with partial.open("w", encoding="utf-8") as sink:
            sink.write("[")
            for batch in pq.ParquetFile(rows_file).iter_batches(batch_size=EXPORT_BATCH_ROWS):
                for row in batch.to_pylist():
                    answer = json.loads(row["parsed"])
                    if model is not None:
                        try:
                            answer = model.model_validate(answer).model_dump(mode="json")
                        except ValidationError:
                            skipped += 1
                            continue
                    first_path = row["first_path"]
                    image = str(Path(image_root) / first_path) if image_root else first_path
                    record = llava_conversation(
                        image, instruction, answer, row["image_id"], row["model_used"]
                    )
                    sink.write(",\n" if records else "\n")
                    sink.write(json.dumps(record, ensure_ascii=False, indent=1))
                    records += 1
            sink.write("\n]\n")
        partial.replace(out)  # a reader never sees half a file
        read = records + skipped
    left_out = int(total[0] if total else 0) - read
    return InstructionExport(
        path=str(out), records=records, skipped_invalid=skipped, standin_left_out=left_out
    )


class ExportSummary(BaseModel):
    tables: list[ExportedFile]
    instructions: dict[str, InstructionExport]  # task name -> its LLaVA file
    standin_rows_left_out: int = 0  # task-table rows of stand-in models not written


def _standin_rows(warehouse: Warehouse, tables: Sequence[str]) -> int:
    where = _NOT_STANDIN.format(column="model_id")
    return sum(
        int(warehouse.rows(f'SELECT count(*) FROM "{table}" WHERE NOT ({where})')[0][0])
        for table in tables
    )


def export_all(
    warehouse: Warehouse,
    out_dir: str | Path,
    *,
    image_root: str | Path | None = None,
    include_standin: bool = False,
    spec: LabelsSpec | None = None,
) -> ExportSummary:
    """Every task table (Parquet + JSONL) and, per task of the labeling spec (default: the
    current one), its validated extractions of the current task version as
    `llava_<task>.json`, with the task's own prompt as instruction.

    Rows of stand-in models (`standin/...`, random weights) are left out unless
    `include_standin`: they must never end up in a training set by default."""
    tasks = build_tasks(current_spec() if spec is None else spec)

    out = Path(out_dir)
    tables = export_task_tables(warehouse, out, include_standin=include_standin)
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
            include_standin=include_standin,
        )
        for name, task in tasks.items()
        if task.tables.table in present
    }
    left_out = 0 if include_standin else _standin_rows(warehouse, sorted(present))
    return ExportSummary(tables=tables, instructions=instructions, standin_rows_left_out=left_out)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.quality.exports [--out DIR]`: export the configured warehouse.

    Paths come from the arguments or the deployment's variables (IMAGE_PIPELINE_WAREHOUSE,
    IMAGE_DROP_ROOT), relative to the working directory, as the other `core` commands do.
    """
    import argparse
    import os

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("data") / "exports")
    parser.add_argument(
        "--warehouse",
        type=Path,
        default=Path(os.environ.get("IMAGE_PIPELINE_WAREHOUSE") or "data/warehouse.duckdb"),
        help="DuckDB file (default: $IMAGE_PIPELINE_WAREHOUSE or data/warehouse.duckdb)",
    )
    parser.add_argument(
        "--image-root",
        default=str(Path(os.environ.get("IMAGE_DROP_ROOT") or "data/drops").resolve()),
        help="Prefix for image paths in the LLaVA files "
        "(default: the drop root, $IMAGE_DROP_ROOT or data/drops).",
    )
    parser.add_argument(
        "--include-standin",
        action="store_true",
        help="Also export rows of the random-weight stand-in models (left out by default).",
    )
    args = parser.parse_args(argv)
    if not args.warehouse.exists():
        parser.error(f"no warehouse at {args.warehouse}: run `make demo` or the pipeline first")
    summary = export_all(
        Warehouse(args.warehouse),
        args.out,
        image_root=args.image_root,
        include_standin=args.include_standin,
    )
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
    if summary.standin_rows_left_out:
        print(
            f"{summary.standin_rows_left_out} task-table rows of stand-in models left out"
            " (random weights); --include-standin exports them"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
