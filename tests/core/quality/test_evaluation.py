"""Evaluation reproduces hand-computed numbers for CLIP zero-shot, kNN and the VLM, side by side."""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction

import pytest
from PIL import Image

from core.quality.evaluation import STANDIN_NOTE, evaluate, evaluate_changed, evaluation_rows
from core.quality.evaluation_store import current_results
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
    # five age bins: top-5 would be 1 whatever the model does, so it is not reported
    assert "top5_accuracy" not in knn.metrics


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


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_evaluations_are_stored_once_per_labelled_set_model_task_field_and_metric(
    warehouse, labelled_ages
):
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    first = evaluate_changed(warehouse, labelled_ages, run_id="r1", evaluated_at=at)
    assert first.rows_written == warehouse.rows("SELECT count(*) FROM evaluations")[0][0]
    rows = warehouse.rows(
        "SELECT source, metric, value, n, run_id FROM evaluations WHERE model_id = 'llava-real'"
        " ORDER BY metric"
    )
    assert rows == [
        ("vlm", "accuracy", pytest.approx(0.2), 5, "r1"),
        ("vlm", "adjacent_accuracy", pytest.approx(0.6), 5, "r1"),
        ("vlm", "coverage", 1.0, 5, "r1"),
        ("vlm", "macro_f1", pytest.approx(2 / 15), 5, "r1"),
    ]
    notes = warehouse.rows(
        "SELECT DISTINCT model_id, details->>'$.note' FROM evaluations ORDER BY 1"
    )
    assert notes == [("llava-real", None), ("standin-clip", STANDIN_NOTE)]
    details = json.loads(
        warehouse.rows("SELECT details FROM evaluations WHERE source = 'vlm' LIMIT 1")[0][0]
    )
    assert details["confusion"]["labels"][0] == "18-20"


def _stored(warehouse: Warehouse) -> list[tuple]:
    return warehouse.rows(
        "SELECT labelled_set, model_id, task, field, source, metric, value, n, details"
        " FROM evaluations ORDER BY ALL"
    )


def _full(warehouse: Warehouse, labelled) -> list[tuple]:
    """What a from-scratch evaluation of everything would store."""
    report = evaluate(warehouse, labelled, run_id="full")
    return sorted(
        (labelled.source, *row)
        for result in report.results
        for row in evaluation_rows(result, labelled.source)
    )


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_a_second_run_with_nothing_new_evaluates_nothing_and_says_so(warehouse, labelled_ages):
    first = evaluate_changed(warehouse, labelled_ages, run_id="r1")
    assert [u.describe() for u in first.evaluated] == [
        "age_group / zero_shot / standin-clip",
        "age_group / vlm / llava-real",
    ]
    before = warehouse.rows("SELECT * FROM evaluations ORDER BY ALL")
    second = evaluate_changed(warehouse, labelled_ages, run_id="r2")
    assert second.evaluated == [] and second.rows_written == 0 and len(second.unchanged) == 2
    assert second.summary.startswith("nothing changed since the last evaluation")
    assert warehouse.rows("SELECT * FROM evaluations ORDER BY ALL") == before  # run_id r1 kept
    assert _stored(warehouse) == _full(warehouse, labelled_ages)


def test_new_predictions_evaluate_only_the_units_they_touch(warehouse, labelled_ages):
    evaluate_changed(warehouse, labelled_ages, run_id="r1")
    # a new drop: a second VLM answers for two labelled images; CLIP's rows do not change
    ids = labelled_ages.image_ids()
    for iid in ids[:2]:
        add_extraction(
            warehouse,
            iid,
            "age_gender",
            "llava-next",
            "ok",
            {"age_group": "31-40", "gender": "male"},
        )
    run = evaluate_changed(warehouse, labelled_ages, run_id="r2")
    assert [u.describe() for u in run.evaluated] == ["age_group / vlm / llava-next"]
    assert {u.describe() for u in run.unchanged} == {
        "age_group / zero_shot / standin-clip",
        "age_group / vlm / llava-real",
    }
    by_run = warehouse.rows(
        "SELECT DISTINCT model_id, source, run_id FROM evaluations ORDER BY ALL"
    )
    assert by_run == [
        ("llava-next", "vlm", "r2"),
        ("llava-real", "vlm", "r1"),
        ("standin-clip", "clip_zero_shot", "r1"),
        ("standin-clip", "knn", "r1"),
    ]
    assert _stored(warehouse) == _full(warehouse, labelled_ages)

    # a changed answer re-evaluates that model only; results still equal a full evaluation
    ((current,),) = warehouse.rows(
        "SELECT age_group FROM task_age_gender WHERE image_id = ? AND model_id = 'llava-real'",
        [ids[0]],
    )
    other = "18-20" if current != "18-20" else "51-60"
    add_extraction(
        warehouse, ids[0], "age_gender", "llava-real", "ok", {"age_group": other, "gender": "male"}
    )
    again = evaluate_changed(warehouse, labelled_ages, run_id="r3")
    assert [u.describe() for u in again.evaluated] == ["age_group / vlm / llava-real"]
    assert _stored(warehouse) == _full(warehouse, labelled_ages)


@pytest.mark.both_backends  # its warehouse SQL runs on the file and the lake
def test_gone_predictions_remove_their_results_and_changed_labels_re_evaluate(
    warehouse, labelled_ages, tmp_path
):
    evaluate_changed(warehouse, labelled_ages, run_id="r1")
    with warehouse.transaction() as conn:
        conn.execute("DELETE FROM clip_zero_shot")
    run = evaluate_changed(warehouse, labelled_ages, run_id="r2")
    assert run.removed == [("age_group", "zero_shot", "standin-clip", "age_group")]
    assert set(current_results(warehouse)["source"]) == {"vlm"}
    assert _stored(warehouse) == _full(warehouse, labelled_ages)

    relabelled = labelled_ages.model_copy(
        update={"items": [i.model_copy(update={"label": "21-30"}) for i in labelled_ages.items]}
    )
    changed = evaluate_changed(warehouse, relabelled, run_id="r3")
    assert [u.describe() for u in changed.evaluated] == ["age_group / vlm / llava-real"]
    assert _stored(warehouse) == _full(warehouse, relabelled)


def test_nothing_to_compare_before_any_model_ran(tmp_path, warehouse):
    warehouse.ensure_schema()
    (tmp_path / "cloudy").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cloudy" / "x.png")
    assert evaluate(warehouse, load_folder(tmp_path), run_id="r").results == []


def test_summary_tables_for_the_demo_report(warehouse, labelled_ages):
    from core.quality.outcome import CheckOutcome, record_outcomes
    from core.quality.summary import latest_check_outcomes, latest_evaluation

    evaluate_changed(warehouse, labelled_ages, run_id="r1")
    table = latest_evaluation(warehouse)
    assert table.select("source", "model", "adjacent_accuracy").rows() == [
        ("clip_zero_shot", "standin-clip", 0.75),
        ("vlm", "llava-real", 0.6),
        ("knn", "standin-clip", None),
    ]
    for passed in (False, True):  # a rerun's outcome supersedes the earlier one
        outcome = CheckOutcome(check_name="c", passed=passed, severity="WARN", summary=str(passed))
        record_outcomes(warehouse, [outcome], run_id=f"run-{passed}", asset="a", partition="p")
    assert latest_check_outcomes(warehouse).select("passed", "summary").rows() == [(True, "True")]
