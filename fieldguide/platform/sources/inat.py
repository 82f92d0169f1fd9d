"""An iNaturalist observation export (CSV), its photos in ``--images`` named by observation id.

Columns kept as the sample's observation fields: ``id`` (``observation_id``), ``observed_on`` or
``time_observed_at`` (``observed_at``), ``latitude``/``longitude`` (``location``), ``user_login``
(``observer``), ``taxon_<rank>_name`` (``taxonomy``); every other column is a field of its own
name. The label is ``scientific_name``, or the ``taxon_<rank>_name`` that ``--label-rank`` picks.
"""

from __future__ import annotations

from pathlib import Path

from fieldguide.errors import IngestError
from fieldguide.platform.sources.observations import (
    find_photos, no_photo_reason, observed, photo_records,
)
from fieldguide.platform.sources.records import SPLIT_NAMES, Record, Reject, SourceOptions
from fieldguide.platform.sources.registry import register
from fieldguide.platform.sources.tables import column_cast, field_name, read_manifest, typed
from fieldguide.platform.sources.taxonomy import RANKS, rank_of

ID, LABEL, PHOTO_URL = "id", "scientific_name", "image_url"
DATES = ("time_observed_at", "observed_on")  # the first one a row fills is its time
LATITUDE, LONGITUDE, OBSERVER, SPLIT = "latitude", "longitude", "user_login", "split"


def _label_column(path: Path, columns: list[str], ranks: dict[str, str], label_rank: str | None) -> str:
    if label_rank is None:
        if LABEL not in columns:
            raise IngestError(f"{path}: no column {LABEL!r} for the label (set --label-rank to a rank of "
                              f"{', '.join(ranks) or 'the taxon_<rank>_name columns: there are none'})")
        return LABEL
    if label_rank not in ranks:
        raise IngestError(f"{path}: no column 'taxon_{label_rank}_name' for --label-rank {label_rank} "
                          f"(ranks in the export: {', '.join(ranks) or 'none'})")
    return ranks[label_rank]


@register("inat", takes="csv", options=("images", "label_rank"))
def read_inat(path: Path, options: SourceOptions, problems: list[Reject]) -> list[Record]:
    """One record per photo of each observation; an observation without a photo is a reject."""
    df = read_manifest(path, "iNaturalist export")
    columns = list(df.columns)
    if ID not in columns:
        raise IngestError(f"{path}: not an iNaturalist export, no column 'id' (columns: {', '.join(columns)})")
    ranks = {rank: f"taxon_{rank}_name" for rank in RANKS if f"taxon_{rank}_name" in columns}
    label_col = _label_column(path, columns, ranks, options.label_rank)
    dates = [c for c in DATES if c in columns]
    used = {ID, label_col, LATITUDE, LONGITUDE, OBSERVER, SPLIT, *dates, *ranks.values()}
    extra = {c: field_name(c) for c in columns if c not in used}
    casts = {c: column_cast(df[c]) for c in extra}
    images = options.images or path.parent
    photos = find_photos(images, set(df[ID].str.strip()) - {""}, options.extensions, problems)
    records = []
    for row_no, row in enumerate(df.to_dict("records"), start=2):
        where, obs_id = f"{path}:{row_no}", row[ID].strip()
        if not obs_id:
            problems.append(Reject(where, "observation without an id"))
            continue
        fields = {name: typed(row[c], casts[c]) for c, name in extra.items()}
        date_col = next((c for c in dates if row[c].strip()), dates[0] if dates else "")
        try:
            fields.update(observed(obs_id, date=row.get(date_col, ""), date_column=date_col,
                                   latitude=row.get(LATITUDE, ""), longitude=row.get(LONGITUDE, ""),
                                   observer=row.get(OBSERVER, "")))
        except ValueError as e:
            problems.append(Reject(where, str(e)))
            continue
        split = row.get(SPLIT, "").strip()
        if split and split.lower() not in SPLIT_NAMES:
            problems.append(Reject(where, f"observation {obs_id}: unknown split {split!r}"))
            continue
        label = row[label_col].strip() or None
        taxonomy = {rank: row[c].strip() for rank, c in ranks.items() if row[c].strip()}
        label_rank = (options.label_rank or rank_of(label, taxonomy)) if label else None
        if obs_id not in photos:
            listed = int(bool(row[PHOTO_URL].strip())) if PHOTO_URL in columns else None
            problems.append(Reject(where, no_photo_reason(obs_id, images, listed)))
            continue
        split = "unlabeled" if label is None else SPLIT_NAMES.get(split.lower(), "train")
        records += photo_records(obs_id, photos[obs_id], label, split, fields, taxonomy, label_rank)
    return records
