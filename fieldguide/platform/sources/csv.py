"""A CSV manifest: a file path column, a label column, observation columns, the rest as fields.

Paths are taken as users write them: absolute paths as they are, relative ones against the
CSV's folder (or ``--root``). ``--ranks family,genus`` names the columns that hold the ranks
above the label (coarse to fine); the label is then at ``--label-rank`` (default ``species``).
"""

from __future__ import annotations

import re
from pathlib import Path

from fieldguide.errors import IngestError
from fieldguide.platform.sources.observations import parse_date, parse_location
from fieldguide.platform.sources.records import SPLIT_NAMES, Record, Reject, SourceOptions
from fieldguide.platform.sources.registry import register
from fieldguide.platform.sources.tables import column_cast, field_name, pick, read_manifest, typed

LAT_COLUMNS = ("latitude", "lat", "decimallatitude")
LON_COLUMNS = ("longitude", "lon", "lng", "long", "decimallongitude")
DATE_COLUMNS = ("observed_at", "observed_on", "observed", "date", "eventdate", "datetime")
OBSERVER_COLUMNS = ("observer", "recordedby", "user", "user_login", "annotator")
OBSERVATION_COLUMNS = ("observation_id", "observation", "obs_id", "inat_id", "occurrence_id")
SPLIT_COLUMNS = ("split",)
DEFAULT_LABEL_RANK = "species"


def rank_name(column: str) -> str:
    return re.sub(r"\W+", "_", column.strip().lower()).strip("_")


def _need_columns(path: Path, columns: list[str], needed: list[tuple[str, str]]) -> None:
    for column, option in needed:
        if column not in columns:
            raise IngestError(f"{path}: no column {column!r} (columns: {', '.join(columns)}; set {option})")


def resolve_path(raw: str, base: Path) -> Path:
    """A path as written: absolute as it is (``~`` expanded), relative against ``base``."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base / path


@register("csv", takes="csv", options=("filepath_column", "label_column", "root", "label_rank", "ranks"))
def read_csv(path: Path, options: SourceOptions, problems: list[Reject]) -> list[Record]:
    """One row per image; rows that cannot be read are rejects (``<csv>:<row>``)."""
    df = read_manifest(path)
    columns = list(df.columns)
    _need_columns(path, columns, [(options.filepath_column, "--filepath-column"),
                                  (options.label_column, "--label-column"),
                                  *((rank, "--ranks") for rank in options.ranks)])
    lat, lon = pick(columns, LAT_COLUMNS), pick(columns, LON_COLUMNS)
    date, observer = pick(columns, DATE_COLUMNS), pick(columns, OBSERVER_COLUMNS)
    split_col, obs_col = pick(columns, SPLIT_COLUMNS), pick(columns, OBSERVATION_COLUMNS)
    used = {options.filepath_column, options.label_column, lat, lon, date, observer, split_col, obs_col,
            *options.ranks} - {None}
    extra = {c: field_name(c) for c in columns if c not in used}
    casts = {c: column_cast(df[c]) for c in extra}
    label_rank = options.label_rank or (DEFAULT_LABEL_RANK if options.ranks else None)
    base = options.root or path.parent
    records = []
    for row_no, row in enumerate(df.to_dict("records"), start=2):
        where = f"{path}:{row_no}"
        raw_path = row[options.filepath_column].strip()
        if not raw_path:
            problems.append(Reject(where, "empty file path"))
            continue
        label = row[options.label_column].strip() or None
        fields = {name: typed(row[c], casts[c]) for c, name in extra.items()}
        if lat and lon and row[lat].strip() and row[lon].strip():
            try:
                fields["location"] = parse_location(row[lat], row[lon])
            except ValueError:
                problems.append(Reject(where, f"bad latitude/longitude {row[lat]!r}, {row[lon]!r}"))
                continue
        if date and row[date].strip():
            try:
                fields["observed_at"] = parse_date(row[date])
            except ValueError:
                problems.append(Reject(where, f"bad date {row[date]!r} in column {date!r}"))
                continue
        if observer and row[observer].strip():
            fields["observer"] = row[observer].strip()
        if obs_col and row[obs_col].strip():
            fields["observation_id"] = row[obs_col].strip()
        split = SPLIT_NAMES.get(row[split_col].strip().lower(), "") if split_col else ""
        if split_col and row[split_col].strip() and not split:
            problems.append(Reject(where, f"unknown split {row[split_col]!r}"))
            continue
        taxonomy = {rank_name(c): row[c].strip() for c in options.ranks if row[c].strip()}
        if label is not None and label_rank:
            taxonomy[label_rank] = label
        records.append(Record(resolve_path(raw_path, base), label, "unlabeled" if label is None else split or "train",
                              fields, taxonomy, label_rank if label is not None else None))
    return records
