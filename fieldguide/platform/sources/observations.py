"""What observation sources (iNaturalist, Darwin Core) share: dates, places and photos by id.

Photos sit in one folder (``--images``), each named after its observation: ``<id>.<ext>`` or
``<id>_<k>.<ext>`` for its k-th photo. Every photo of an observation is one sample, and all of
them carry its fields and its ``observation_id`` (so they stay in one split).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fieldguide.platform.sources.records import Notice, Record, Reject, is_image, printable

_PHOTO_OF = re.compile(r"^(?P<id>.+)_(?P<k>\d+)$")
_ISO_RANGE = re.compile(r"^\d{4}(-\d\d){0,2}(T[^/]*)?/")


def parse_date(text: str) -> dt.datetime:
    """A date or time (ISO 8601, with or without zone) as naive UTC; a range gives its start.

    Raises ValueError for text that is not a date.
    """
    text = text.strip()
    if _ISO_RANGE.match(text):  # Darwin Core eventDate may be a range "2017-03-02/2017-03-05"
        text = text.split("/")[0]
    parsed = pd.to_datetime(text, errors="coerce", utc=True)
    if pd.isna(parsed):
        raise ValueError(f"not a date: {text!r}")
    return parsed.to_pydatetime().replace(tzinfo=None)


def parse_location(latitude: str, longitude: str) -> tuple[float, float]:
    """(longitude, latitude), GeoJSON order; ValueError when not numbers or out of range."""
    lat, lon = float(latitude), float(longitude)
    if not (abs(lat) <= 90 and abs(lon) <= 180):
        raise ValueError("out of range")
    return lon, lat


def observed(obs_id: str, *, date: str, date_column: str, latitude: str, longitude: str, observer: str) -> dict:
    """The observation fields ``observed_at``, ``location`` and ``observer`` (empty text: not set).

    Raises ValueError with the reject's reason for a bad date or place.
    """
    fields: dict = {}
    if date.strip():
        try:
            fields["observed_at"] = parse_date(date)
        except ValueError:
            raise ValueError(f"observation {obs_id}: bad date {date!r} in {date_column!r}") from None
    if latitude.strip() and longitude.strip():
        try:
            fields["location"] = parse_location(latitude, longitude)
        except ValueError:
            raise ValueError(f"observation {obs_id}: bad latitude/longitude {latitude!r}, {longitude!r}") from None
    if observer.strip():
        fields["observer"] = observer.strip()
    return fields


def find_photos(images: Path, ids: set[str], extensions: frozenset[str],
                problems: list[Reject]) -> dict[str, list[tuple[int, Path]]]:
    """Observation id -> its photos under ``images`` as (k, path), in photo order (``<id>`` is k 0).

    Images named after no observation are not ingested: one notice says how many.
    """
    found: dict[str, list[tuple[int, str, Path]]] = {}
    strays = []
    for path in sorted(images.rglob("*")):
        if not is_image(path, extensions):
            continue
        stem, k = path.stem, 0
        if stem not in ids:
            m = _PHOTO_OF.match(stem)
            if not (m and m["id"] in ids):
                strays.append(path)
                continue
            stem, k = m["id"], int(m["k"])
        found.setdefault(stem, []).append((k, path.name, path))
    if strays:
        shown = ", ".join(printable(p.name) for p in strays[:3]) + (", ..." if len(strays) > 3 else "")
        problems.append(Notice(str(images), f"{len(strays)} image(s) named after no observation id of the "
                                            f"source, not ingested ({shown})"))
    return {i: [(k, p) for k, _, p in sorted(photos)] for i, photos in found.items()}


def no_photo_reason(obs_id: str, images: Path, listed: int | None) -> str:
    """Why an observation adds nothing: the ``listed`` photos of the source are missing, it lists
    none, or (``listed`` None: the source does not say) no file is named after it."""
    where = f"no file {obs_id}.* or {obs_id}_<k>.* in {images}"
    if listed:
        return f"observation {obs_id}: photo missing ({where}; the source lists {listed})"
    if listed == 0:
        return f"observation {obs_id}: no photo (the source lists none, and {where})"
    return f"observation {obs_id}: no photo ({where})"


def photo_records(obs_id: str, photos: list[tuple[int, Path]], label: str | None, split: str, fields: dict,
                  taxonomy: dict[str, str], label_rank: str | None,
                  photo_fields: Callable[[int], dict] | None = None) -> list[Record]:
    """One record per photo (k, path) of an observation; ``photo_fields(k)`` adds to its fields."""
    return [
        Record(path, label, split, {**fields, **(photo_fields(k) if photo_fields else {}), "observation_id": obs_id},
               dict(taxonomy), label_rank)
        for k, path in photos
    ]
