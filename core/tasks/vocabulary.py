"""Label values shared by the VLM tasks and the CLIP zero-shot label sets.

Both sides draw their allowed values from here, so a zero-shot label and an extracted field can be
compared value for value (agreement checks, side-by-side evaluation).
"""

from __future__ import annotations

from typing import Literal, get_args

Scenery = Literal["blue_sky", "cloudy", "golden_hour", "indoors", "night_time"]
AgeBin = Literal["18-20", "21-30", "31-40", "41-50", "51-60"]
Gender = Literal["female", "male"]
BasketballAction = Literal["shooting", "dribbling", "passing"]

SCENERY: tuple[str, ...] = get_args(Scenery)
AGE_BINS: tuple[str, ...] = get_args(AgeBin)  # ordinal: adjacent bins are neighbours
GENDERS: tuple[str, ...] = get_args(Gender)
BASKETBALL_ACTIONS: tuple[str, ...] = get_args(BasketballAction)
