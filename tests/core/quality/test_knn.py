"""Zero-shot kNN as the SigLIP validation defines it, and the ImageNet-1k many-class evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from core.quality import imagenet
from core.quality.evaluation import evaluate, evaluate_changed
from core.quality.knn import knn_scores, ranking, reported_top_k
from core.quality.labelled import load_csv
from tests.fixtures.contracts import add_embeddings


def unit(*angles_deg: float) -> np.ndarray:
    return np.array([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg])


def test_the_nearest_class_texts_vote_with_weight_one_over_cosine_distance():
    classes = unit(0, 60, 120, 180)  # four class texts on the unit circle
    image = unit(20)
    # distances 1 - cos: 20 deg, 40 deg, 100 deg from the image; k=3 leaves out 180 deg
    (scores,) = knn_scores(image, classes, ["a", "b", "c", "d"], k=3)
    d = {
        name: 1 - math.cos(math.radians(angle))
        for name, angle in (("a", 20), ("b", 40), ("c", 100))
    }
    total = sum(1 / v for v in d.values())
    assert scores == pytest.approx({name: (1 / v) / total for name, v in d.items()})
    assert ranking(scores) == ["a", "b", "c"]


def test_an_exact_match_takes_all_the_weight_and_repeated_labels_add_up():
    classes = unit(0, 10, 90)
    (exact,) = knn_scores(unit(10), classes, ["a", "b", "c"])
    assert exact == {"b": 1.0, "a": 0.0, "c": 0.0}
    (shared,) = knn_scores(unit(45), classes, ["x", "y", "x"], k=3)
    assert shared["x"] > shared["y"]  # two texts of x vote for it
    assert sum(shared.values()) == pytest.approx(1.0)


def test_top_k_is_reported_only_above_k_classes():
    assert reported_top_k(5) == [1]
    assert reported_top_k(6) == [1, 5]
    assert reported_top_k(998) == [1, 5]
    assert reported_top_k(1) == []


def test_imagenet_class_names_come_from_open_clip():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert tuple(IMAGENET_CLASSNAMES) == imagenet.CLASS_NAMES and len(imagenet.CLASS_NAMES) == 1000
    assert len(imagenet.VALUES) == 998  # "missile" and "sunglasses" name two classes each


@pytest.fixture
def imagenet_labelled(tmp_path):
    truth = ["tabby cat", "espresso", "tripod", "volcano", "goldfish", "space shuttle"]
    lines = ["path,label,field"]
    for i, label in enumerate(truth):
        Image.new("RGB", (8, 8), (i * 30, 5, 5)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{label},imagenet_class")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return load_csv(tmp_path / "labels.csv")


def test_planted_embeddings_give_the_known_top_1_and_top_5(
    warehouse, standin_clip, imagenet_labelled
):
    """Real stand-in text embeddings of the 1,000 classes; image vectors planted at known
    positions: on the true class text (top-1 right), or between another class text and the
    true one, where the cosine ranking computed here says whether the truth is in the top 5."""
    classes = imagenet.class_embeddings(standin_clip)
    index = {name: i for i, name in enumerate(imagenet.CLASS_NAMES)}
    truth = imagenet_labelled.labels(imagenet.FIELD)
    ids = sorted(truth)
    rows, expect_top1, expect_top5 = [], 0, 0
    for n, iid in enumerate(ids):
        true = classes[index[truth[iid]]]
        if n < 3:
            vector = true
            expect_top1, expect_top5 = expect_top1 + 1, expect_top5 + 1
        else:
            other = classes[(index[truth[iid]] + 100 * n) % 1000]
            vector = (1.0 - 0.15 * n) * other + 0.15 * n * true
            vector = vector / np.linalg.norm(vector)
            order = [imagenet.CLASS_NAMES[i] for i in np.argsort(-(classes @ vector))[:5]]
            expect_top1 += order[0] == truth[iid]
            expect_top5 += truth[iid] in order
        rows.append((iid, standin_clip.model_id, vector.tolist()))
    add_embeddings(warehouse, rows)

    report = evaluate(warehouse, imagenet_labelled, run_id="r", clip=standin_clip)
    (knn,) = report.results
    assert (knn.source, knn.task, knn.n) == ("knn", imagenet.LABEL_SET, 6)
    assert knn.metrics["top1_accuracy"] == pytest.approx(expect_top1 / 6)
    assert knn.metrics["top5_accuracy"] == pytest.approx(expect_top5 / 6)


def test_the_many_class_unit_loads_the_model_only_when_its_inputs_changed(
    warehouse, standin_clip, imagenet_labelled
):
    rng = np.random.default_rng(0)
    ids = imagenet_labelled.image_ids()
    vectors = rng.normal(size=(len(ids), standin_clip.embed_dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    add_embeddings(
        warehouse,
        [(i, standin_clip.model_id, v.tolist()) for i, v in zip(ids, vectors, strict=True)],
    )
    add_embeddings(warehouse, [(ids[0], "other-clip", vectors[0].tolist())])
    loads = []

    def load():
        loads.append(1)
        return standin_clip

    first = evaluate_changed(warehouse, imagenet_labelled, run_id="r1", load_clip=load)
    assert loads == [1] and [u.model_id for u in first.evaluated] == [standin_clip.model_id]
    assert list(first.skipped) == ["imagenet_class / embedding_knn / other-clip"]
    second = evaluate_changed(warehouse, imagenet_labelled, run_id="r2", load_clip=load)
    assert loads == [1] and second.evaluated == [] and second.skipped == {}
    # random weights and random vectors: chance level, whatever it happens to be
    top1 = warehouse.rows(
        "SELECT value FROM evaluations WHERE metric = 'top1_accuracy' AND source = 'knn'"
    )
    assert len(top1) == 1 and 0.0 <= top1[0][0] <= 1.0
