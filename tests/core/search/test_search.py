"""Search by text and by example: exact ranking on planted vectors, filters, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.clip.embed import embed_texts
from core.clip.pipeline import EmbedOptions, embed_drop
from core.search import BadFilter, SearchError, parse_where, search
from core.search.__main__ import main
from core.warehouse import Warehouse
from tests.conftest import SAMPLES
from tests.core.search.planted import label_scenery_people, plant, unit

TEXT = "a dog on a beach"


def ids(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


@pytest.fixture
def planted(warehouse: Warehouse, standin_clip) -> tuple[Warehouse, list[str], np.ndarray]:
    """40 images in two drops; a few are planted at known angles to the text query."""
    rng = np.random.default_rng(3)
    text = embed_texts(standin_clip, [TEXT])[0]
    vectors = rng.standard_normal((40, standin_clip.embed_dim)).astype(np.float32)
    for i, weight in enumerate([0.0, 0.3, 0.6, 1.0, 1.5]):  # img000 is the text itself
        vectors[i] = text + weight * unit(vectors[i])
    names = ids(40)
    plant(warehouse, "d1", names[:20], vectors[:20])
    plant(warehouse, "d2", names[20:], vectors[20:])
    return warehouse, names, unit(vectors)


def expected(vectors: np.ndarray, names: list[str], query: np.ndarray, keep=None) -> list[str]:
    scores = unit(vectors) @ unit(query)
    order = sorted(range(len(names)), key=lambda i: (-scores[i], names[i]))
    return [names[i] for i in order if keep is None or keep(names[i])]


def test_text_query_ranks_exactly_by_cosine(planted, standin_clip) -> None:
    warehouse, names, vectors = planted
    frame = search(warehouse, TEXT, k=10, clip=standin_clip)
    text = embed_texts(standin_clip, [TEXT])[0]
    assert frame["image_id"].to_list() == expected(vectors, names, text)[:10]
    assert frame["image_id"].to_list()[:5] == ["img000", "img001", "img002", "img003", "img004"]
    assert frame["score"][0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(
        frame["score"].to_numpy(), np.sort(vectors @ unit(text))[::-1][:10], atol=1e-5
    )
    assert frame["rank"].to_list() == list(range(1, 11))
    assert frame["path"][0] == "d1/img000.jpg"


def test_a_vector_query_ranks_like_the_text_it_embeds(planted, standin_clip) -> None:
    warehouse, names, vectors = planted
    text = embed_texts(standin_clip, [TEXT])[0]
    by_vector = search(warehouse, vector=3.0 * text, k=10)  # any length: normalised
    assert by_vector["image_id"].to_list() == expected(vectors, names, text)[:10]
    by_text = search(warehouse, TEXT, k=10, clip=standin_clip)
    assert by_vector.drop("score").equals(by_text.drop("score"))
    np.testing.assert_allclose(by_vector["score"], by_text["score"], atol=1e-6)


def test_model_is_loaded_from_the_stored_model_id(planted, standin_cache: Path, standin_clip):
    warehouse, _, _ = planted
    frame = search(warehouse, TEXT, k=3, standin_cache=standin_cache)  # no model passed in
    assert frame["image_id"].to_list() == ["img000", "img001", "img002"]


def test_like_a_stored_image_ranks_its_neighbours_and_leaves_it_out(planted) -> None:
    warehouse, names, vectors = planted
    for like in ("img007", "d1/img007.jpg"):
        frame = search(warehouse, like=like, k=39)
        assert frame["image_id"].to_list() == [
            name for name in expected(vectors, names, vectors[7]) if name != "img007"
        ]


def test_drop_and_where_filters_keep_only_matching_images(planted, standin_clip) -> None:
    warehouse, names, vectors = planted
    label_scenery_people(
        warehouse,
        {
            "img000": ("night_time", ["21-30"]),
            "img002": ("night_time", []),
            "img003": ("blue_sky", ["21-30", "31-40"]),
            "img021": ("night_time", ["31-40"]),
        },
    )
    text = embed_texts(standin_clip, [TEXT])[0]
    night = search(warehouse, TEXT, k=10, where=["scenery = 'night_time'"], clip=standin_clip)
    assert night["image_id"].to_list() == expected(
        vectors, names, text, keep={"img000", "img002", "img021"}.__contains__
    )
    assert "scenery_people: scenery=night_time, people=1" in night["labels"][0]
    both = search(
        warehouse,
        TEXT,
        where=["scenery = 'night_time'", "people.age_group = '31-40'"],
        clip=standin_clip,
    )
    assert both["image_id"].to_list() == ["img021"]
    in_d2 = search(warehouse, TEXT, k=30, drops=["d2"], clip=standin_clip)
    assert in_d2["image_id"].to_list() == expected(
        vectors, names, text, keep=lambda n: n >= "img020"
    )
    none = search(
        warehouse, TEXT, where=["basketball_action.action = 'passing'"], clip=standin_clip
    )
    assert none.is_empty()  # a task nobody extracted: no image carries its labels


@pytest.mark.parametrize(
    "text",
    [
        "scenery = 'night_time' OR 1=1",
        "scenery = 'x'; DROP TABLE images",
        "scenery = night_time",  # text must be quoted
        "nonexistent = 'a'",
        "age_group = '21-30' ",  # fine for age_gender; see the next line for ambiguity
        "images.image_id = 'a'",
        "scenery LIKE '%'",
        "people.age_group = 3",
    ],
)
def test_bad_where_is_rejected(text: str) -> None:
    if text.startswith("age_group"):
        assert parse_where(text).column.table == "task_age_gender"
        return
    with pytest.raises(BadFilter):
        parse_where(text)


def test_where_value_is_a_parameter_not_sql(planted, standin_clip) -> None:
    warehouse, _, _ = planted
    label_scenery_people(warehouse, {"img000": ("night_time", [])})
    frame = search(
        warehouse, TEXT, where=["people.shirt_color = 'x'' OR ''1''=''1'"], clip=standin_clip
    )
    assert frame.is_empty()  # the quote stayed inside the value
    assert parse_where("people.shirt_color = 'it''s'").value == "it's"
    with pytest.raises(BadFilter, match="not a value of"):  # a choice field knows its values
        parse_where("scenery = 'x'' OR ''1''=''1'")


def test_unusable_queries_fail_clearly(planted, tmp_path: Path) -> None:
    warehouse, _, _ = planted
    with pytest.raises(SearchError, match="neither a file"):
        search(warehouse, like="no-such-image")
    with pytest.raises(SearchError, match="give one of"):
        search(warehouse)
    with pytest.raises(SearchError, match="give one of"):
        search(warehouse, "x", vector=[1.0])
    with pytest.raises(SearchError, match="must hold"):
        search(warehouse, vector=[1.0, 2.0])  # not the stored dimension
    with pytest.raises(SearchError, match="no global embeddings"):
        search(warehouse, "x", model_id="ViT-B-32/openai")
    with pytest.raises(SearchError, match="no warehouse"):
        search(Warehouse(tmp_path / "missing.duckdb"), "x")


def test_cli_prints_ranked_rows_for_text_and_example_file(
    ingested_samples: Warehouse, drop_root: Path, standin_clip, standin_cache: Path, capsys
) -> None:
    embed_drop(ingested_samples, drop_root, "samples", standin_clip, EmbedOptions(batch_size=4))
    args = ["--db", str(ingested_samples.path), "--standin-cache", str(standin_cache)]
    assert main(["a photo of a cat", "--k", "3", *args]) == 0
    out = capsys.readouterr().out
    assert out.count("samples/") == 3 and "score" in out
    assert main(["--like", str(SAMPLES / "chelsea.jpg"), "--k", "1", *args]) == 0
    out = capsys.readouterr().out
    assert "samples/chelsea.jpg" in out  # the file itself is the nearest stored image
    assert main(["cat", "--where", "scenery = 1 OR 1=1", *args]) == 2
    assert "cannot parse" in capsys.readouterr().err


def test_like_a_file_scores_its_stored_copy_at_one(
    ingested_samples: Warehouse, drop_root: Path, standin_clip
) -> None:
    embed_drop(ingested_samples, drop_root, "samples", standin_clip, EmbedOptions(batch_size=4))
    frame = search(ingested_samples, like=str(SAMPLES / "chelsea.jpg"), k=2, clip=standin_clip)
    assert frame["path"][0] == "samples/chelsea.jpg"
    assert frame["score"][0] == pytest.approx(1.0, abs=1e-4)
    assert frame["score"][1] < frame["score"][0]
