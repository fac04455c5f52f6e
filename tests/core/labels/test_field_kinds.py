"""Every field kind of a user's spec: schema, grammar, prompt line, table column, validation."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from core.labels.__main__ import main
from core.labels.derive import (
    MAX_GRAMMAR_SUBSETS,
    build_label_sets,
    build_task,
    build_tasks,
    field_columns,
)
from core.labels.loader import parse_spec
from core.quality.fields import spec_fields
from core.tasks.base import TaskOutputError
from core.vlm.store import write_batch
from core.vlm.types import ExtractionResult, judge

REPO = Path(__file__).resolve().parents[3]

PRODUCTS = """\
tasks:
  - name: product
    goal: Describe the product in the photo.
    max_completion_tokens: 200
    fields:
      - name: category
        kind: choice
        cannot_tell: true
        values:
          - shoe: a photo of a shoe
          - bag: a photo of a bag
          - watch: a photo of a watch
      - name: size
        kind: choice
        ordinal: true
        optional: true
        values: [small, medium, large]
      - name: attributes
        kind: multi_choice
        min: 1
        max: 3
        values:
          - leather: leather
          - red: something red
          - new: a brand new item
          - worn: a worn, used item
        zero_shot: {top_k: 2}
      - name: boxed
        kind: yes_no
      - name: item_count
        kind: integer
        min: 0
        max: 20
      - name: fill
        kind: number
        min: 0
        max: 1
        optional: true
      - name: caption
        kind: text
        max_length: 40
      - name: defects
        kind: entities
        max: 4
        description: visible defects; [] if none
        fields:
          - name: defect
            kind: choice
            values: [scratch, stain, tear]
          - name: severity
            kind: integer
            min: 1
            max: 3
          - name: note
            kind: text
            max_length: 20
            optional: true
"""

GOOD = {
    "category": "cannot_tell",
    "size": None,
    "attributes": ["leather", "worn"],
    "boxed": False,
    "item_count": 2,
    "fill": 0.5,
    "caption": "a red bag, 2 straps",
    "defects": [{"defect": "tear", "severity": 3, "note": None}],
}


@pytest.fixture(scope="module")
def task():
    (task_spec,) = parse_spec(PRODUCTS, "products.yaml").tasks
    return build_task(task_spec)


def test_schema_per_kind(task):
    props = task.json_schema["properties"]
    assert props["category"]["enum"] == ["shoe", "bag", "watch", "cannot_tell"]
    assert props["size"]["anyOf"] == [
        {"enum": ["small", "medium", "large"], "type": "string"},
        {"type": "null"},
    ]
    assert props["attributes"]["items"]["enum"] == ["leather", "red", "new", "worn"]
    assert (props["attributes"]["minItems"], props["attributes"]["maxItems"]) == (1, 3)
    assert "uniqueItems" not in props["attributes"]  # the grammar would ignore it
    assert props["boxed"]["type"] == "boolean"
    assert (props["item_count"]["minimum"], props["item_count"]["maximum"]) == (0, 20)
    assert props["caption"]["pattern"] == '^[^\\x00-\\x1f\\x7f"\\\\]{0,40}$'
    assert props["defects"]["maxItems"] == 4
    assert task.json_schema["required"] == list(GOOD)


def test_prompt_line_per_kind(task):
    text = task.instruction
    assert '- category: one of "shoe", "bag", "watch", "cannot_tell"' in text
    assert '- size: one of "small", "medium", "large", or null' in text
    assert (
        '- attributes: a list of 1 to 3 distinct values from "leather", "red", "new", "worn", '
        "in the order listed" in text
    )
    assert "- boxed: true or false" in text
    assert "- item_count: integer from 0 to 20" in text
    assert "- fill: number from 0.0 to 1.0, or null" in text
    assert (
        "- defects: a list of at most 4 objects (visible defects; [] if none), each with:" in text
    )
    assert "  - severity: integer from 1 to 3" in text


def test_columns_per_kind(task):
    assert task.tables.columns == (
        ("category", "VARCHAR"),
        ("size", "VARCHAR"),
        ("attributes", "VARCHAR[]"),
        ("boxed", "BOOLEAN"),
        ("item_count", "BIGINT"),
        ("fill", "DOUBLE"),
        ("caption", "VARCHAR"),
    )
    (child,) = task.tables.children
    assert child.table == "task_product__defects"
    found = [
        (c.table, c.column, c.duck_type, c.field.kind, c.entities) for c in field_columns(task)
    ]
    assert found[2] == ("task_product", "attributes", "VARCHAR[]", "multi_choice", None)
    assert found[-1] == ("task_product__defects", "note", "VARCHAR", "text", "defects")
    assert len(found) == 10
    assert child.columns == (("defect", "VARCHAR"), ("severity", "BIGINT"), ("note", "VARCHAR"))


def test_the_grammar_enforces_ranges_enums_bounds_text_and_distinctness(task):
    grammar = _compact_grammar(task.schema_json)

    def accepts(answer: dict) -> bool:
        return _is_grammar_accept_string(grammar, json.dumps(answer, separators=(",", ":")))

    assert accepts(GOOD)
    assert not accepts(GOOD | {"item_count": 21})
    assert not accepts(GOOD | {"category": "hat"})
    assert not accepts(GOOD | {"attributes": []})
    assert not accepts(GOOD | {"caption": "line\nbreak"})
    assert not accepts(GOOD | {"caption": "x" * 41})
    assert not accepts(GOOD | {"caption": 'a "quoted" word'})  # no escapes to get wrong
    # The field's schema lists every allowed set: a repeated value cannot be produced.
    assert not accepts(GOOD | {"attributes": ["red", "red"]})


def _compact_grammar(schema_json: str) -> xgrammar.Grammar:
    """As the SGLang client and the in-process backend compile it (`compact_ebnf`)."""
    return xgrammar.Grammar.from_json_schema(
        schema_json, any_whitespace=False, separators=(",", ":"), strict_mode=True
    )


def _multi_choice_task(values: list[str], low: int, high: int):
    (task_spec,) = parse_spec(_multi_choice_spec(values, low, high), "shop.yaml").tasks
    return build_task(task_spec)


def _multi_choice_spec(values: list[str], low: int, high: int) -> str:
    return f"""\
tasks:
  - name: shop
    goal: Tag the photo.
    fields:
      - name: tags
        kind: multi_choice
        min: {low}
        max: {high}
        values: [{", ".join(values)}]
"""


def _sequences(values: list[str], longest: int):
    """Every list of the values up to `longest` items, repeats and any order included."""
    for size in range(longest + 1):
        yield from itertools.product(values, repeat=size)


@pytest.mark.parametrize(("low", "high"), [(1, 3), (0, 2), (2, 4)])
def test_the_grammar_produces_exactly_the_distinct_sets_in_order_within_bounds(low, high):
    values = ["leather", "red", "new", "worn"]
    task = _multi_choice_task(values, low, high)
    grammar = _compact_grammar(task.schema_json)
    order = {v: i for i, v in enumerate(values)}
    accepted = []
    for seq in _sequences(values, high + 1):
        valid = (
            low <= len(seq) <= high
            and len(set(seq)) == len(seq)
            and list(seq) == sorted(seq, key=order.__getitem__)
        )
        answer = json.dumps({"tags": list(seq)}, separators=(",", ":"))
        assert _is_grammar_accept_string(grammar, answer) == valid, answer
        if valid:
            accepted.append(seq)
            assert task.parse(answer).model_dump()["tags"] == list(seq)
    assert len(accepted) == sum(math.comb(4, k) for k in range(low, high + 1))
    # What the grammar lets through, validation accepts; the prompt names values, not sets.
    line = next(x for x in task.instruction.splitlines() if x.startswith("- tags"))
    assert line == (
        f'- tags: a list of {low} to {high} distinct values from "leather", "red", "new", '
        '"worn", in the order listed'
    )


def test_above_the_limit_the_grammar_bounds_the_count_and_validation_refuses_repeats(
    caplog, capsys, tmp_path
):
    values = [f"v{i}" for i in range(MAX_GRAMMAR_SUBSETS.bit_length())]  # 2**9 = 512 sets
    with caplog.at_level("WARNING", logger="core.labels.derive"):
        task = _multi_choice_task(values, 0, len(values))
    assert "validation only" in caplog.text
    prop = task.json_schema["properties"]["tags"]
    assert "enum" not in prop and prop["items"]["enum"] == values
    grammar = _compact_grammar(task.schema_json)
    repeated = '{"tags":["v1","v1"]}'
    assert _is_grammar_accept_string(grammar, repeated)  # the grammar lets it through ...
    assert judge(task, repeated, "stop", 200).status == "invalid"  # ... validation does not
    assert "in the order listed" not in task.instruction
    spec = tmp_path / "shop.yaml"
    spec.write_text(_multi_choice_spec(values, 0, len(values)))
    assert main([str(spec)]) == 0  # `make validate` says so (a warning, not an error)
    assert "tags: multi_choice [v0, v1" in (out := capsys.readouterr().out)
    assert "0 to 9: 512 sets, over 256: distinct by validation only" in out
    spec.write_text(_multi_choice_spec(values[:4], 1, 3))
    assert main([str(spec)]) == 0
    assert "1 to 3: 14 sets, distinct by the grammar" in capsys.readouterr().out


def test_a_repeated_value_is_an_invalid_result_never_stored(task, warehouse):
    repeated = judge(task, json.dumps(GOOD | {"attributes": ["red", "red"]}), "stop", 200)
    assert repeated.status == "invalid"
    assert "repeated value 'red'" in (repeated.error or "")
    # Out of order passes validation (where the grammar does not list the sets) and is stored
    # in the spec's order.
    ok = judge(task, json.dumps(GOOD | {"attributes": ["worn", "leather"]}), "stop", 200)
    assert ok.status == "ok"
    assert ok.parsed["attributes"] == ["leather", "worn"]
    with pytest.raises(TaskOutputError, match="item_count"):
        task.parse(json.dumps(GOOD | {"item_count": 99}))
    write_batch(
        warehouse,
        task,
        "m",
        "drop",
        [
            ExtractionResult(image_id="a", status="ok", parsed=ok.parsed, raw_text="{}"),
            ExtractionResult(
                image_id="b", status=repeated.status, error=repeated.error, raw_text="{}"
            ),
        ],
    )
    with warehouse.reader() as conn:
        rows = conn.execute(
            "SELECT image_id, attributes, boxed, item_count, fill, category FROM task_product"
        ).fetchall()
        children = conn.execute(
            "SELECT idx, defect, severity FROM task_product__defects"
        ).fetchall()
    assert rows == [("a", ["leather", "worn"], False, 2, 0.5, "cannot_tell")]
    assert children == [(0, "tear", 3)]


def test_label_sets_and_labelled_fields_per_kind():
    spec = parse_spec(PRODUCTS, "products.yaml")
    sets = build_label_sets(spec)
    assert list(sets) == ["category", "attributes"]
    assert sets["category"].labels == ("shoe", "bag", "watch")  # no phrase for cannot_tell
    assert sets["attributes"].multi_label and sets["attributes"].top_k == 2
    fields = {f.name: f for f in spec_fields(spec)}
    assert {name: f.kind for name, f in fields.items()} == {
        "category": "choice",
        "size": "choice",
        "attributes": "multi_choice",
        "boxed": "yes_no",
        "item_count": "integer",
        "fill": "number",
    }
    assert fields["category"].cannot_tell == "cannot_tell" and fields["category"].agreement
    assert fields["size"].ordinal and fields["size"].zero_shot_label_set is None
    assert (fields["attributes"].min_items, fields["attributes"].max_items) == (1, 3)
    assert (fields["item_count"].minimum, fields["item_count"].maximum) == (0, 20)


def test_json_is_accepted_too():
    spec = parse_spec(PRODUCTS, "products.yaml")
    as_json = json.dumps(spec.model_dump(mode="json", exclude_defaults=True))
    # phrases travel inline in `values`; rebuild them that way
    data = json.loads(as_json)
    for field in data["tasks"][0]["fields"]:
        source = spec.tasks[0].field(field["name"])
        if getattr(source, "phrases", None):
            field["values"] = [{v: source.phrases[v]} for v in source.values]
    again = build_tasks(parse_spec(json.dumps(data), "products.json"))
    assert again["product"].fingerprint == build_task(spec.tasks[0]).fingerprint


def test_the_pipeline_reads_the_spec_named_by_the_environment(tmp_path):
    """A fresh interpreter, as a code location loads: the registry holds the user's tasks."""
    path = tmp_path / "products.yaml"
    path.write_text(PRODUCTS)
    # (core.quality.fields is left out: it imports open_clip, 20 s on a busy machine; it reads
    # the same `current_spec()`.)
    code = (
        "from core.tasks.registry import TASKS; from core.tasks.label_sets import LABEL_SETS;"
        "print(list(TASKS), list(LABEL_SETS))"
    )
    env = {"IMAGE_PIPELINE_LABELS": str(path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['product'] ['category', 'attributes']"


def test_the_documented_example_is_a_valid_spec_with_every_kind():
    text = (REPO / "docs" / "labels.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(example, "docs/labels.md")
    kinds = {field.kind for task in spec.tasks for field in task.fields}
    assert kinds == {"choice", "multi_choice", "yes_no", "integer", "number", "text", "entities"}
    assert build_tasks(spec)["product"].tables.children[0].table == "task_product__defects"


@pytest.mark.parametrize("keyword", ["uniqueItems", "multipleOf", "format"])
def test_a_task_schema_the_grammar_cannot_enforce_is_refused(keyword):
    """The last guard, below the spec: a schema keyword xgrammar accepts and then violates."""
    from pydantic import Field

    from core.tasks.base import Task, TaskModel

    class Tags(TaskModel):
        tags: list[Literal["a", "b"]] = Field(max_length=2, json_schema_extra={keyword: 2})

    with pytest.raises(TypeError, match=f"cannot enforce `{keyword}`"):
        Task(name="tags", goal="g", model=Tags)
