"""Evaluation of every field kind of a user's spec (labels/examples/products.yaml), with numbers
computed by hand: choice, ordinal (cannot_tell left out), multi-label, yes/no, integer, number."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.clip import store as clip_store
from core.labels.derive import build_label_sets, build_task
from core.labels.loader import load_spec
from core.quality.evaluation import _evaluate, evaluate, evaluate_changed
from core.quality.evaluation_store import current_results
from core.quality.fields import spec_fields
from core.quality.labelled import load_csv
from core.warehouse import Warehouse
from tests.fixtures.contracts import add_extraction

PRODUCTS = Path(__file__).resolve().parents[3] / "labels" / "examples" / "products.yaml"
SPEC = load_spec(PRODUCTS)
FIELDS = {field.name: field for field in spec_fields(SPEC)}
TASK = build_task(SPEC.task("product"))
LABEL_SETS = build_label_sets(SPEC)

# Four images: truth (CSV) and what the VLM answered.
TRUTH = [
    ("toy", "round|dark", "new", "yes", 1, 0.5),
    ("toy", "metallic", "used", "no", 2, 0.25),
    ("clothing", "dark|colourful", "broken", "no", 0, 1.0),
    ("cannot_tell", "round", "cannot_tell", "yes", 5, 0.0),
]
VLM = [
    ("toy", ["round", "dark"], "used", True, 1, 0.25),
    ("clothing", ["metallic", "round"], "worn", True, 4, 0.25),
    ("clothing", ["dark"], "cannot_tell", False, 0, 0.5),
    ("toy", ["round"], "new", False, 2, 0.0),
]


def exactly(value: Fraction) -> object:
    return pytest.approx(float(value), rel=1e-12, abs=0)


@pytest.fixture
def labelled(tmp_path, warehouse: Warehouse):
    lines = ["path,category,attributes,condition,packaged,item_count,fill"]
    for i, row in enumerate(TRUTH):
        Image.new("RGB", (8, 8), (i * 50, 20, 20)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png," + ",".join(str(v) for v in row))
    (tmp_path / "products.csv").write_text("\n".join(lines) + "\n")
    labelled = load_csv(tmp_path / "products.csv", fields=FIELDS)
    by_path = {Path(item.path).name: item.image_id for item in labelled.items}
    ordered = [by_path[f"{i}.png"] for i in range(len(TRUTH))]
    for iid, (category, attributes, condition, packaged, count, fill) in zip(
        ordered, VLM, strict=True
    ):
        add_extraction(
            warehouse,
            iid,
            TASK,
            "vlm-m",
            "ok",
            {
                "category": category,
                "attributes": attributes,
                "condition": condition,
                "packaged": packaged,
                "item_count": count,
                "fill": fill,
                "title": "a thing",
                "defects": [],
            },
        )
    # CLIP: per-value scores of `attributes` (top 2 decide) for images 0 and 1.
    label_set = LABEL_SETS["attributes"]  # metallic, dark, colourful, round
    scores = np.array([[0.1, 0.4, 0.1, 0.4], [0.5, 0.1, 0.3, 0.1]])
    with warehouse.transaction() as conn:
        clip_store.write_zero_shot(
            conn,
            ordered[:2],
            scores,
            labels=label_set.labels,
            model_id="clip-m",
            label_set="attributes",
            fingerprint=label_set.fingerprint,
            decided=[label_set.decide(row) for row in scores],
        )
    return labelled


def _by(report, field, source):
    (result,) = [r for r in report.results if r.field == field and r.source == source]
    return result


def test_every_kind_gets_its_metric(warehouse, labelled):
    report = evaluate(warehouse, labelled, run_id="r1", fields=FIELDS)
    category = _by(report, "category", "vlm")
    assert category.metrics["accuracy"] == exactly(Fraction(2, 4))
    assert category.confusion is not None and category.confusion.count("cannot_tell", "toy") == 1
    # ordinal: truth cannot_tell (image 3) left out; new->used adjacent, used->worn adjacent,
    # broken->cannot_tell off the scale: 2 of 3
    condition = _by(report, "condition", "vlm")
    assert condition.metrics["adjacent_accuracy"] == exactly(Fraction(2, 3))
    # multi-label: sets {round,dark}={round,dark}; {metallic} vs {metallic,round};
    # {dark,colourful} vs {dark}; {round}={round}
    attributes = _by(report, "attributes", "vlm")
    assert attributes.metrics["subset_accuracy"] == exactly(Fraction(2, 4))
    assert attributes.metrics["jaccard"] == exactly(
        Fraction(1 + Fraction(1, 2) + Fraction(1, 2) + 1, 4)
    )
    # tp: round 2, dark 2, metallic 1 = 5; fp: round 1; fn: colourful 1 -> 10 / 12
    assert attributes.metrics["micro_f1"] == exactly(Fraction(10, 12))
    per_value = {c.label: c for c in attributes.per_class}
    assert (per_value["round"].precision, per_value["round"].recall) == (2 / 3, 1.0)
    # macro over values present: metallic 1, dark 1, colourful 0, round 0.8
    assert attributes.metrics["macro_f1"] == exactly(Fraction(1 + 1 + 0, 4) + Fraction(8, 40))
    # yes/no: truth yes,no,no,yes; vlm yes,yes,no,no -> tp 1, fp 1, fn 1
    packaged = _by(report, "packaged", "vlm")
    assert packaged.metrics["f1"] == exactly(Fraction(1, 2))
    assert packaged.metrics["accuracy"] == exactly(Fraction(2, 4))
    assert _by(report, "item_count", "vlm").metrics["mae"] == exactly(Fraction(0 + 2 + 0 + 3, 4))
    assert _by(report, "fill", "vlm").metrics["mae"] == exactly(Fraction(1, 4) * Fraction(3, 4))
    # CLIP's decided sets (top 2): {dark, round} and {metallic, colourful}, two images covered
    clip = _by(report, "attributes", "clip_zero_shot")
    assert clip.n == 2 and clip.metrics["coverage"] == 0.5
    assert clip.metrics["subset_accuracy"] == exactly(Fraction(1, 2))
    assert clip.metrics["jaccard"] == exactly(Fraction(1 + Fraction(1, 2), 2))


def test_ordinal_adjacency_leaves_cannot_tell_out():
    condition = FIELDS["condition"]
    result = _evaluate(
        condition,
        "vlm",
        "m",
        "product",
        {"a": "broken", "b": "cannot_tell"},
        {"a": "cannot_tell", "b": "new"},
    )
    # before: the scale ended in cannot_tell, next to broken: 0.5
    assert result.metrics["adjacent_accuracy"] == 0.0


def test_every_kind_is_stored_and_a_second_run_evaluates_nothing(warehouse, labelled):
    first = evaluate_changed(warehouse, labelled, run_id="r1", fields=FIELDS)
    assert len(first.evaluated) == 7  # six VLM fields + CLIP on attributes
    table = current_results(warehouse, labelled.source)
    rows = {(r["field"], r["source"]): r for r in table.iter_rows(named=True)}
    assert rows[("item_count", "vlm")]["mae"] == 1.25
    assert rows[("attributes", "vlm")]["jaccard"] == 0.75
    assert rows[("packaged", "vlm")]["f1"] == 0.5
    second = evaluate_changed(warehouse, labelled, run_id="r2", fields=FIELDS)
    assert second.evaluated == [] and len(second.unchanged) == 7
