"""Where the drop pages (the `drop_page` asset's static HTML) are served over http.

A `file://` link does nothing when clicked on an http page such as the Dagster UI, so the asset
links its page through the small server `make ui` starts beside `dagster dev`
(`orchestration/ui.py`), bound to 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import dagster as dg
from pydantic import Field


def reports_dir(local_dir: str | Path) -> Path:
    """Reports live in the warehouse's local folder (`Warehouse.local_dir`): data/reports/ for
    the default data/warehouse.duckdb, beside the data folder for a local lake."""
    return Path(local_dir).expanduser().absolute() / "reports"


class ReportsResource(dg.ConfigurableResource):
    """The base URL of the reports folder's server; empty: link pages as `file://`."""

    url: str = Field(
        default="",
        description="Base URL serving the reports folder, e.g. http://127.0.0.1:3001 "
        "(IMAGE_PIPELINE_REPORTS_PORT); empty links pages as file:// URLs.",
    )

    def link(self, page: Path, folder: Path) -> str:
        """The URL of `page`, a file under the reports `folder`, as a browser opens it."""
        if not self.url:
            return page.absolute().as_uri()
        relative = page.absolute().relative_to(folder.absolute())
        return f"{self.url.rstrip('/')}/{quote(relative.as_posix())}"
