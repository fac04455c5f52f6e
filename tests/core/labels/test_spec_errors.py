"""A spec with mistakes: one error per problem, all at once, each naming file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.labels.loader import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[3]

BASE = """\
tasks:
  - name: shop
    goal: Describe the product.
    fields:
      - name: category
        kind: choice
        values: [shoe, bag]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "spec.yaml")
    error = caught.value
    lines = str(error).splitlines()
    assert len(lines) == len(error.problems) + 1  # a header, then one line per problem
    return lines[1:]


def one(text: str) -> str:
    (problem,) = problems(text)
    return problem


def test_an_empty_spec_or_task_is_an_error():
    assert "needs at least one task" in one("tasks: []\n")
    no_fields = BASE.split("      - name: category")[0].replace("    fields:\n", "    fields: []\n")
    assert "needs at least one field" in one(no_fields)
    assert "a mapping with `tasks:`" in one("- just a list\n")


def test_a_valid_spec_passes():
    assert parse_spec(BASE, "spec.yaml").tasks[0].name == "shop"


@pytest.mark.parametrize(
    ("extra", "line", "where", "message"),
    [
        ("        colour: red\n", 8, "task shop, field category", "unknown key 'colour'"),
        ("        valeus: [x]\n", 8, "field category", "did you mean 'values'?"),
        ("        enum: [x, y]\n", 8, "field category", "not a JSON schema: use `values`"),
        ("        uniqueItems: true\n", 8, "field category", "cannot enforce `uniqueItems`"),
        ("        multipleOf: 2\n", 8, "field category", "cannot enforce `multipleOf`"),
        (
            "      - name: Price\n        kind: integer\n        min: 0\n        max: 9\n",
            8,
            "task shop",
            "'Price' is not a safe SQL name",
        ),
        ("      - name: select\n        kind: yes_no\n", 8, "task shop", "reserved SQL word"),
        ("      - name: image_id\n        kind: yes_no\n", 8, "task shop", "key column"),
        ("      - name: category\n        kind: yes_no\n", 8, "task shop", "duplicate field name"),
        (
            "      - name: colour\n        kind: choice\n        values: [Dark Blue, dark_blue]\n",
            8,
            "field colour",
            "'Dark Blue' and 'dark_blue' collide",
        ),
        ("      - name: note\n        kind: text\n", 8, "field note", "needs `max_length`"),
        (
            "      - name: note\n        kind: text\n        pattern: '^[a-z]*$'\n",
            8,
            "field note",
            "unbounded quantifier",
        ),
        (
            "      - name: note\n        kind: text\n        pattern: '^.{0,9}$'\n",
            8,
            "field note",
            "may match control characters",
        ),
        (
            "      - name: tags\n        kind: multi_choice\n        values: [a, b]\n",
            8,
            "field tags",
            "missing required key 'max'",
        ),
        (
            "      - name: items\n        kind: entities\n        fields:\n"
            "          - {name: n, kind: yes_no}\n",
            8,
            "field items",
            "missing required key 'max'",
        ),
        (
            "      - name: count\n        kind: integer\n        min: 0\n",
            8,
            "field count",
            "missing required key 'max'",
        ),
        ("      - name: shade\n        kind: colour\n", 8, "field shade", "unknown kind"),
        ("        zero_shot: {agreement: false}\n", 5, "field category", "needs a CLIP phrase"),
        (
            "      - name: look\n        kind: choice\n        values: [{a: an a}, {b: a b}]\n"
            "        zero_shot: {threshold: 0.5}\n",
            11,
            "field look",
            "multi_choice decision rule",
        ),
        (
            "      - name: items\n        kind: entities\n        max: 2\n        fields:\n"
            "          - {name: n, kind: choice, values: [{a: an a}, {b: a b}]}\n",
            8,
            "field items",
            "are for top-level fields",
        ),
        (
            "      - name: ok\n        kind: choice\n        values: [yes, no]\n",
            8,
            "field ok",
            "quote the value",
        ),
        (
            "      - name: ok\n        kind: choice\n        values:\n          - yes: a yes\n"
            "          - maybe: a maybe\n",
            8,
            "field ok",
            "quote the value",
        ),
        (
            "      - name: look\n        kind: choice\n        values:\n          - a: an a\n"
            "          - b\n",
            8,
            "field look",
            "have no CLIP phrase",
        ),
        (
            "      - name: tags\n        kind: multi_choice\n        max: 3\n        values: [a, b]\n",
            8,
            "field tags",
            "max (3) exceeds the 2 values",
        ),
        (
            "      - name: items\n        kind: entities\n        max: 2\n        fields:\n"
            "          - {name: n, kind: entities, max: 1, fields: [{name: m, kind: yes_no}]}\n",
            12,
            "field items.n",
            "scalar kinds",
        ),
    ],
)
def test_each_mistake_is_one_error_naming_file_line_and_field(extra, line, where, message):
    problem = one(BASE + extra)
    assert problem.startswith(f"spec.yaml:{line}:")
    assert where in problem
    assert message in problem


def test_duplicate_task_names_and_keys():
    text = BASE + BASE.removeprefix("tasks:\n") + "tasks: []\n"
    found = problems(text)
    assert any("spec.yaml:8:" in p and "duplicate task name 'shop'" in p for p in found)
    assert any("spec.yaml:14:" in p and "duplicate key 'tasks'" in p for p in found)
    assert len(found) == 2, found


def test_labelled_names_collide_across_tasks():
    text = BASE + BASE.removeprefix("tasks:\n").replace("name: shop", "name: shelf")
    problem = one(text)
    assert "spec.yaml:11:" in problem and "task shelf, field category" in problem
    assert "already declared at line 5" in problem and "labelled_as" in problem


def test_consistency_rules_name_existing_tasks_and_lists():
    text = (
        BASE + "consistency:\n  - {name: r, when_answered: nope, expect_entities: shop.category}\n"
    )
    found = problems(text)
    assert len(found) == 2
    assert all(p.startswith("spec.yaml:9:") and "consistency rule r" in p for p in found)
    assert "no task 'nope'" in found[0] + found[1]
    assert "'shop.category' is not an entities field" in found[0] + found[1]


def test_every_problem_is_reported_at_once():
    text = BASE.replace("values: [shoe, bag]", "values: [shoe, Shoe]\n        colour: x") + (
        "  - name: Two\n    goal: g\n    fields:\n      - name: n\n        kind: text\n"
    )
    found = problems(text)
    assert len(found) == 4, found
    assert [p.split(":")[1] for p in found] == ["5", "8", "9", "12"]


def test_yaml_syntax_errors_have_a_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "      - name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.yaml:9:\d+: not valid YAML"):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_a_bad_spec_fails_the_import_with_the_same_message(tmp_path):
    """What a code location does on load: importing the registry raises the spec's errors."""
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "        colour: red\n")
    out = subprocess.run(
        [sys.executable, "-c", "import core.tasks.registry"],
        cwd=REPO,
        env={"IMAGE_PIPELINE_LABELS": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "SpecError" in out.stderr
    assert f"{path}:8:9: task shop, field category: unknown key 'colour'" in out.stderr


def test_make_validate_prints_the_spec_or_every_problem(tmp_path, capsys):
    from core.labels.__main__ import main

    assert main([str(REPO / "labels" / "default.yaml")]) == 0
    assert "task_scenery_people" in capsys.readouterr().out
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "        colour: red\n      - {name: n, kind: text}\n")
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "(2 problems)" in err and f"{path}:8:9:" in err and f"{path}:9:9:" in err
