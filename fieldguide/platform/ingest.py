"""Ingest a folder, a CUB-style folder or a CSV manifest of observations into the store.

Each source is first read into records (file path, label, split, observation fields); each
record's image is then checked (exists, inside the source, decodes fully) and described
(size, channels, content hash) in a thread pool; good records are added in one bulk
``add_samples``; bad ones go to the rejects report (``runs/<run>/rejects.csv`` and the
warehouse ``rejects`` table). A file already in the store is never added twice.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import logging
import math
import mimetypes
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from fieldguide.config import Project
from fieldguide.errors import IngestError
from fieldguide.platform import store

log = logging.getLogger(__name__)

FORMATS = ("folder", "cub", "csv")
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
              "unlabeled": "unlabeled", "unlabelled": "unlabeled"}
LAT_COLUMNS = ("latitude", "lat", "decimallatitude")
LON_COLUMNS = ("longitude", "lon", "lng", "long", "decimallongitude")
DATE_COLUMNS = ("observed_at", "observed_on", "observed", "date", "eventdate", "datetime")
OBSERVER_COLUMNS = ("observer", "recordedby", "user", "user_login", "annotator")
SPLIT_COLUMNS = ("split",)
RESERVED_FIELDS = {"id", "filepath", "tags", "metadata", "media_type", "ground_truth", "votes",
                   "origin", "parent_id", "filehash", "location", "observed_at", "observer",
                   "label_history", "prediction", "created_at", "last_modified_at"}


@dataclass
class Record:
    filepath: Path
    label: str | None
    split: str
    fields: dict = field(default_factory=dict)


@dataclass
class Reject:
    path: str
    reason: str


@dataclass
class IngestReport:
    run_id: str
    source: str
    format: str
    added: int = 0
    existing: int = 0
    rejects: list[Reject] = field(default_factory=list)
    votes_added: int = 0
    classes_added: int = 0
    rejects_path: str | None = None

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "source": self.source,
            "format": self.format,
            "added": self.added,
            "existing": self.existing,
            "rejected": len(self.rejects),
            "votes_added": self.votes_added,
            "classes_added": self.classes_added,
            "rejects_report": self.rejects_path,
        }


# ---- reading sources into records -------------------------------------------------------
def _is_image(path: Path, extensions: set[str]) -> bool:
    return path.is_file() and path.suffix.lower() in extensions


def read_folder(source: Path, extensions: set[str]) -> list[Record]:
    """``SOURCE/<class>/<image>``, optionally under split folders ``SOURCE/<split>/<class>/``."""
    subdirs = sorted(p for p in source.iterdir() if p.is_dir())
    if not subdirs:
        raise IngestError(f"{source}: no class folders found (expected SOURCE/<class>/<image>)")
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_DIRS]
    layout = split_dirs if len(split_dirs) == len(subdirs) else []
    roots = [(SPLIT_DIRS[d.name.lower()], d) for d in layout] or [("train", source)]
    records = []
    for split, root in roots:
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            label = None if split == "unlabeled" else class_dir.name
            for path in sorted(class_dir.rglob("*")):
                if _is_image(path, extensions):
                    records.append(Record(path, label, split))
        if split == "unlabeled":  # unlabeled images may also sit loose in the split folder
            records += [Record(p, None, split) for p in sorted(root.iterdir()) if _is_image(p, extensions)]
    return records


def read_cub(source: Path) -> list[Record]:
    """The CUB-200 layout: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt."""
    needed = ["images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt"]
    missing = [n for n in needed if not (source / n).is_file()]
    if missing:
        raise IngestError(f"{source}: not a CUB folder, missing {', '.join(missing)}")

    def table(name: str) -> dict[str, str]:
        rows = {}
        for line_no, line in enumerate((source / name).read_text().splitlines(), 1):
            if line.strip():
                m = re.match(r"^\s*([^\s,]+)\s*[,\s]\s*(.+?)\s*$", line)
                if not m:
                    raise IngestError(f"{source / name}:{line_no}: expected '<id> <value>', got {line!r}")
                rows[m.group(1)] = m.group(2)
        return rows

    images, labels = table("images.txt"), table("image_class_labels.txt")
    classes, splits = table("classes.txt"), table("train_test_split.txt")
    records = []
    for image_id, rel in images.items():
        class_name = classes.get(labels.get(image_id, ""))
        label = re.sub(r"^\d+\.", "", class_name) if class_name else None  # "001.Black_footed_Albatross"
        split = {"0": "train", "1": "test"}.get(splits.get(image_id, ""), "train")
        records.append(Record(source / "images" / rel, label, split if label else "unlabeled",
                              {"source_id": image_id}))
    return records


def _pick(columns: list[str], aliases: tuple[str, ...]) -> str | None:
    lowered = {c.lower().replace(" ", "").replace("_", ""): c for c in columns}
    for alias in aliases:
        key = alias.replace("_", "")
        if key in lowered:
            return lowered[key]
    return None


def _field_name(column: str) -> str:
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", column.strip()).strip("_").lower() or "column"
    if name[0].isdigit():
        name = "c_" + name
    return "csv_" + name if name in RESERVED_FIELDS else name


def _clean(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def read_manifest(path: Path, what: str = "CSV") -> pd.DataFrame:
    if not path.is_file():
        raise IngestError(f"{path}: {what} file does not exist")
    try:
        with warnings.catch_warnings():
            # a first row longer than the header would silently become the index, shifting columns
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError:
        raise IngestError(f"{path}: the {what} is empty") from None
    except pd.errors.ParserWarning:
        raise IngestError(f"{path}: malformed {what} (a row has more fields than the header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise IngestError(f"{path}: malformed {what} ({str(e).strip().splitlines()[0]})") from None
    if df.empty:
        raise IngestError(f"{path}: the {what} has a header but no rows")
    return df


_INT_RE = re.compile(r"[+-]?(0|[1-9][0-9]*)")


def _column_cast(values) -> type:
    """One type per CSV column (a field has one type): int, float, else text.

    Codes with leading zeros ("01234") stay text.
    """
    cells = [v.strip() for v in values if v.strip()]
    if cells and all(_INT_RE.fullmatch(v) for v in cells):
        return int
    try:
        if cells and all(math.isfinite(float(v)) for v in cells):
            return float
    except ValueError:
        pass
    return str


def _typed(value: str, cast: type = str):
    """CSV cells arrive as text: give them their column's type, empty cells become None."""
    value = value.strip()
    return cast(value) if value else None


def read_csv(path: Path, *, filepath_column: str = "filepath", label_column: str = "label",
             rejects: list[Reject]) -> list[Record]:
    """A manifest: a file path column (relative to the CSV's folder), a label column, the rest fields."""
    df = read_manifest(path)
    for column, option in ((filepath_column, "--filepath-column"), (label_column, "--label-column")):
        if column not in df.columns:
            raise IngestError(
                f"{path}: no column {column!r} (columns: {', '.join(df.columns)}; set {option})"
            )
    columns = list(df.columns)
    lat, lon = _pick(columns, LAT_COLUMNS), _pick(columns, LON_COLUMNS)
    date, observer = _pick(columns, DATE_COLUMNS), _pick(columns, OBSERVER_COLUMNS)
    split_col = _pick(columns, SPLIT_COLUMNS)
    used = {filepath_column, label_column, lat, lon, date, observer, split_col} - {None}
    extra = {c: _field_name(c) for c in columns if c not in used}
    casts = {c: _column_cast(df[c]) for c in extra}
    records = []
    for row_no, row in enumerate(df.to_dict("records"), start=2):
        raw_path = row[filepath_column].strip()
        if not raw_path:
            rejects.append(Reject(f"{path}:{row_no}", "empty file path"))
            continue
        label = row[label_column].strip() or None
        fields = {name: _typed(row[c], casts[c]) for c, name in extra.items()}
        if lat and lon and row[lat].strip() and row[lon].strip():
            try:
                fields["location"] = (float(row[lon]), float(row[lat]))
                if not (abs(fields["location"][1]) <= 90 and abs(fields["location"][0]) <= 180):
                    raise ValueError("out of range")
            except ValueError:
                rejects.append(Reject(f"{path}:{row_no}", f"bad latitude/longitude {row[lat]!r}, {row[lon]!r}"))
                continue
        if date and row[date].strip():
            parsed = pd.to_datetime(row[date].strip(), errors="coerce", utc=True)
            if pd.isna(parsed):
                rejects.append(Reject(f"{path}:{row_no}", f"bad date {row[date]!r} in column {date!r}"))
                continue
            fields["observed_at"] = parsed.to_pydatetime().replace(tzinfo=None)
        if observer and row[observer].strip():
            fields["observer"] = row[observer].strip()
        split = SPLIT_DIRS.get(row[split_col].strip().lower(), "") if split_col else ""
        if split_col and row[split_col].strip() and not split:
            rejects.append(Reject(f"{path}:{row_no}", f"unknown split {row[split_col]!r}"))
            continue
        if label is None:
            split = "unlabeled"
        records.append(Record(path.parent / raw_path, label, split or "train", fields))
    return records


# ---- checking images -----------------------------------------------------------------------
def describe_image(path: Path) -> dict:
    """Decode the whole image (a truncated file fails here) and return its metadata and hash."""
    data = path.read_bytes()
    with Image.open(path) as im:
        im.load()
        width, height = im.size
        channels = len(im.getbands())
        fmt = im.format
    mime = Image.MIME.get(fmt or "", None) or mimetypes.guess_type(path.name)[0] or "image"
    return {
        "width": width,
        "height": height,
        "num_channels": channels,
        "size_bytes": len(data),
        "mime_type": mime,
        "filehash": hashlib.sha1(data).hexdigest(),
    }


def _check(record: Record, root: Path) -> tuple[Record, dict | None, str | None]:
    path = Path(record.filepath)
    try:
        resolved = path.resolve()
    except OSError as e:
        return record, None, f"cannot resolve path: {e}"
    if not resolved.is_relative_to(root):
        return record, None, f"outside the source folder {root}"
    if not resolved.exists():
        return record, None, "file does not exist"
    if not resolved.is_file():
        return record, None, "not a file"
    record.filepath = resolved
    try:
        return record, describe_image(resolved), None
    except UnidentifiedImageError:
        return record, None, "not an image (cannot identify the format)"
    except (OSError, SyntaxError, ValueError) as e:
        return record, None, f"corrupt or truncated image ({e})"
    except Image.DecompressionBombError as e:
        return record, None, f"image too large ({e})"


def check_records(records: list[Record], root: Path, workers: int, rejects: list[Reject]) -> list[tuple[Record, dict]]:
    good, seen, rejected = [], set(), set()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda r: _check(r, root), records, chunksize=32)
        for record, meta, reason in tqdm(results, total=len(records), desc="checking images", unit="img", disable=None):
            path = str(record.filepath)
            if path in rejected:  # one reject per file (the report's key), however often it is listed
                continue
            if reason or path in seen:
                rejects.append(Reject(path, reason or "listed twice in the source"))
                rejected.add(path)
            else:
                seen.add(path)
                good.append((record, meta))
    return good


# ---- writing to the store ------------------------------------------------------------------
def _to_sample(record: Record, meta: dict):
    import fiftyone as fo

    fields = dict(record.fields)
    location = fields.pop("location", None)
    sample = fo.Sample(
        filepath=str(record.filepath),
        tags=[record.split],
        origin="real",
        filehash=meta["filehash"],
        metadata=fo.ImageMetadata(
            size_bytes=meta["size_bytes"], mime_type=meta["mime_type"], width=meta["width"],
            height=meta["height"], num_channels=meta["num_channels"],
        ),
    )
    if record.label is not None:
        sample["ground_truth"] = fo.Classification(label=record.label)
    if location is not None:
        sample["location"] = fo.GeoLocation(point=list(location))
    for key, value in fields.items():
        value = _clean(value)
        if value is not None:
            sample[key] = value
    return sample


def ingest(project: Project, source: str | Path, *, fmt: str = "folder",
           filepath_column: str = "filepath", label_column: str = "label",
           root: str | Path | None = None, votes: str | Path | None = None,
           strict: bool = False) -> IngestReport:
    """Ingest ``source`` into the project's dataset; see the module docstring."""
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise IngestError(f"{source} does not exist")
    if fmt == "csv" and not source.is_file():
        raise IngestError(f"{source}: --format csv needs a CSV file")
    if fmt != "csv" and not source.is_dir():
        raise IngestError(f"{source}: --format {fmt} needs a folder")
    allowed_root = Path(root).expanduser().resolve() if root else (source.parent if fmt == "csv" else source)
    extensions = {e.lower() for e in project.config.ingest.extensions}
    wh = store.warehouse(project)
    config = {"source": str(source), "format": fmt, "strict": strict, "votes": str(votes) if votes else None}
    with wh.run("ingest", config) as run_id:
        report = IngestReport(run_id=run_id, source=str(source), format=fmt)
        if fmt == "folder":
            records = read_folder(source, extensions)
        elif fmt == "cub":
            records = read_cub(source)
        else:
            records = read_csv(source, filepath_column=filepath_column, label_column=label_column,
                               rejects=report.rejects)
        good = check_records(records, allowed_root, project.config.ingest.workers, report.rejects)
        if strict and report.rejects:
            _write_rejects(project, report)
            first = report.rejects[0]
            raise IngestError(
                f"{len(report.rejects)} reject(s) with --strict, nothing ingested "
                f"(first: {first.path}: {first.reason}; report {report.rejects_path})"
            )
        ds = store.dataset(project)
        existing = set(ds.values("filepath"))
        new = [(r, m) for r, m in good if str(r.filepath) not in existing]
        report.existing = len(good) - len(new)
        report.classes_added = len(store.add_classes(ds, {r.label for r, _ in new if r.label}))
        if new:
            samples = [_to_sample(r, m) for r, m in new]
            # FiftyOne's bar prints to stdout: keep stdout for results (--json), bars on a terminal only
            with contextlib.redirect_stdout(sys.stderr):
                ds.add_samples(samples, progress=sys.stderr.isatty())
        report.added = len(new)
        if votes:
            report.votes_added = ingest_votes(project, ds, Path(votes).expanduser().resolve(), report.rejects)
        _write_rejects(project, report)
        store.snapshot_samples(project, ds)
    return report


def _write_rejects(project: Project, report: IngestReport) -> None:
    path = project.run_dir(report.run_id) / "rejects.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows((r.path, r.reason) for r in report.rejects)
    report.rejects_path = str(path)
    store.warehouse(project).write(
        "rejects", [{"run_id": report.run_id, "path": r.path, "reason": r.reason} for r in report.rejects]
    )


def ingest_votes(project: Project, ds, path: Path, rejects: list[Reject]) -> int:
    """Crowd votes from a CSV (filepath, annotator, label[, time]) into ``votes``.

    A vote replaces the same annotator's earlier vote on that sample, so re-running adds nothing.
    """
    import fiftyone as fo

    df = read_manifest(path, "votes CSV")
    cols = {c.lower(): c for c in df.columns}
    for need in ("filepath", "annotator", "label"):
        if need not in cols:
            raise IngestError(f"{path}: votes CSV needs columns filepath, annotator, label (has {', '.join(df.columns)})")
    id_by_path = dict(zip(*ds.values(["filepath", "id"])))
    current = dict(zip(*ds.values(["id", "votes"])))
    updates: dict[str, dict[str, fo.Classification]] = {}
    added = 0
    for row_no, row in enumerate(df.to_dict("records"), start=2):
        p = (path.parent / row[cols["filepath"]].strip()).resolve()
        sid = id_by_path.get(str(p))
        annotator, label = row[cols["annotator"]].strip(), row[cols["label"]].strip()
        if sid is None:
            rejects.append(Reject(f"{path}:{row_no}", f"vote for {p}, which is not in the store"))
            continue
        if not annotator or not label:
            rejects.append(Reject(f"{path}:{row_no}", "vote without an annotator or a label"))
            continue
        if sid not in updates:
            old = current.get(sid)
            updates[sid] = {c.annotator: c for c in (old.classifications if old else [])}
        when = _clean(row.get(cols.get("time", ""), None)) if "time" in cols else None
        when = pd.to_datetime(when, errors="coerce", utc=True) if when else None
        if when is not None and pd.isna(when):
            rejects.append(Reject(f"{path}:{row_no}", f"bad vote time {row[cols['time']]!r}"))
            continue
        prev = updates[sid].get(annotator)
        if prev is None or prev.label != label:
            added += int(prev is None)
            updates[sid][annotator] = fo.Classification(
                label=label, annotator=annotator,
                time=when.to_pydatetime().replace(tzinfo=None) if when is not None else dt.datetime(1970, 1, 1),
            )
    if updates:
        ds.set_values("votes", {sid: fo.Classifications(classifications=list(v.values()))
                                for sid, v in updates.items()}, key_field="id")
        store.add_classes(ds, {c.label for v in updates.values() for c in v.values()})
    return added
