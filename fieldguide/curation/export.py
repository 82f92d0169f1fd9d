"""``fieldguide signals export``: one CSV row per sample with its label, prediction and signals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fieldguide.config import Project
from fieldguide.errors import NotReadyError
from fieldguide.platform import store

BASE_COLUMNS = ["filepath", "label", "predicted_label", "noise_score", "label_issue"]


def export_signals(project: Project, out: str | Path, *, run_id: str | None = None) -> tuple[Path, int]:
    """Write ``out`` (CSV): ``filepath``, ``label`` (given), ``predicted_label``, ``noise_score``,
    ``label_issue``, then one column per signal of the flag run ``run_id`` (default: the latest).

    Every sample of the store is a row; a sample the run did not assess has empty signal cells.
    Returns ``(path, rows)``.
    """
    wh = store.warehouse(project)
    if run_id is None:
        last = wh.last_run("flag")
        if last is None:
            raise NotReadyError("no flag run yet (run 'fieldguide flag')")
        run_id = last["run_id"]
    ds = store.dataset(project, create=False)
    schema = ds.get_field_schema()
    wanted = [f for f in ("prediction.label",) if "prediction" in schema]
    df = store.samples_table(ds, wanted).rename(columns={"prediction.label": "predicted_label"})
    if "predicted_label" not in df:
        df["predicted_label"] = None
    sig = wh.query("SELECT sample_id, signal, value FROM signals WHERE run_id = ?", [run_id])
    if not sig.empty:
        wide = sig.pivot_table(index="sample_id", columns="signal", values="value", aggfunc="first")
        wide.columns = [str(c) for c in wide.columns]
        df = df.merge(wide, how="left", left_on="id", right_index=True)
    for col in ("noise_score", "label_issue"):
        if col not in df:
            df[col] = None
    df["label_issue"] = df["label_issue"].map(lambda v: None if pd.isna(v) else bool(v))
    signal_cols = sorted(c for c in df.columns if c not in BASE_COLUMNS + ["id", "split", "origin"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df[BASE_COLUMNS + signal_cols].to_csv(out, index=False)
    return out, len(df)
