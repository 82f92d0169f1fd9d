"""``fieldguide signals export``: one CSV row per sample with its label, prediction and every signal.

The columns: :data:`BASE_COLUMNS` (the sample, its label and where the label came from, its review
state, the prediction, ``noise_score`` and ``label_issue``), then the signals flag keeps in the
store only (:data:`STORE_SIGNALS`: ``near_duplicate_of``, ``consensus_label`` and its rank, ``error_rank``:
the rank at which the label and the evidence part), then every signal
the flag run wrote to the warehouse's ``signals`` table, in name order (``label_quality``,
``knn_disagreement``, ``outlier_score``, ``is_outlier``, ``near_duplicate_score``, ...).

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
from fieldguide.errors import ExportError, NotReadyError
from fieldguide.platform import review, samples, store
from fieldguide.platform.spreadsheet import neutralise_formula_cells

#: the first columns, in this order: ``label_source`` is the ``source`` of the sample's last
#: ``label_history`` entry (``ingest`` when its label never changed); ``review_state`` is None
#: where the store has no review state yet
BASE_COLUMNS = ["sample_id", "filepath", "split", "label", "label_source", "review_state",
                "predicted_label", "noise_score", "label_issue"]
#: signals that flag writes to the store only (a sample id, a class name, a rank: not numbers)
STORE_SIGNALS = ["near_duplicate_of", "consensus_label", "consensus_rank", "error_rank"]
#: the source of a label no history entry explains: the one the sample was ingested with
INGEST_SOURCE = "ingest"


def export_signals(project: Project, out: str | Path, *, run_id: str | None = None) -> tuple[Path, int]:
    """Write ``out`` (CSV): one row per sample of the store, the columns of :func:`signals_table`.

    A sample the run did not assess has empty signal cells. Text cells that start like a formula
    get a leading ``'``. Returns ``(path, rows)``; raises :class:`ExportError` (nothing written)
    when ``out`` cannot be written.
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
    """One row per sample of the store: :data:`BASE_COLUMNS`, :data:`STORE_SIGNALS`, then each signal
    of the flag run ``run_id`` (default: the latest) in name order.

    ``noise_score`` and the run's signals are the warehouse's values for that run; ``label_issue``
    and the ``is_<issue>`` columns are booleans (None where the run did not assess the sample).
    :data:`STORE_SIGNALS` are the store's, which hold the latest flag run's: for an older run they
    are None. Raises :class:`~fieldguide.errors.NotReadyError` before any flag run, or when ``run_id``
    is not a flag run.
    """
    wh = store.warehouse(project)
    latest = wh.run_or_last(None, "flag", missing="no flag run yet (run 'fieldguide flag')")
    if run_id is None:
        run_id = latest
    elif wh.query("SELECT 1 FROM runs WHERE run_id = ? AND kind = 'flag'", [run_id]).empty:
        raise NotReadyError(f"no flag run {run_id!r} in the warehouse (the latest is {latest})")
    ds = store.dataset(project, create=False)
    optional = {"predicted_label": "prediction.label", review.FIELD: review.FIELD,
                **{name: name for name in STORE_SIGNALS}}
    present = {col: path for col, path in optional.items() if samples.has_field(ds, path.split(".")[0])}
    df = store.samples_table(ds, ["label_history.source", *present.values()])
    df = df.rename(columns={"id": "sample_id", **{path: col for col, path in present.items()}})
    df["label_source"] = df.pop("label_history.source").map(lambda s: s[-1] if s else INGEST_SOURCE)
    for col in optional:
        if col not in df or (col in STORE_SIGNALS and run_id != latest):
            df[col] = None
    sig = wh.query("SELECT sample_id, signal, value FROM signals WHERE run_id = ?", [run_id])
    if not sig.empty:
        wide = sig.pivot_table(index="sample_id", columns="signal", values="value", aggfunc="first")
        wide.columns = [str(c) for c in wide.columns]
        df = df.merge(wide, how="left", left_on="sample_id", right_index=True)
    for col in ("noise_score", "label_issue"):
        if col not in df:
            df[col] = None
    signal_cols = sorted(c for c in df.columns if c not in BASE_COLUMNS + STORE_SIGNALS + ["origin"])
    for col in ["label_issue", *(c for c in signal_cols if c.startswith("is_"))]:
        df[col] = df[col].map(lambda v: None if pd.isna(v) else bool(v)).astype(object)
    return df[BASE_COLUMNS + STORE_SIGNALS + signal_cols].reset_index(drop=True)


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
