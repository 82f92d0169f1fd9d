"""CSV tables as sources hold them: read as text, one type per column, columns named as fields."""

from __future__ import annotations

import datetime as dt
import math
import re
import warnings
from pathlib import Path

import pandas as pd

from fieldguide.errors import IngestError
from fieldguide.platform.sources.records import Record, printable

# sample fields that a free column never writes (a column of that name becomes ``csv_<name>``)
RESERVED_FIELDS = {"id", "filepath", "tags", "metadata", "media_type", "ground_truth", "votes",
                   "origin", "parent_id", "filehash", "location", "observed_at", "observer",
                   "observation_id", "taxonomy", "label_history", "prediction", "created_at",
                   "last_modified_at"}


def read_manifest(path: Path, what: str = "CSV") -> pd.DataFrame:
    """A CSV as text cells; an IngestError (one line) when it is missing, unreadable or malformed."""
    if not path.exists():
        raise IngestError(f"{path}: {what} file does not exist")
    if not path.is_file():
        raise IngestError(f"{path}: the {what} is a folder, not a file")
    try:
        with warnings.catch_warnings():
            # a first row longer than the header would silently become the index, shifting columns
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError:
        raise IngestError(f"{path}: the {what} is empty") from None
    except pd.errors.ParserWarning:
        raise IngestError(f"{path}: malformed {what} (a row has more fields than the header)") from None
    except UnicodeDecodeError:
        raise IngestError(f"{path}: {not_utf8(path, what)}") from None
    except pd.errors.ParserError as e:
        raise IngestError(f"{path}: malformed {what} ({str(e).strip().splitlines()[0]})") from None
    except OSError as e:
        raise IngestError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if df.empty:
        raise IngestError(f"{path}: the {what} has a header but no rows")
    return df


def not_utf8(path: Path, what: str) -> str:
    """Which line of ``path`` is not UTF-8 (a parser's error position is within its buffer)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = f"line {line}; "
    return f"the {what} is not UTF-8 text ({where}save it as UTF-8)"


def pick(columns: list[str], aliases: tuple[str, ...]) -> str | None:
    """The first column that is one of ``aliases`` (case, spaces and underscores ignored)."""
    lowered = {c.lower().replace(" ", "").replace("_", ""): c for c in columns}
    for alias in aliases:
        key = alias.replace("_", "")
        if key in lowered:
            return lowered[key]
    return None


def field_name(column: str) -> str:
    """The sample field a column becomes: snake_case, never one of :data:`RESERVED_FIELDS`."""
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", column.strip()).strip("_").lower() or "column"
    if name[0].isdigit():
        name = "c_" + name
    return "csv_" + name if name in RESERVED_FIELDS else name


_INT_RE = re.compile(r"[+-]?(0|[1-9][0-9]*)")


def column_cast(values) -> type:
    """One type per column (a field has one type): int, float, else text.

    Codes with leading zeros ("01234") stay text.
    """
    cells = [v.strip() for v in values if v and v.strip()]
    if cells and all(_INT_RE.fullmatch(v) for v in cells):
        return int
    try:
        if cells and all(math.isfinite(float(v)) for v in cells):
            return float
    except ValueError:
        pass
    return str


def typed(value: str | None, cast: type = str):
    """Cells arrive as text: give them their column's type, empty cells become None."""
    value = (value or "").strip()
    return cast(value) if value else None


def clean(value):
    """A field value as it is stored: None for missing (NaN, empty text), plain Python scalars."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


_TYPE_NAMES = {int: "whole numbers", float: "numbers", str: "text", dt.datetime: "dates", dict: "ranks"}


def check_field_types(ds, records: list[Record], source: Path) -> None:
    """Each field the records set must fit the store's field of that name (a mismatch would
    fail in the middle of ``add_samples``)."""
    import fiftyone as fo

    if ds is None:
        return
    accepts = {fo.IntField: int, fo.FloatField: (int, float), fo.StringField: str, fo.DateTimeField: dt.datetime,
               fo.DictField: dict}
    holds = {fo.IntField: int, fo.FloatField: float, fo.StringField: str, fo.DateTimeField: dt.datetime,
             fo.DictField: dict}
    schema = ds.get_field_schema()
    for record in records:
        for name, value in {**record.fields, "taxonomy": record.taxonomy or None}.items():
            value = clean(value)
            if value is None or name == "location" or name not in schema:
                continue
            kind = type(schema[name])
            if not isinstance(value, accepts.get(kind, ())):
                raise IngestError(
                    f"{source}: field {name!r} would get {_TYPE_NAMES.get(type(value), type(value).__name__)} "
                    f"({value!r} for {printable(str(record.filepath))}), but the store's {name!r} holds "
                    f"{_TYPE_NAMES.get(holds.get(kind), kind.__name__)} (rename the column or fix its values)"
                )
