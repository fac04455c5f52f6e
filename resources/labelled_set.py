"""The labelled set evaluation runs against: a CSV `path,label[,field]` or a `<label>/<image>` folder."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from core.quality.labelled import LabelledSet, load_labelled


class LabelledSetResource(dg.ConfigurableResource):
    """Where the labels are; empty means none is configured and `evaluation` evaluates nothing."""

    location: str = Field(
        default="",
        description="A labels CSV or a folder of <label>/<image>; empty: no evaluation.",
    )

    @property
    def configured(self) -> bool:
        return bool(self.location.strip())

    def load(self) -> LabelledSet | None:
        if not self.configured:
            return None
        path = Path(self.location).expanduser()
        if not path.exists():
            raise dg.Failure(f"labelled set {path} does not exist (IMAGE_PIPELINE_LABELLED)")
        return load_labelled(path)
