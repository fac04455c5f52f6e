"""Model guards on extractions: checks that catch what a model gets wrong although every row is
valid under the task's schema (which the writer and pydantic already guarantee).

- `extraction_constant_answers`: the model gave one answer for a field on every image of a drop
  large enough that one answer is unlikely (a stuck or collapsed model, a prompt it ignores).
- `extraction_refusals`: free-text fields holding a refusal or a non-answer ("unknown", "none",
  "sorry", empty), and failed results (`invalid`, `truncated`, ...) whose raw JSON holds one as a
  string value (`"caption":"i cannot tell`) or whose raw text is prose that opens like one.
- `extraction_<rule>_consistency`: one per `consistency:` rule of the labeling spec (none when
  it declares none): a task answered on an image where another task's entity list is empty, so
  one of the two answers is wrong.

All are WARN and not blocking: they ask for a look, they do not stop the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from core.labels.loader import current_spec
from core.labels.spec import ConsistencyRule
from core.quality.outcome import (
    SAMPLE_ROWS,
    CheckOutcome,
    drop_image_count,
    ident,
    missing_table,
    no_images,
    records,
    scalar,
    share,
    too_few,
)
from core.tasks.base import Task
from core.vlm.checks import ExtractionScope, task_constraints
from core.warehouse import Warehouse
from core.warehouse.queries import DROP_IMAGES, table_exists

EXTRACTION_CONSTANT_ANSWERS = "extraction_constant_answers"
EXTRACTION_REFUSALS = "extraction_refusals"

DEFAULT_MIN_IMAGES = 10  # fewer images of a drop can share one answer by chance
# Whole answers that say "no answer" (lower case, trimmed).
NON_ANSWERS = (
    "",
    "unknown",
    "none",
    "n/a",
    "na",
    "null",
    "not sure",
    "unsure",
    "unclear",
    "not visible",
    "cannot tell",
    "can't tell",
    "sorry",
)
# A refusal's opening words (a regular expression on the lower-cased text).
_REFUSAL_WORDS = r"i'?m sorry|i am sorry|sorry|i cannot|i can'?t|i am unable|i'?m unable|as an ai"
REFUSAL = rf"^\s*({_REFUSAL_WORDS})"
# Where a refusal can show in a failed result's raw text. Constrained decoding writes only the
# task's JSON (possibly cut short), never prose, so a refusal is a string value that opens like
# one, or a whole non-answer value (`"caption":"unknown"`); prose from a server that
# ignored the grammar still opens the text.
RAW_REFUSAL = (
    rf'(^\s*|"\s*)({_REFUSAL_WORDS})'
    + r'|:"\s*('
    + "|".join(re.escape(word) for word in NON_ANSWERS if word)
    + r')?\s*"'
)


def _column_types(task: Task) -> list[tuple[tuple[str, str], str]]:
    """((table, column), SQL type) of every answer the task's tables hold, parent first."""
    tables = task.tables
    pairs = [((tables.table, column), kind) for column, kind in tables.columns]
    for child in tables.children:
        pairs += [((child.table, column), kind) for column, kind in child.columns]
    return pairs


def _answer_columns(task: Task) -> list[tuple[str, str]]:
    return [pair for pair, _ in _column_types(task)]


def constant_answers(
    warehouse: Warehouse,
    drop_id: str,
    scope: ExtractionScope,
    task: Task,
    *,
    min_images: int = DEFAULT_MIN_IMAGES,
) -> CheckOutcome:
    """Fields whose every answer in the drop is the same, when at least `min_images` images of
    the drop have an answer for that field."""
    params = scope.params(drop_id)
    offending: list[dict] = []
    checked = most = 0
    with warehouse.reader() as conn:
        for table, column in _answer_columns(task):
            if not table_exists(conn, table):
                return missing_table(
                    conn,
                    drop_id,
                    EXTRACTION_CONSTANT_ANSWERS,
                    table,
                    "WARN",
                    subject=f"{scope.task}/{scope.model_id}",
                )
            (images, distinct, value) = records(
                conn,
                f"""
                SELECT count(DISTINCT t.image_id) AS images,
                       count(DISTINCT CAST(t.{ident(column)} AS VARCHAR)) AS distinct_values,
                       min(CAST(t.{ident(column)} AS VARCHAR)) AS value
                FROM {ident(table)} t JOIN ({DROP_IMAGES}) d USING (image_id)
                WHERE {scope.where("t")} AND t.{ident(column)} IS NOT NULL
                """,
                params,
            )[0].values()
            most = max(most, images)
            if images < min_images:
                continue
            checked += 1
            if distinct == 1:
                offending.append(
                    {"table": table, "column": column, "value": value, "images": images}
                )
    subject = f"{scope.task}/{scope.model_id}"
    if not checked:
        return too_few(
            EXTRACTION_CONSTANT_ANSWERS,
            have=most,
            need=min_images,
            subject=subject,
            threshold=0.0,
            counts={"fields_checked": 0, "constant_fields": 0},
        )
    if offending:
        fields = ", ".join(f"{row['column']}={row['value']!r}" for row in offending)
        summary = f"{subject}: the same answer on every image for {fields}"
    else:
        summary = f"{subject}: {checked} fields vary across the drop's images"
    return CheckOutcome(
        check_name=EXTRACTION_CONSTANT_ANSWERS,
        passed=not offending,
        severity="WARN",
        summary=summary,
        value=float(len(offending)),
        threshold=0.0,
        counts={"fields_checked": checked, "constant_fields": len(offending)},
        offending=offending[:SAMPLE_ROWS],
        details={"settings": {"min_images": min_images}},
    )


def refusals(
    warehouse: Warehouse, drop_id: str, scope: ExtractionScope, task: Task
) -> CheckOutcome:
    """Free-text answers (columns without an enum) that are refusals or non-answers, and the
    latest failed result per image whose raw text holds a refusal (`RAW_REFUSAL`): a typed table
    has no row for a failed result, so its raw JSON is the only place its answer shows."""
    params = {
        **scope.params(drop_id),
        "non_answers": list(NON_ANSWERS),
        "refusal": REFUSAL,
        "raw_refusal": RAW_REFUSAL,
    }
    enums = task_constraints(task.name, task.model).enums
    text_columns = [
        (table, column)
        for (table, column), kind in _column_types(task)
        if kind == "VARCHAR" and column not in enums.get(table, {})
    ]
    offending: list[dict] = []
    answers = 0
    with warehouse.reader() as conn:
        for table, column in text_columns:
            if not table_exists(conn, table):
                return missing_table(
                    conn,
                    drop_id,
                    EXTRACTION_REFUSALS,
                    table,
                    "WARN",
                    subject=f"{scope.task}/{scope.model_id}",
                )
            col = f"t.{ident(column)}"
            answers += scalar(
                conn,
                f"SELECT count(*) FROM {ident(table)} t JOIN ({DROP_IMAGES}) d USING (image_id)"
                f" WHERE {scope.where('t')} AND {col} IS NOT NULL",
                params,
            )
            offending += records(
                conn,
                f"""
                SELECT '{table}' AS "table", '{column}' AS "column", t.image_id,
                       {col} AS value
                FROM {ident(table)} t JOIN ({DROP_IMAGES}) d USING (image_id)
                WHERE {scope.where("t")} AND {col} IS NOT NULL
                  AND (list_contains($non_answers, lower(trim({col})))
                       OR regexp_matches(lower({col}), $refusal))
                ORDER BY t.image_id
                """,
                params,
            )
        failed_refusals = []
        if table_exists(conn, "vlm_extractions"):
            failed_refusals = records(
                conn,
                f"""
                SELECT 'vlm_extractions' AS "table", 'raw_text' AS "column", image_id,
                       left(raw_text, 200) AS value
                FROM (
                    SELECT x.image_id, arg_max(x.status, x.created_at) AS status,
                           arg_max(x.raw_text, x.created_at) AS raw_text
                    FROM vlm_extractions x JOIN ({DROP_IMAGES}) d USING (image_id)
                    WHERE x.task = $task AND {scope.where("x")} GROUP BY x.image_id
                )
                WHERE status <> 'ok'
                  AND regexp_matches(lower(coalesce(raw_text, '')), $raw_refusal)
                ORDER BY image_id
                """,
                params,
            )
    offending += failed_refusals
    return CheckOutcome(
        check_name=EXTRACTION_REFUSALS,
        passed=not offending,
        severity="WARN",
        summary=f"{scope.task}/{scope.model_id}: {len(offending)} refusals or non-answers"
        f" ({len(failed_refusals)} in failed results, {answers} free-text answers checked)",
        value=float(len(offending)),
        threshold=0.0,
        counts={
            "text_answers": int(answers),
            "non_answers": len(offending) - len(failed_refusals),
            "refused_results": len(failed_refusals),
        },
        offending=offending[:SAMPLE_ROWS],
    )


def consistency_check_name(rule: ConsistencyRule) -> str:
    """The check name of a spec consistency rule (`extraction_<rule>_consistency`)."""
    return f"extraction_{rule.name}_consistency"


def consistency_check_names(rules: Sequence[ConsistencyRule] | None = None) -> list[str]:
    """The check names of the rules (default: the current spec's), in spec order."""
    rules = current_spec().consistency if rules is None else rules
    return [consistency_check_name(rule) for rule in rules]


def consistency(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    rule: ConsistencyRule,
    answered: Task,
    listing: Task,
    *,
    min_images: int = DEFAULT_MIN_IMAGES,
) -> CheckOutcome:
    """Share of images where `answered` (the rule's `when_answered` task) gave a valid answer
    while `listing` answered with an empty entity list (`expect_entities`): warn above the
    rule's `max_share`, judged only on `min_images` or more images compared (a share of one
    image is no evidence)."""
    name = consistency_check_name(rule)
    entities = rule.expect_entities.split(".", 1)[1]
    parent = listing.tables.table
    child = f"{parent}__{entities}"
    params = {
        "drop": drop_id,
        "model": model_id,
        "answered": answered.name,
        "answered_fp": answered.fingerprint,
        "listing_fp": listing.fingerprint,
    }
    with warehouse.reader() as conn:
        for table in ("vlm_extractions", parent, child):
            if not table_exists(conn, table):
                return missing_table(conn, drop_id, name, table, "WARN", subject=model_id)
        compared = records(
            conn,
            f"""
            WITH answered AS (
                SELECT x.image_id FROM vlm_extractions x JOIN ({DROP_IMAGES}) d USING (image_id)
                WHERE x.task = $answered AND x.model_id = $model
                    AND x.task_fingerprint = $answered_fp
                GROUP BY x.image_id HAVING arg_max(x.status, x.created_at) = 'ok'
            ),
            listed AS (
                SELECT p.image_id, count(c.idx) AS listed
                FROM {ident(parent)} p JOIN ({DROP_IMAGES}) d USING (image_id)
                LEFT JOIN {ident(child)} c ON c.image_id = p.image_id
                    AND c.model_id = p.model_id AND c.task_fingerprint = p.task_fingerprint
                WHERE p.model_id = $model AND p.task_fingerprint = $listing_fp
                GROUP BY p.image_id
            )
            SELECT l.image_id, l.listed FROM listed l JOIN answered USING (image_id)
            ORDER BY l.image_id
            """,
            params,
        )
    empty = [
        {"image_id": row["image_id"], "listed": 0, "answered": True}
        for row in compared
        if row["listed"] == 0
    ]
    rate = share(len(empty), len(compared))
    subject = f"{answered.name} vs {rule.expect_entities}/{model_id}"
    counts = {"images_compared": len(compared), "answered_but_none_listed": len(empty)}
    if len(compared) < min_images:
        return too_few(
            name,
            have=len(compared),
            need=min_images,
            subject=subject,
            threshold=rule.max_share,
            counts=counts,
        )
    return CheckOutcome(
        check_name=name,
        passed=rate is None or rate <= rule.max_share,
        severity="WARN",
        summary=f"{subject}: {answered.name} answered but {rule.expect_entities} empty on"
        f" {len(empty)} of {len(compared)} images"
        + (f" ({rate:.0%}; warn above {rule.max_share:.0%})" if rate is not None else ""),
        value=rate,
        threshold=rule.max_share,
        counts=counts,
        offending=empty[:SAMPLE_ROWS],
    )


def guard_checks(
    warehouse: Warehouse,
    drop_id: str,
    model_id: str,
    tasks: Sequence[Task],
    *,
    min_images: int = DEFAULT_MIN_IMAGES,
    rules: Sequence[ConsistencyRule] | None = None,
) -> dict[str, list[CheckOutcome]]:
    """The model guards of every task (per task name), and one check per consistency rule
    (default: the current spec's) under its `when_answered` task; fold with `merge_outcomes`."""
    rules = current_spec().consistency if rules is None else rules
    out: dict[str, list[CheckOutcome]] = {}
    with warehouse.reader() as conn:
        images = drop_image_count(conn, drop_id)
    if not images:  # every file was rejected: no image was sent, no task table need exist
        for task in tasks:
            subject = f"{task.name}/{model_id}"
            out[task.name] = [
                no_images(EXTRACTION_CONSTANT_ANSWERS, "WARN", subject=subject),
                no_images(EXTRACTION_REFUSALS, "WARN", subject=subject),
            ]
        for rule in rules:
            target = rule.when_answered if rule.when_answered in out else next(iter(out), "tasks")
            out.setdefault(target, []).append(
                no_images(consistency_check_name(rule), "WARN", subject=model_id)
            )
        return out
    for task in tasks:
        scope = ExtractionScope(
            task=task.name, model_id=model_id, task_fingerprint=task.fingerprint
        )
        out[task.name] = [
            constant_answers(warehouse, drop_id, scope, task, min_images=min_images),
            refusals(warehouse, drop_id, scope, task),
        ]
    by_name = {task.name: task for task in tasks}
    for rule in rules:
        listing = rule.expect_entities.split(".", 1)[0]
        if rule.when_answered in by_name and listing in by_name:
            out.setdefault(rule.when_answered, []).append(
                consistency(
                    warehouse,
                    drop_id,
                    model_id,
                    rule,
                    by_name[rule.when_answered],
                    by_name[listing],
                    min_images=min_images,
                )
            )
        else:
            out.setdefault(next(iter(out), "tasks"), []).append(
                CheckOutcome(
                    check_name=consistency_check_name(rule),
                    passed=True,
                    severity="WARN",
                    summary=f"needs both {rule.when_answered} and {listing} in the run:"
                    " nothing compared",
                )
            )
    return out
