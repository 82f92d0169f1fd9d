"""``fieldguide signals export``: one CSV row per sample with its label, prediction and signals.

The file is written whole or not at all (a temporary file beside it, renamed into place), with
CRLF line ends (RFC 4180, so cells holding line breaks are quoted), and text cells that a
spreadsheet would run as a formula are neutralised (see :func:`neutralise_formula_cells`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from fieldguide.config import Project
from fieldguide.errors import ExportError
from fieldguide.platform import samples, store
from fieldguide.platform.spreadsheet import neutralise_formula_cells

BASE_COLUMNS = ["filepath", "label", "predicted_label", "noise_score", "label_issue"]


def export_signals(project: Project, out: str | Path, *, run_id: str | None = None) -> tuple[Path, int]:
    """Write ``out`` (CSV): ``filepath``, ``label`` (given), ``predicted_label``, ``noise_score``,
    ``label_issue``, then one column per signal of the flag run ``run_id`` (default: the latest).

    Every sample of the store is a row; a sample the run did not assess has empty signal cells.
    Text cells that start like a formula get a leading ``'``. Returns ``(path, rows)``; raises
    :class:`ExportError` (nothing written) when ``out`` cannot be written.
    """
    out = Path(out)
    with _atomic_output(out) as tmp:
        table = neutralise_formula_cells(signals_table(project, run_id))
        try:  # CRLF rows (RFC 4180): then a cell holding a bare CR is quoted instead of breaking its row
            table.to_csv(tmp, index=False, lineterminator="\r\n")
        except OSError as e:  # the disk filled up, the folder went away, ...
            raise ExportError(_cannot_write(out, e)) from None
    return out, len(table)


def signals_table(project: Project, run_id: str | None = None) -> pd.DataFrame:
    """The export's rows: :data:`BASE_COLUMNS`, then the run's signals in name order."""
    wh = store.warehouse(project)
    run_id = wh.run_or_last(run_id, "flag", missing="no flag run yet (run 'fieldguide flag')")
    ds = store.dataset(project, create=False)
    wanted = ["prediction.label"] if samples.has_field(ds, "prediction") else []
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
    return df[BASE_COLUMNS + signal_cols]


@contextmanager
def _atomic_output(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; on success it becomes ``out``, on any failure it goes.

    Fails early, before the caller does any work, when ``out`` cannot be written.
    """
    _check_output_path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.open("w").close()  # the folder takes new files: learn it now, not after the work
    except OSError as e:
        raise ExportError(_cannot_write(out, e)) from None
    try:
        yield tmp
        try:
            os.replace(tmp, out)
        except OSError as e:
            raise ExportError(_cannot_write(out, e)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_output_path(out: Path) -> None:
    """``out`` must be a file path whose folder exists or can be made."""
    if out.is_dir():
        raise ExportError(f"{out} is a folder: give a file path (e.g. {out / 'signals.csv'})")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ExportError(f"cannot write {out}: {blocker} is a file, not a folder (choose another path)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(_cannot_write(out, e)) from None


def _cannot_write(out: Path, error: OSError) -> str:
    if isinstance(error, PermissionError):
        return f"cannot write {out}: {out.parent} is read-only or not yours (choose another path)"
    return f"cannot write {out}: {error.strerror or error} (choose another path)"
