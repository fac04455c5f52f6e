"""Fixtures shared by every test: real DuckDB files and real drop folders in temp dirs."""

from __future__ import annotations

import tests.offline  # noqa: F401  (first: hub clients read the offline switches on import)

# isort: split
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.warehouse import FileWarehouse, Warehouse
from orchestration.settings import REPO_ROOT, Settings
from tests.fixtures.lake import LakeServer
from tests.fixtures.lake import unavailable as lake_unavailable

SAMPLES = REPO_ROOT / "data" / "samples"
# The chain's assets, in order: each one a step of a drop's run and a writer of check results.
CHAIN_ASSETS = (
    "images",
    "clip_embeddings",
    "clip_zero_shot",
    "vlm_extractions",
    "label_agreement",
    "evaluation",
    "review_queue",
    "drop_page",
)


@pytest.fixture
def drop_root(tmp_path: Path) -> Path:
    root = tmp_path / "drops"
    root.mkdir()
    return root


BACKENDS = ("file", "lake")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_backends: run the test's `warehouse` on the DuckDB file and on the lake",
    )


# Under pytest-xdist (`make test` runs `-n 2 --dist loadscope`) a test module is one unit of work,
# so its module-scoped fixtures (a real SGLang server, the multi-run harness) start once; the
# longest units go first so that neither worker is left with one at the end.
LONGEST_FIRST = (
    "tests/orchestration/test_multirun.py",
    "tests/integration/test_sglang_real.py",
    "tests/integration/test_sglang_router.py",
    "tests/ui/test_dagster_ui.py",
    "tests/integration/test_sglang_user_spec.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {module: index for index, module in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_backends` that use `warehouse` run once per backend."""
    if metafunc.definition.get_closest_marker("both_backends") and (
        "warehouse" in metafunc.fixturenames
    ):
        metafunc.parametrize("warehouse", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def lake_server() -> Iterator[LakeServer]:
    """PostgreSQL for the lake tests (one per session). Without PostgreSQL the lake tests skip
    saying why, except on CI (CI=true), where they fail: `make test` installs it as root."""
    reason = lake_unavailable()
    if reason:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"lake tests cannot run on CI: {reason}")
        pytest.skip(f"lake tests skipped: {reason}")
    # Not under pytest's temp root: pytest keeps that 0700, and the `postgres` user needs a way
    # in to its data folder for the whole session.
    folder = Path(tempfile.mkdtemp(prefix="lake-tests-"))
    os.chmod(folder, 0o755)
    server = LakeServer.start(folder)
    before = os.environ.get("PGPASSFILE")
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if before is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = before


@pytest.fixture
def lake(request: pytest.FixtureRequest) -> Iterator[Warehouse]:
    """A fresh, empty lake (its own catalog database) at the current schema."""
    server: LakeServer = request.getfixturevalue("lake_server")
    warehouse = server.fresh(lock_timeout_s=60)
    try:
        yield warehouse
    finally:
        warehouse.close()


@pytest.fixture
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    """The DuckDB file, or (for tests marked `both_backends`, parametrised) a fresh lake."""
    if getattr(request, "param", "file") == "lake":
        yield request.getfixturevalue("lake")
    else:
        yield Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=60)


@pytest.fixture
def settings(tmp_path: Path, drop_root: Path, warehouse: Warehouse) -> Settings:
    """Local settings pointing at the temp warehouse and drop root; no quiet period."""
    return Settings(
        environment="local",
        warehouse_path=warehouse.path if isinstance(warehouse, FileWarehouse) else warehouse.target,
        lake_data_path=warehouse.data_path,
        drop_root=drop_root,
        quiet_period_s=0,
    )


def copy_samples(drop_root: Path, drop_id: str = "samples", names: list[str] | None = None) -> Path:
    """Copy the bundled sample photographs (or the named ones) into a drop folder."""
    folder = drop_root / drop_id
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(SAMPLES.glob("*.jpg")):
        if names is None or source.name in names:
            shutil.copy2(source, folder / source.name)
    return folder


@pytest.fixture
def sample_drop(drop_root: Path) -> Path:
    return copy_samples(drop_root)


@pytest.fixture
def ingested_samples(warehouse: Warehouse, drop_root: Path, sample_drop: Path) -> Warehouse:
    """The sample photographs ingested as drop `samples`."""
    DropIngestor(warehouse, drop_root).ingest(DropRef.folder("samples"))
    return warehouse


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A persistent temp instance: dynamic partitions and sensor cursors need one."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture(scope="session")
def standin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline stand-in CLIP checkpoints (seeds 0 and 1), built once per test session."""
    from core.clip.standin import standin_checkpoint

    cache = tmp_path_factory.mktemp("clip-models")
    for seed in (0, 1):
        standin_checkpoint(cache, seed=seed)
    return cache


@pytest.fixture(scope="session")
def standin_clip(standin_cache: Path):
    """The seed-0 stand-in, loaded through the pretrained-path route like real weights."""
    from core.clip.loading import load_model, standin_spec

    return load_model(standin_spec(standin_cache, device="cpu"))
