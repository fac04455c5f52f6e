"""Evaluation reproduces hand-computed numbers for CLIP zero-shot, kNN and the VLM, side by side."""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction

import pytest
from PIL import Image

from core.quality.evaluation import STANDIN_NOTE, evaluate, write_evaluations
from core.quality.labelled import load_folder
from core.warehouse import Warehouse
from tests.fixtures.contracts import add_extraction, add_zero_shot

TRUTH = ["21-30", "21-30", "31-40", "51-60", "18-20"]
VLM_PRED = ["21-30", "31-40", "51-60", "41-50", "31-40"]
# CLIP probabilities for images 0-3 (image 4 has none): top labels 21-30, 18-20, 51-60, 51-60;
# the truth ranks 1, 2, 3, 1.
CLIP_PROBS = [
    {"21-30": 0.5, "31-40": 0.3, "18-20": 0.1, "41-50": 0.06, "51-60": 0.04},
    {"18-20": 0.4, "21-30": 0.35, "31-40": 0.1, "41-50": 0.1, "51-60": 0.05},
    {"51-60": 0.5, "41-50": 0.2, "31-40": 0.15, "21-30": 0.1, "18-20": 0.05},
    {"51-60": 0.9, "41-50": 0.04, "31-40": 0.03, "21-30": 0.02, "18-20": 0.01},
]


def exactly(value: Fraction) -> object:
    return pytest.approx(float(value), rel=1e-12, abs=0)


@pytest.fixture
def labelled_ages(tmp_path, warehouse: Warehouse):
    root = tmp_path / "labelled"
    for i, label in enumerate(TRUTH):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(root / label / f"{i}.png")
    labelled = load_folder(root)
    ids = {item.path.rsplit("/", 1)[1]: item.image_id for item in labelled.items}
    ordered = [ids[f"{i}.png"] for i in range(len(TRUTH))]
    for iid, probabilities in zip(ordered, CLIP_PROBS, strict=False):
        add_zero_shot(warehouse, iid, "standin-clip", "age_group", probabilities)
    for iid, value in zip(ordered, VLM_PRED, strict=True):
        add_extraction(
            warehouse,
            iid,
            "age_gender",
            "llava-real",
            "ok",
            {"age_group": value, "gender": "female"},
        )
    return labelled


def test_vlm_metrics_match_the_hand_computation(warehouse, labelled_ages):
    report = evaluate(warehouse, labelled_ages, run_id="r1")
    (vlm,) = [r for r in report.results if r.source == "vlm"]
    assert (vlm.model_id, vlm.task, vlm.n, vlm.n_labelled) == ("llava-real", "age_gender", 5, 5)
    assert vlm.metrics["accuracy"] == exactly(Fraction(1, 5))
    assert vlm.metrics["adjacent_accuracy"] == exactly(Fraction(3, 5))
    # F1 per observed class: 21-30 -> 2/3, the four others 0: macro 2/15
    assert vlm.metrics["macro_f1"] == exactly(Fraction(2, 15))
    assert vlm.confusion is not None and vlm.confusion.count("51-60", "41-50") == 1


def test_clip_zero_shot_and_knn_metrics_match_the_hand_computation(warehouse, labelled_ages):
    report = evaluate(warehouse, labelled_ages, run_id="r1")
    by_source = {r.source: r for r in report.results if r.model_id == "standin-clip"}
    clip, knn = by_source["clip_zero_shot"], by_source["knn"]
    assert clip.n == 4 and clip.metrics["coverage"] == exactly(Fraction(4, 5))
    assert clip.metrics["accuracy"] == exactly(Fraction(2, 4))
    assert clip.metrics["adjacent_accuracy"] == exactly(Fraction(3, 4))
    assert knn.metrics["top1_accuracy"] == exactly(Fraction(2, 4))
    assert knn.metrics["top5_accuracy"] == 1.0


def test_side_by_side_table_and_stand_in_banner(warehouse, labelled_ages):
    report = evaluate(warehouse, labelled_ages, run_id="r1")
    table = report.side_by_side()
    assert table.select("source", "model_id").rows() == [
        ("clip_zero_shot", "standin-clip"),
        ("vlm", "llava-real"),
        ("knn", "standin-clip"),
    ]
    assert table.filter(source="vlm")["adjacent_accuracy"][0] == exactly(Fraction(3, 5))
    assert report.standin_models == ["standin-clip"]
    assert report.banner is not None and "meaningless" in report.banner
    assert report.markdown().startswith("**!!! standin-clip")


def test_evaluations_are_stored_per_run_model_task_and_metric(warehouse, labelled_ages):
    report = evaluate(warehouse, labelled_ages, run_id="r1")
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    written = write_evaluations(warehouse, report, evaluated_at=at)
    assert write_evaluations(warehouse, report, evaluated_at=at) == written  # rerun: replaced
    assert warehouse.rows("SELECT count(*) FROM evaluations") == [(written,)]
    rows = warehouse.rows(
        "SELECT source, metric, value, n FROM evaluations WHERE model_id = 'llava-real'"
        " ORDER BY metric"
    )
    assert rows == [
        ("vlm", "accuracy", pytest.approx(0.2), 5),
        ("vlm", "adjacent_accuracy", pytest.approx(0.6), 5),
        ("vlm", "coverage", 1.0, 5),
        ("vlm", "macro_f1", pytest.approx(2 / 15), 5),
    ]
    notes = warehouse.rows(
        "SELECT DISTINCT model_id, details->>'$.note' FROM evaluations ORDER BY 1"
    )
    assert notes == [("llava-real", None), ("standin-clip", STANDIN_NOTE)]
    details = json.loads(
        warehouse.rows("SELECT details FROM evaluations WHERE source = 'vlm' LIMIT 1")[0][0]
    )
    assert details["confusion"]["labels"][0] == "18-20"


def test_nothing_to_compare_before_any_model_ran(tmp_path, warehouse):
    warehouse.ensure_schema()
    (tmp_path / "cloudy").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cloudy" / "x.png")
    assert evaluate(warehouse, load_folder(tmp_path), run_id="r").results == []


def test_summary_tables_for_the_demo_report(warehouse, labelled_ages):
    from core.quality.outcome import CheckOutcome, record_outcomes
    from core.quality.summary import latest_check_outcomes, latest_evaluation

    write_evaluations(warehouse, evaluate(warehouse, labelled_ages, run_id="r1"))
    table = latest_evaluation(warehouse)
    assert table.select("source", "model_id", "adjacent_accuracy").rows() == [
        ("clip_zero_shot", "standin-clip", 0.75),
        ("vlm", "llava-real", 0.6),
        ("knn", "standin-clip", None),
    ]
    for passed in (False, True):  # a rerun's outcome supersedes the earlier one
        outcome = CheckOutcome(check_name="c", passed=passed, severity="WARN", summary=str(passed))
        record_outcomes(warehouse, [outcome], run_id=f"run-{passed}", asset="a", partition="p")
    assert latest_check_outcomes(warehouse).select("passed", "summary").rows() == [(True, "True")]
