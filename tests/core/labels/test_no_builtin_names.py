"""No task or label name of the bundled spec is written into the pipeline's code: the built-in
tasks are defined only in `labels/default.yaml` (issue 18). The names are read from that file,
so this test follows the spec.

Every name is looked for as a whole word, except the few that are also words the code uses in
their ordinary sense (`COMMON_WORDS`: "confirmations from people", `action="store_true"`,
"vectors passing the filters"): those only where code would hard-code them, quoted as a string
(`"people"`, `'action'`) or in backticks.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
SPEC = REPO / "labels" / "default.yaml"
SCANNED = ("core", "assets", "orchestration", "resources", "sensors")
COMMON_WORDS = frozenset({"people", "action", "passing"})  # only quoted or backticked uses count


def spec_names() -> set[str]:
    """Every task, field, label set, value and consistency rule name of the bundled spec."""
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    names: set[str] = set()

    def fields(items: list[dict]) -> None:
        for field in items:
            names.add(field["name"])
            if field.get("labelled_as"):
                names.add(field["labelled_as"])
            for value in field.get("values") or []:
                names.add(str(next(iter(value)) if isinstance(value, dict) else value))
            fields(field.get("fields") or [])

    for task in spec["tasks"]:
        names.add(task["name"])
        fields(task["fields"])
    names.update(rule["name"] for rule in spec.get("consistency") or [])
    return names


def pattern(names: set[str]) -> re.Pattern[str]:
    words = sorted(names & COMMON_WORDS, key=len, reverse=True)
    others = sorted(names - COMMON_WORDS, key=len, reverse=True)
    anywhere = r"(?<![\w-])(?:" + "|".join(map(re.escape, others)) + r")(?![\w-])"
    quoted = r"""(?P<q>["'`])(?:""" + "|".join(map(re.escape, words)) + r")(?P=q)"
    return re.compile(f"{anywhere}|{quoted}")


def hits(roots: tuple[str, ...] = SCANNED) -> list[str]:
    found = pattern(spec_names())
    out = []
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for match in found.finditer(line):
                    out.append(f"{relative}:{number}: {match.group(0)}: {line.strip()}")
    return out


def test_the_names_come_from_the_bundled_spec():
    names = spec_names()
    assert {"scenery_people", "age_gender", "basketball_action"} <= names  # tasks
    assert {"night_time", "21-30", "people", "shirt_color"} <= names  # values, fields
    found = pattern(names)
    assert found.search('task = "age_gender"') and found.search("x = 'people'")
    assert found.search("-- e.g. 21-30") and not found.search("confirmations from people")
    assert not found.search('action="store_true"')


def test_no_builtin_task_or_label_name_in_the_pipeline_code():
    assert hits() == []
