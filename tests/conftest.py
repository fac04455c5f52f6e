"""Fixtures shared by every test: real DuckDB files and real drop folders in temp dirs."""

from __future__ import annotations

import tests.offline  # noqa: F401  (first: hub clients read the offline switches on import)

# isort: split
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from core.ingest.ingest import DropIngestor
from core.ingest.scan import DropRef
from core.warehouse import Warehouse
from orchestration.settings import REPO_ROOT, Settings

SAMPLES = REPO_ROOT / "data" / "samples"


@pytest.fixture
def drop_root(tmp_path: Path) -> Path:
    root = tmp_path / "drops"
    root.mkdir()
    return root


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=60)


@pytest.fixture
def settings(tmp_path: Path, drop_root: Path, warehouse: Warehouse) -> Settings:
    """Local settings pointing at the temp warehouse and drop root; no quiet period."""
    return Settings(
        environment="local",
        warehouse_path=warehouse.path,
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
