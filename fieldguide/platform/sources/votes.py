"""Crowd votes: a CSV of ``filepath, annotator, label[, time]`` read before anything is written,
then merged into the samples' ``votes`` (one vote per annotator and sample)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from fieldguide.errors import IngestError
from fieldguide.platform import store
from fieldguide.platform.sources.csv import resolve_path
from fieldguide.platform.sources.records import Reject
from fieldguide.platform.sources.tables import clean, read_manifest

VOTE_COLUMNS = ("filepath", "annotator", "label")


def read_votes(path: Path) -> pd.DataFrame:
    """The crowd-votes CSV, checked before anything is written: columns ``filepath``,
    ``annotator``, ``label`` and an optional ``time`` (any case), renamed to lower case."""
    df = read_manifest(path, "votes CSV")
    cols = {c.strip().lower(): c for c in df.columns}
    if any(need not in cols for need in VOTE_COLUMNS):
        raise IngestError(f"{path}: votes CSV needs columns filepath, annotator, label (has {', '.join(df.columns)})")
    keep = [c for c in (*VOTE_COLUMNS, "time") if c in cols]
    df = df[[cols[c] for c in keep]].set_axis(keep, axis=1)
    return df.apply(lambda column: column.str.strip())


def ingest_votes(ds, votes: pd.DataFrame, path: Path, rejects: list[Reject], *, root: Path | None = None) -> int:
    """Crowd votes (rows of :func:`read_votes`: filepath, annotator, label[, time]) into ``votes``.

    Relative paths resolve against ``root`` (default: the votes CSV's folder). A vote replaces the
    same annotator's earlier vote on that sample, so re-running adds nothing.
    """
    import fiftyone as fo

    id_by_path = dict(zip(*ds.values(["filepath", "id"])))
    current = dict(zip(*ds.values(["id", "votes"])))
    updates: dict[str, dict[str, fo.Classification]] = {}
    added = 0
    for row_no, row in enumerate(votes.to_dict("records"), start=2):
        try:
            p = resolve_path(row["filepath"], root or path.parent).resolve()
        except (OSError, RuntimeError) as e:
            rejects.append(Reject(f"{path}:{row_no}", f"cannot resolve path: {e}"))
            continue
        sid = id_by_path.get(str(p))
        annotator, label = row["annotator"], row["label"]
        if sid is None:
            rejects.append(Reject(f"{path}:{row_no}", f"vote for {p}, which is not in the store"))
            continue
        if not annotator or not label:
            rejects.append(Reject(f"{path}:{row_no}", "vote without an annotator or a label"))
            continue
        if sid not in updates:
            old = current.get(sid)
            updates[sid] = {c.annotator: c for c in (old.classifications if old else [])}
        when = clean(row.get("time"))
        when = pd.to_datetime(when, errors="coerce", utc=True) if when else None
        if when is not None and pd.isna(when):
            rejects.append(Reject(f"{path}:{row_no}", f"bad vote time {row['time']!r}"))
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
