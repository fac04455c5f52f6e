"""The drop root: where users put folders (or loose files) of new images."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field


class DropFolderResource(dg.ConfigurableResource):
    """A local (or mounted) folder; each sub-folder is a drop. Paths never escape it."""

    root: str = Field(description="Folder the sensor watches and ingestion reads from.")

    @property
    def path(self) -> Path:
        return Path(self.root).expanduser().absolute()
