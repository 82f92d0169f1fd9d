"""Which samples an export holds: a saved view or a split, then the pseudo-label, synthetic,
unlabeled and missing-image rules. Reads the store, writes nothing."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pandas as pd

from fieldguide.errors import ExportError
from fieldguide.platform import store

if TYPE_CHECKING:
    import fiftyone as fo

#: why a sample was left out, in the order the rules are applied (a sample counts once)
LEFT_OUT_REASONS = ("synthetic", "pseudo", "unlabeled", "missing_image")


def select_view(ds: "fo.Dataset", *, view: str | None, split: str | None) -> "fo.DatasetView":
    """The dataset, or its saved view ``view``, narrowed to the split ``split``."""
    if split is not None and split not in store.SPLITS:
        raise ExportError(f"unknown split {split!r} (use one of {', '.join(store.SPLITS)})")
    samples = ds.view()
    if view is not None:
        if not ds.has_saved_view(view):
            names = ", ".join(ds.list_saved_views()) or "none yet (run 'fieldguide flag')"
            raise ExportError(f"no saved view {view!r} in this project (saved views: {names})")
        samples = ds.load_saved_view(view)
    return samples.match_tags(split) if split is not None else samples


def export_table(samples: "fo.DatasetView") -> pd.DataFrame:
    """One row per sample (see :class:`~fieldguide.platform.exports.registry.ExportJob`)."""
    df = store.samples_table(samples, ["label_history", "metadata.width", "metadata.height"])
    df = df.rename(columns={"metadata.width": "width", "metadata.height": "height"})
    for column in ("label", "split", "origin"):  # text columns: None (not NaN) where missing
        df[column] = df[column].astype(object).where(df[column].notna(), None)
    df["history"] = df.pop("label_history").map(_entries)
    df["last_change"] = df["history"].map(last_change)
    observations = _observation_ids(samples)
    df["observation_id"] = pd.Series([observations.get(sid) for sid in df["id"]], index=df.index, dtype=object)
    return df


def _observation_ids(samples: "fo.DatasetView") -> dict[str, str]:
    """sample id -> its ``observation_id`` as text (ids read from a CSV may be numbers)."""
    if "observation_id" not in samples.get_field_schema():
        return {}
    ids, observations = samples.values(["id", "observation_id"])
    return {sid: str(o) for sid, o in zip(ids, observations) if o is not None and o != ""}


def _entries(history) -> list[dict]:
    """``label_history`` entries as plain dicts (old, new, source, actor, time, run_id)."""
    out = []
    for entry in history or []:
        d = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
        d.pop("_cls", None)
        out.append(d)
    return out


def last_change(history: list[dict]) -> dict | None:
    """The last entry that changed the label (a confirmation, old == new, is not a change)."""
    return next((e for e in reversed(history) if e.get("old") != e.get("new")), None)


def label_source(history: list[dict], label: str | None) -> str | None:
    """Who vouches for the current label: the source of the last entry that set or confirmed it
    (a curator's confirmation of an accepted pseudo-label makes it a curated label); None when
    the label came with the ingest."""
    entry = next((e for e in reversed(history) if e.get("new") == label), None)
    return entry.get("source") if entry else None


def is_pseudo(row) -> bool:
    return row.origin == "pseudo" or label_source(row.history, row.label) == "pseudo"


def leave_out(table: pd.DataFrame, *, labeled_only: bool, media: bool, include_pseudo: bool,
              include_synthetic: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows to export, and how many were left out per reason (:data:`LEFT_OUT_REASONS`)."""
    rules = {
        "synthetic": (not include_synthetic, lambda r: r.origin == "synthetic"),
        "pseudo": (not include_pseudo, is_pseudo),
        "unlabeled": (labeled_only, lambda r: r.label is None),
        "missing_image": (media, lambda r: not os.path.isfile(r.filepath)),
    }
    reasons = [next((name for name, (active, test) in rules.items() if active and test(row)), None)
               for row in table.itertuples()]
    left_out = {name: reasons.count(name) for name in LEFT_OUT_REASONS if reasons.count(name)}
    keep = pd.Series([reason is None for reason in reasons], index=table.index, dtype=bool)
    return table.loc[keep].reset_index(drop=True), left_out
