"""The vector index beside the warehouse: per-drop updates, rebuilds, recall, and the
near-duplicate check answered from it (the same pairs as the exact SQL join)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from core.clip import near_duplicates
from core.clip.near_duplicates import near_duplicate_pairs
from core.clip.store import read_embeddings
from core.search import index as index_module
from core.search import query as query_module
from core.search.index import VectorIndex
from core.search.query import search
from core.warehouse import Warehouse
from tests.core.search.planted import MODEL, plant, unit

DIM = 64


def clustered(rng: np.random.Generator, n: int, centers: int = 30) -> np.ndarray:
    """Vectors around a few centres, as real embeddings are, not uniform noise."""
    middle = rng.standard_normal((centers, DIM))
    return unit(middle[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, DIM)))


def names(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def exact_top(vectors: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> list[set]:
    scores = queries @ vectors.T
    return [{ids[j] for j in np.argsort(-row)[:k]} for row in scores]


def test_small_index_is_exact_and_grows_by_the_new_drop(warehouse: Warehouse) -> None:
    rng = np.random.default_rng(0)
    first, second = clustered(rng, 300), clustered(rng, 120)
    plant(warehouse, "d1", names(300, "a"), first)
    index = VectorIndex(warehouse, MODEL, "global", DIM)
    report = index.sync()
    assert (report.added, report.total, report.rebuilt, report.factory) == (300, 300, True, "Flat")
    assert index.sync().added == 0  # up to date: nothing read
    plant(warehouse, "d2", names(120, "b"), second)
    report = index.sync()
    assert (report.added, report.total, report.rebuilt) == (120, 420, False)
    everything = np.concatenate([first, second])
    queries = clustered(rng, 20)
    found, _ = index.search(queries, 10)
    assert [set(row) for row in found] == exact_top(
        everything, names(300, "a") + names(120, "b"), queries, 10
    )
    reopened = VectorIndex(warehouse, MODEL, "global", DIM)  # another process: from the files
    assert reopened.ready() and reopened.count == 420


def test_ivf_index_recall_and_rebuild_when_outgrown(warehouse: Warehouse, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "IVF_FROM", 1000)
    monkeypatch.setattr(index_module, "RETRAIN_GROWTH", 1.5)
    rng = np.random.default_rng(1)
    stored = clustered(rng, 2000)
    ids = names(2000, "s")
    plant(warehouse, "d1", ids, stored)
    index = VectorIndex(warehouse, MODEL, "global", DIM)
    report = index.sync()
    assert report.rebuilt and report.factory.startswith("IVF") and report.factory.endswith("SQ8")
    queries = clustered(rng, 100)
    truth = exact_top(stored, ids, queries, 10)
    found, _ = index.search(queries, 10, nprobe=16)
    recall = np.mean([len(set(row) & want) / 10 for row, want in zip(found, truth, strict=True)])
    assert recall >= 0.9
    plant(warehouse, "d2", names(300, "t"), clustered(rng, 300))
    assert not index.sync().rebuilt  # 2300 < 1.5 x 2000: the trained cells still serve
    plant(warehouse, "d3", names(1000, "u"), clustered(rng, 1000))
    report = index.sync()
    assert report.rebuilt and report.total == 3300  # outgrew its training: retrained


def test_index_rebuilds_when_it_holds_ids_the_warehouse_lacks(tmp_path) -> None:
    rng = np.random.default_rng(2)
    old = Warehouse(tmp_path / "w.duckdb")
    plant(old, "d1", names(50, "a"), clustered(rng, 50))
    VectorIndex(old, MODEL, "global", DIM).sync()
    old.path.unlink()  # a fresh warehouse with other images, the old index left beside it
    fresh = Warehouse(tmp_path / "w.duckdb")
    plant(fresh, "d1", names(50, "b"), clustered(rng, 50))
    index = VectorIndex(fresh, MODEL, "global", DIM)
    report = index.sync()
    assert report.rebuilt
    found, _ = index.search(clustered(rng, 1), 50)
    assert all(image_id.startswith("b") for image_id in found[0])


def test_search_through_the_index_matches_exact_search(warehouse, monkeypatch) -> None:
    monkeypatch.setattr(query_module, "EXACT_MAX", 100)
    rng = np.random.default_rng(4)
    stored = clustered(rng, 600)
    plant(warehouse, "d1", names(600, "s"), stored)
    exact = search(warehouse, like="s00007", k=10, method="exact")
    auto = search(warehouse, like="s00007", k=10)  # 600 > EXACT_MAX: the index, re-scored
    assert auto["image_id"].to_list() == exact["image_id"].to_list()
    np.testing.assert_allclose(auto["score"].to_numpy(), exact["score"].to_numpy(), atol=1e-5)
    assert VectorIndex(warehouse, MODEL, "global", DIM).ready()


def _with_copies(rng: np.random.Generator, source: np.ndarray, noise: float) -> np.ndarray:
    return unit(source + noise * rng.standard_normal(source.shape))


@pytest.mark.parametrize("ivf", [False, True])
def test_near_duplicates_from_the_index_equal_the_sql_join(warehouse, monkeypatch, ivf) -> None:
    if ivf:
        monkeypatch.setattr(index_module, "IVF_FROM", 1000)
    rng = np.random.default_rng(5)
    stored = clustered(rng, 1500)
    plant(warehouse, "old", names(1500, "s"), stored)
    fresh = clustered(rng, 200)
    fresh[:20] = _with_copies(rng, stored[:20], 0.01)  # re-encoded copies of stored images
    fresh[20:30] = _with_copies(rng, fresh[30:40], 0.01)  # pairs inside the drop
    fresh[40:45] = _with_copies(rng, stored[100:105], 0.2)  # similar, not duplicates
    plant(warehouse, "new", names(200, "n"), fresh)
    args = {"model_id": MODEL, "dim": DIM, "threshold": 0.98}
    exact = near_duplicate_pairs(warehouse, "new", method="sql", **args)
    from_index = near_duplicate_pairs(warehouse, "new", method="index", **args)
    assert exact.height == 30
    assert (
        from_index.select("image_id", "other_image_id", "other_in_drop").rows()
        == exact.select("image_id", "other_image_id", "other_in_drop").rows()
    )
    np.testing.assert_allclose(from_index["cosine"], exact["cosine"], atol=1e-5)
    assert exact["other_in_drop"].sum() == 10


def test_auto_picks_the_index_above_the_pair_budget(warehouse, monkeypatch) -> None:
    rng = np.random.default_rng(6)
    plant(warehouse, "old", names(400, "s"), clustered(rng, 400))
    plant(warehouse, "new", names(10, "n"), clustered(rng, 10))
    monkeypatch.setattr(near_duplicates, "SQL_MAX_PAIRS", 100)
    near_duplicate_pairs(warehouse, "new", model_id=MODEL, dim=DIM)
    assert VectorIndex(warehouse, MODEL, "global", DIM).ready()  # built and current


def test_repeated_searches_reuse_the_loaded_index_and_see_new_drops(warehouse, monkeypatch) -> None:
    monkeypatch.setattr(query_module, "EXACT_MAX", 100)
    rng = np.random.default_rng(7)
    first = clustered(rng, 400)
    plant(warehouse, "d1", names(400, "a"), first)
    search(warehouse, like="a00003", k=5)  # builds the index and loads it
    reads: list[str] = []
    real_read = index_module.faiss.read_index

    def counting_read(path: str, *args):
        reads.append(path)
        return real_read(path, *args)

    monkeypatch.setattr(index_module.faiss, "read_index", counting_read)
    again = search(warehouse, like="a00003", k=5)
    assert reads == []  # the process's loaded index, not the files again
    assert (
        again["image_id"].to_list()
        == search(warehouse, like="a00003", k=5, method="exact")["image_id"].to_list()
    )
    # Another process updates the index with a new drop: the loaded one re-reads the new files.
    copy = unit(first[3] + 0.001 * rng.standard_normal(DIM))[None, :]
    plant(warehouse, "d2", ["b00000"], copy)
    VectorIndex(warehouse, MODEL, "global", DIM).sync()  # reads the files once itself
    before = len(reads)
    hits = search(warehouse, like="a00003", k=5)
    assert len(reads) == before + 1 and hits["image_id"][0] == "b00000"


def _settle(warehouse: Warehouse) -> None:
    """Date the warehouse files 10 s back, as if the last write were that long ago: only then
    may their stamp stand for "nothing committed since" (see `warehouse_stamp`)."""
    past = time.time_ns() - 10_000_000_000
    for path in (warehouse.path, warehouse.path.with_name(warehouse.path.name + ".wal")):
        if path.exists():
            os.utime(path, ns=(past, past))


def test_index_search_scores_are_exact_cosines_not_the_quantised_ones(
    warehouse, monkeypatch
) -> None:
    monkeypatch.setattr(index_module, "IVF_FROM", 500)  # IVF SQ8: approximate codes
    rng = np.random.default_rng(8)
    plant(warehouse, "d1", names(800, "s"), clustered(rng, 800))
    ids, stored = read_embeddings(warehouse, DIM, MODEL, "global", names(800, "s"))  # as held
    index = VectorIndex(warehouse, MODEL, "global", DIM)
    assert index.sync().factory.endswith("SQ8")
    query = unit(clustered(rng, 1))[0]
    model = query_module.StoredModel(MODEL, DIM, 800)
    hits = query_module.index_search(warehouse, model, query_module.Query(query), 10)
    q = query.astype(np.float64)
    exact = stored.astype(np.float64) @ q / (np.linalg.norm(stored, axis=1) * np.linalg.norm(q))
    row = {image_id: i for i, image_id in enumerate(ids)}
    np.testing.assert_allclose(
        [score for _, score in hits], [exact[row[i]] for i, _ in hits], rtol=0, atol=1e-12
    )
    # The quantised scores differ from these by far more than the tolerance above.
    _, approximate = index.search(query[None, :], 10, nprobe=index_module.SEARCH_NPROBE)
    assert np.abs(np.sort(approximate[0]) - np.sort([s for _, s in hits])).max() > 1e-6
    # All cells probed at this size: the ranking is the exact top 10.
    assert [i for i, _ in hits] == [ids[j] for j in np.argsort(-exact, kind="stable")[:10]]


def test_vectors_beside_the_index_stay_row_aligned_through_updates_and_merges(
    warehouse, monkeypatch
) -> None:
    monkeypatch.setattr(index_module, "MAX_SEGMENTS", 2)
    rng = np.random.default_rng(9)
    index = VectorIndex(warehouse, MODEL, "global", DIM)
    for number, count in enumerate([40, 25, 30, 5]):  # the fourth update merges three segments
        plant(warehouse, f"d{number}", names(count, f"x{number}"), clustered(rng, count))
        index.sync()
        segments = sorted(p.name for p in index.folder.glob("*.f32"))
        assert len(segments) == (number + 1 if number < 2 else number - 1)
    reopened = VectorIndex(warehouse, MODEL, "global", DIM)  # another process, from the files
    assert reopened.ready() and reopened.count == 100
    ids = [reopened.id_of(r) for r in range(100)]
    stored_ids, stored = read_embeddings(warehouse, DIM, MODEL, "global", ids)
    by_id = dict(zip(stored_ids, stored, strict=True))
    kept = reopened.vectors(list(range(100)))
    np.testing.assert_array_equal(kept, np.stack([by_id[i] for i in ids]))  # bit for bit


def test_a_damaged_vector_file_is_not_used_the_index_is_rebuilt(warehouse, monkeypatch) -> None:
    monkeypatch.setattr(query_module, "EXACT_MAX", 100)
    rng = np.random.default_rng(10)
    plant(warehouse, "d1", names(300, "a"), clustered(rng, 300))
    index = VectorIndex(warehouse, MODEL, "global", DIM)
    index.sync()
    (segment,) = index.folder.glob("*.f32")
    with open(segment, "r+b") as handle:
        handle.truncate(segment.stat().st_size - 4 * DIM)  # one row short
    assert not VectorIndex(warehouse, MODEL, "global", DIM).ready()
    index_module._OPEN.clear()  # a new process: nothing loaded
    hits = search(warehouse, like="a00004", k=5)
    assert (
        hits["image_id"].to_list()
        == search(warehouse, like="a00004", k=5, method="exact")["image_id"].to_list()
    )
    assert VectorIndex(warehouse, MODEL, "global", DIM).ready()  # rebuilt with whole files


def test_freshness_skips_the_count_only_while_the_warehouse_files_are_unchanged(
    warehouse, monkeypatch
) -> None:
    rng = np.random.default_rng(11)
    first = clustered(rng, 200)
    plant(warehouse, "d1", names(200, "a"), first)
    VectorIndex(warehouse, MODEL, "global", DIM).sync()  # files just written: no stamp kept
    counts: list[int] = []
    real_count = VectorIndex.stored_count

    def counting(self) -> int:
        counts.append(1)
        return real_count(self)

    monkeypatch.setattr(VectorIndex, "stored_count", counting)
    _settle(warehouse)
    assert VectorIndex(warehouse, MODEL, "global", DIM).ready() and len(counts) == 1
    assert VectorIndex(warehouse, MODEL, "global", DIM).ready() and len(counts) == 1  # stamped
    plant(warehouse, "d2", ["b00000"], unit(first[3] + 0.001 * rng.standard_normal(DIM))[None])
    _settle(warehouse)  # even dated back, the new write changed the stamp
    stale = VectorIndex(warehouse, MODEL, "global", DIM)
    assert not stale.ready() and len(counts) == 2
    stale.refresh()
    found, _ = stale.search(first[3][None, :], 2)
    assert "b00000" in found[0]


def test_an_index_written_without_vector_segments_is_rebuilt_once(warehouse) -> None:
    rng = np.random.default_rng(12)
    plant(warehouse, "d1", names(120, "a"), clustered(rng, 120))
    index = VectorIndex(warehouse, MODEL, "global", DIM)
    index.sync()
    manifest = json.loads(index.manifest_path.read_text())
    del manifest["segments"]  # as the index was written before the re-score vectors
    index.manifest_path.write_text(json.dumps(manifest))
    older = VectorIndex(warehouse, MODEL, "global", DIM)
    assert not older.ready()
    report = older.sync()
    assert report.rebuilt and report.total == 120
    assert older.sync().added == 0 and VectorIndex(warehouse, MODEL, "global", DIM).ready()


def test_a_process_that_loaded_the_mapped_ivf_index_can_add_a_drop(warehouse, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "IVF_FROM", 500)
    rng = np.random.default_rng(13)
    first = clustered(rng, 800)
    plant(warehouse, "d1", names(800, "a"), first)
    VectorIndex(warehouse, MODEL, "global", DIM).sync()
    reader = VectorIndex(warehouse, MODEL, "global", DIM)  # loads the files memory-mapped
    assert reader.ready() and reader.search(first[:1], 3)[0][0][0] == "a00000"
    copy = unit(first[5] + 0.001 * rng.standard_normal(DIM))[None, :]
    plant(warehouse, "d2", ["b00000"], copy)
    report = reader.sync()  # adds to a full copy, never to the mapped one
    assert (report.added, report.rebuilt, report.total) == (1, False, 801)
    # SQ8 scores are approximate (the planted copy and its original may swap places), so the
    # claim is: the new row is found, and its stored vector, re-scored exactly, ranks first.
    rows, _ = reader.search_rows(copy, 2, nprobe=64)
    assert "b00000" in [reader.id_of(r) for r in rows[0]]
    exact = reader.vectors(rows[0]) @ copy[0]
    assert reader.id_of(rows[0][int(np.argmax(exact))]) == "b00000"
    assert VectorIndex(warehouse, MODEL, "global", DIM).ready()
