"""``csv``: ``labels.csv``, one row per sample with its label, origin and last label change.

The file lists the store's image paths (no images are written); ``fieldguide ingest
DIR/labels.csv --format csv`` reads it back (``filepath``, ``label`` and ``split`` columns).
"""

from __future__ import annotations

import pandas as pd

from fieldguide.platform.exports.registry import ExportJob, register_format
from fieldguide.platform.spreadsheet import neutralise_formula_cells

FILENAME = "labels.csv"
COLUMNS = ["filepath", "label", "split", "origin", "sample_id", "observation_id",
           "changed_by", "changed_at", "change_source", "previous_label"]


@register_format("csv", media=False, labeled_only=False,
                 summary="labels.csv: path, label, split, origin and the last label change of each sample")
def write_csv(job: ExportJob) -> int:
    t = job.table
    change = [c or {} for c in t["last_change"]]
    rows = pd.DataFrame({
        "filepath": t["filepath"],
        "label": t["label"],
        "split": t["split"],
        "origin": t["origin"],
        "sample_id": t["id"],
        "observation_id": t["observation_id"],
        "changed_by": [c.get("actor") for c in change],
        "changed_at": [iso_utc(c.get("time")) for c in change],
        "change_source": [c.get("source") for c in change],
        "previous_label": [c.get("old") for c in change],
    }, columns=COLUMNS)
    neutralise_formula_cells(rows).to_csv(job.out / FILENAME, index=False)
    return len(rows)


def iso_utc(when) -> str | None:
    """A stored time (naive UTC) as ISO 8601 with ``Z``, to the second."""
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")
