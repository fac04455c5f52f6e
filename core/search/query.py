"""Search the stored CLIP embeddings by text or by example image, with drop and label filters.

The query is embedded by the same model whose vectors are stored (its `model_id` is read from
the embedding table and loaded through `core.clip.loading`, the stand-in included), so text and
images land in the same space the pipeline wrote. Ranking is by cosine similarity:

- `exact`: one SQL query, `array_cosine_similarity` over every stored vector that passes the
  filters (DuckDB, vectorised); always used when a drop or `--where` filter is given;
- `index`: the approximate index beside the warehouse (`core.search.index`) proposes
  `OVERSAMPLE` x k candidates, which are re-scored exactly from the full-precision vectors
  kept beside the index (the warehouse's own float32 values, memory-mapped: k rows read);
- `auto` (default): `exact` up to `EXACT_MAX` stored vectors, `index` above (see
  benchmarks/search.py for the latencies behind that bound).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from core.clip import standin
from core.clip.embed import embed_image_tensors, embed_texts
from core.clip.loading import ClipModel, ModelSpec, load_model, standin_spec
from core.clip.store import has_table, read_embeddings, table_for
from core.ingest.decode import load_rgb
from core.labels.derive import build_tasks
from core.labels.loader import current_spec
from core.search.filters import Filter, parse_where
from core.search.index import SEARCH_NPROBE, open_index
from core.warehouse import Warehouse
from core.warehouse.queries import first_paths

Method = Literal["auto", "exact", "index"]
EXACT_MAX = 100_000
OVERSAMPLE = 4
RESULT_SCHEMA = {
    "rank": pl.Int64,
    "image_id": pl.String,
    "path": pl.String,
    "score": pl.Float64,
    "labels": pl.String,
}


class _OneConnection(Warehouse):
    """The warehouse seen through one read connection that the caller holds open: helpers that
    take a Warehouse run their queries on it instead of opening the file again (each open costs
    tens of milliseconds, more than the point queries a search makes)."""

    def __init__(self, warehouse: Warehouse, conn: duckdb.DuckDBPyConnection) -> None:
        self._inner = warehouse
        self.lock_timeout_s = warehouse.lock_timeout_s
        self._conn = conn

    def __repr__(self) -> str:
        return repr(self._inner)

    def exists(self) -> bool:
        return True  # a reader is open on it

    def stamp(self) -> list | None:
        return self._inner.stamp()

    @property
    def local_dir(self) -> Path:
        return self._inner.local_dir

    @property
    def key(self) -> str:
        return self._inner.key

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        yield self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        raise RuntimeError("a search holds a read connection: it never writes")
        yield self._conn  # pragma: no cover

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
        return self._conn.execute(sql, params).fetchall()

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        return self._conn.sql(sql, params=params).pl()


@contextlib.contextmanager
def _held(warehouse: Warehouse) -> Iterator[Warehouse]:
    with warehouse.reader() as conn:
        yield _OneConnection(warehouse, conn)


class SearchError(ValueError):
    """The query cannot run as asked (no embeddings, unknown model or image); says why."""


@dataclass(frozen=True)
class StoredModel:
    model_id: str
    dim: int
    vectors: int


def stored_models(warehouse: Warehouse, kind: str = "global") -> list[StoredModel]:
    """The models with stored embeddings of `kind`, most vectors first."""
    if not warehouse.exists():
        raise SearchError(f"no warehouse at {warehouse!r}: run `make demo` first")
    rows = warehouse.rows(
        "SELECT model_id, dim, count(*) FROM clip_embeddings WHERE kind = ?"
        " GROUP BY 1, 2 ORDER BY 3 DESC, 1",
        [kind],
    )
    return [StoredModel(str(m), int(d), int(n)) for m, d, n in rows]


def pick_model(warehouse: Warehouse, model_id: str | None, kind: str = "global") -> StoredModel:
    models = stored_models(warehouse, kind)
    if not models:
        raise SearchError("the warehouse holds no embeddings yet: materialize clip_embeddings")
    if model_id is None:
        if len(models) > 1:
            raise SearchError(
                "embeddings of several models are stored; choose one with --model: "
                + ", ".join(m.model_id for m in models)
            )
        return models[0]
    for model in models:
        if model.model_id == model_id:
            return model
    raise SearchError(
        f"no {kind} embeddings of {model_id!r}; stored: {', '.join(m.model_id for m in models)}"
    )


def spec_for(
    model_id: str,
    *,
    pretrained: str | None = None,
    standin_cache: Path | None = None,
    device: str = "cpu",
) -> ModelSpec:
    """How to load the model that wrote `model_id` rows (`<model>/<tag>` or the stand-in).

    A fine-tuned checkpoint's id holds only its file stem, so its path comes as `pretrained`.
    """
    name, _, tag = model_id.partition("/")
    if pretrained:
        return ModelSpec(model_name=name, pretrained=pretrained, device=device, model_id=model_id)
    if name == standin.STANDIN_MODEL and tag.startswith("seed") and tag[4:].isdigit():
        if standin_cache is None:
            raise SearchError(f"{model_id!r} is the offline stand-in: pass its standin_cache")
        return standin_spec(Path(standin_cache), seed=int(tag[4:]), device=device)
    if not tag or tag == "random-init":
        raise SearchError(f"cannot tell how to load {model_id!r}: pass its checkpoint path")
    return ModelSpec(model_name=name, pretrained=tag, device=device)


@dataclass(frozen=True)
class Query:
    """A unit query vector and, for an example image already stored, its id (left out)."""

    vector: np.ndarray
    exclude_image_id: str | None = None
    description: str = ""


def _stored_image(warehouse: Warehouse, like: str) -> str | None:
    """The image id `like` names: an id, a unique id prefix, or a stored path."""
    rows = warehouse.rows(
        "SELECT DISTINCT image_id FROM image_files WHERE path = $like"
        " OR drop_id || '/' || path = $like OR image_id = $like"
        " OR (length($like) >= 8 AND starts_with(image_id, lower($like)))",
        {"like": like},
    )
    if len(rows) > 1:
        raise SearchError(f"{like!r} matches {len(rows)} stored images; give more of the id")
    return str(rows[0][0]) if rows else None


def like_query(
    warehouse: Warehouse, like: str, model: StoredModel, clip_loader, kind: str = "global"
) -> Query:
    """An example image: a file on disk (embedded now) or a stored image (its stored vector)."""
    image_id = _stored_image(warehouse, like)
    if image_id is not None:
        ids, vectors = read_embeddings(warehouse, model.dim, model.model_id, kind, [image_id])
        if not ids:
            raise SearchError(f"image {image_id} has no {model.model_id} embedding")
        return Query(vectors[0], image_id, f"like {image_id[:12]}")
    path = Path(like)
    if not path.is_file():
        raise SearchError(f"{like!r} is neither a file nor a stored image id or path")
    clip: ClipModel = clip_loader()
    image = load_rgb(path, min_side=clip.min_decode_side)
    try:
        pixels = clip.to_tensor(image).unsqueeze(0)
    finally:
        image.close()
    return Query(embed_image_tensors(clip, pixels)[0], None, f"like {path.name}")


def _vector_query(vector: np.ndarray | Sequence[float], dim: int) -> Query:
    values = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(values)) if values.size else 0.0
    if values.shape != (dim,) or not np.isfinite(values).all() or norm == 0:
        raise SearchError(f"the query vector must hold {dim} finite values, not all zero")
    return Query(values / norm, None, "a vector")


def text_query(text: str, clip_loader) -> Query:
    if not text.strip():
        raise SearchError("the text query is empty")
    return Query(embed_texts(clip_loader(), [text])[0], None, repr(text))


def _filter_sql(drops: Sequence[str], filters: Sequence[Filter]) -> tuple[str, dict]:
    clauses, params = [], {}
    if drops:
        names = [f"drop{i}" for i in range(len(drops))]
        clauses.append(
            "image_id IN (SELECT image_id FROM image_files WHERE drop_id IN ("
            + ", ".join(f"${n}" for n in names)
            + "))"
        )
        params.update(dict(zip(names, drops, strict=True)))
    for i, condition in enumerate(filters):
        clauses.append(condition.sql(f"where{i}"))
        params.update(condition.params(f"where{i}"))
    return "".join(f" AND {clause}" for clause in clauses), params


def _existing_tables(warehouse: Warehouse) -> set[str]:
    return {
        name
        for (name,) in warehouse.rows(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'task%'"
        )
    }


def exact_search(
    warehouse: Warehouse,
    model: StoredModel,
    query: Query,
    k: int,
    *,
    drops: Sequence[str] = (),
    filters: Sequence[Filter] = (),
    kind: str = "global",
) -> list[tuple[str, float]]:
    """(image_id, cosine) of the k best stored vectors passing the filters, best first."""
    tables = _existing_tables(warehouse)
    if any(condition.column.table not in tables for condition in filters):
        return []  # a task nobody extracted yet: no image has that label
    where, params = _filter_sql(drops, filters)
    if query.exclude_image_id is not None:
        where += " AND image_id <> $self"
        params["self"] = query.exclude_image_id
    rows = warehouse.rows(
        f"SELECT image_id, array_cosine_similarity(embedding::FLOAT[{model.dim}],"
        f" $q::FLOAT[{model.dim}])::DOUBLE"
        f" AS score FROM {table_for(model.dim)} WHERE model_id = $model AND kind = $kind{where}"
        " ORDER BY score DESC, image_id LIMIT $k",
        {
            "q": [float(x) for x in query.vector],
            "model": model.model_id,
            "kind": kind,
            "k": k,
            **params,
        },
    )
    return [(str(image_id), float(score)) for image_id, score in rows]


def index_search(
    warehouse: Warehouse,
    model: StoredModel,
    query: Query,
    k: int,
    *,
    kind: str = "global",
    nprobe: int = SEARCH_NPROBE,
) -> list[tuple[str, float]]:
    """The index proposes OVERSAMPLE x k candidates; their exact cosines rank them.

    The candidates' vectors come from the float32 copy kept beside the index, row-aligned with
    its ids (the same values as the warehouse's rows), so the cost is the index probe plus k
    rows, not a join over the embedding table."""
    index = open_index(warehouse, model.model_id, kind, model.dim)
    index.refresh()
    rows, _ = index.search_rows(query.vector[None, :], OVERSAMPLE * k + 1, nprobe=nprobe)
    pairs = [(index.id_of(r), r) for r in rows[0]]
    pairs = [(image_id, r) for image_id, r in pairs if image_id != query.exclude_image_id]
    if not pairs:
        return []
    ids = [image_id for image_id, _ in pairs]
    vectors = index.vectors([r for _, r in pairs])
    q = query.vector.astype(np.float64)
    scores = vectors.astype(np.float64) @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    ranked = sorted(zip(ids, scores.tolist(), strict=True), key=lambda p: (-p[1], p[0]))
    return ranked[:k]


def labels_of(warehouse: Warehouse, image_ids: Sequence[str], model_id: str) -> dict[str, str]:
    """One line of labels per image: each task's current VLM answer, and CLIP's zero-shot tops."""
    if not image_ids:
        return {}
    parts: dict[str, list[str]] = {image_id: [] for image_id in image_ids}
    tables = _existing_tables(warehouse)
    with warehouse.reader() as conn:
        conn.register("wanted", pa.table({"image_id": pa.array(list(image_ids), pa.string())}))
        for task in build_tasks(current_spec()).values():
            spec = task.tables
            if spec.table not in tables:
                continue
            columns = ", ".join(f't."{c}"' for c, _ in spec.columns)
            rows = conn.execute(
                f'SELECT t.image_id, {columns} FROM "{spec.table}" t JOIN wanted USING (image_id)'
                " WHERE t.task_fingerprint = ? ORDER BY t.image_id, t.model_id",
                [task.fingerprint],
            ).fetchall()
            seen: set[str] = set()
            texts: dict[str, str] = {}
            for image_id, *values in rows:
                if image_id in seen:  # several VLMs: the first model id alphabetically
                    continue
                seen.add(image_id)
                fields = [f"{c}={v}" for (c, _), v in zip(spec.columns, values, strict=True)]
                texts[image_id] = ", ".join(fields)
            for child in spec.children:
                if child.table not in tables:
                    continue
                counts = conn.execute(
                    f'SELECT c.image_id, count(DISTINCT c.idx) FROM "{child.table}" c'
                    " JOIN wanted USING (image_id) WHERE c.task_fingerprint = ? GROUP BY 1",
                    [task.fingerprint],
                ).fetchall()
                for image_id, n in counts:
                    if image_id in texts:
                        texts[image_id] += f", {child.field}={n}"
            for image_id, text in texts.items():
                parts[image_id].append(f"{task.name}: {text}")
        zero_shot = conn.execute(
            "SELECT z.image_id, z.label_set, z.top_label FROM clip_zero_shot z"
            " JOIN wanted USING (image_id) WHERE z.model_id = ? ORDER BY 1, 2",
            [model_id],
        ).fetchall()
    clip: dict[str, list[str]] = {}
    for image_id, label_set, top in zero_shot:
        clip.setdefault(image_id, []).append(f"{label_set}={top}")
    for image_id, texts in clip.items():
        parts[image_id].append("clip: " + ", ".join(texts))
    return {image_id: " | ".join(texts) for image_id, texts in parts.items()}


def search(
    warehouse: Warehouse | str | Path,
    text: str | None = None,
    *,
    like: str | None = None,
    vector: np.ndarray | Sequence[float] | None = None,
    k: int = 20,
    drops: Sequence[str] = (),
    where: Sequence[str] = (),
    model_id: str | None = None,
    pretrained: str | None = None,
    kind: str = "global",
    method: Method = "auto",
    clip: ClipModel | None = None,
    standin_cache: Path | None = None,
) -> pl.DataFrame:
    """Rank stored images by cosine to a text or an example image: rank, image_id, path,
    score and labels, best first (a polars DataFrame).

    `where` holds `column op value` filters (see `core.search.filters`), all of which must hold;
    `drops` keeps images seen in any of those drops. `clip` skips loading the model; `vector`,
    instead of text or `like`, is a query already embedded by the stored model (normalised here).
    """
    if not isinstance(warehouse, Warehouse):
        warehouse = Warehouse(warehouse)
    if sum(given is not None for given in (text, like, vector)) != 1:
        raise SearchError("give one of a text query, --like or a vector, not several or none")
    if k < 1:
        raise SearchError(f"k must be at least 1, not {k}")
    if method not in ("auto", "exact", "index"):
        raise SearchError(f"method must be auto, exact or index, not {method!r}")
    filters = [parse_where(condition) for condition in where]
    if not warehouse.exists():
        raise SearchError(f"no warehouse at {warehouse!r}: run `make demo` first")
    with _held(warehouse) as held:  # one connection for the model, the example and the table
        model = pick_model(held, model_id, kind)
        stored = _stored_image(held, str(like)) if like is not None else None
        example = (
            read_embeddings(held, model.dim, model.model_id, kind, [stored]) if stored else None
        )
        table_exists = has_table(held, model.dim)
    loaded: list[ClipModel] = [clip] if clip is not None else []

    def clip_loader() -> ClipModel:
        if not loaded:
            loaded.append(
                load_model(
                    spec_for(model.model_id, pretrained=pretrained, standin_cache=standin_cache)
                )
            )
        if loaded[0].model_id != model.model_id:
            raise SearchError(
                f"the loaded model is {loaded[0].model_id!r}, the embeddings are {model.model_id!r}"
            )
        return loaded[0]

    if vector is not None:
        query = _vector_query(vector, model.dim)
    elif example is not None:
        ids, vectors = example
        if not ids:
            raise SearchError(f"image {stored} has no {model.model_id} embedding")
        query = Query(vectors[0], stored, f"like {str(stored)[:12]}")
    elif text is not None:
        query = text_query(text, clip_loader)
    else:
        query = like_query(warehouse, str(like), model, clip_loader, kind)
    if not table_exists:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    use_index = method == "index" or (
        method == "auto" and not drops and not filters and model.vectors > EXACT_MAX
    )
    if use_index and (drops or filters):
        raise SearchError("filters need exact search: drop --method index or the filters")
    hits = (
        index_search(warehouse, model, query, k, kind=kind)
        if use_index
        else exact_search(warehouse, model, query, k, drops=drops, filters=filters, kind=kind)
    )
    if not hits:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    ids = [image_id for image_id, _ in hits]
    with _held(warehouse) as held:  # one connection for the k paths and labels
        paths = first_paths(held, ids)
        labels = labels_of(held, ids, model.model_id)
    return pl.DataFrame(
        {
            "rank": list(range(1, len(hits) + 1)),
            "image_id": ids,
            "path": [paths.get(image_id) for image_id in ids],
            "score": [score for _, score in hits],
            "labels": [labels.get(image_id, "") for image_id in ids],
        },
        schema=RESULT_SCHEMA,
    )
