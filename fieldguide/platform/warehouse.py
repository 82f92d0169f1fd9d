"""The DuckDB warehouse: every run, metric, signal, relabel task, label event and benchmark result, and
the class tree.

Connections are short-lived (open, write or query, close) so that the dashboards can read
the file while the CLI writes to it between steps. Every table has a primary key and every
write is ``INSERT OR REPLACE``: running a step twice never duplicates a row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd

from fieldguide.errors import FieldguideError, NotReadyError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6

# Columns added after a warehouse may already exist: (version, table, column definition).
# ``_ensure_schema`` adds the missing ones to an older warehouse (nothing is rewritten or lost).
ADDED_COLUMNS: list[tuple[int, str, str]] = [
    (2, "samples", "pseudo_label VARCHAR"),
    (2, "samples", "pseudo_confidence DOUBLE"),
    (3, "runs", "pid INTEGER"),
    (3, "runs", "host VARCHAR"),
    (3, "rejects", "kind VARCHAR DEFAULT 'reject'"),
    (4, "samples", "review_state VARCHAR"),
    (5, "samples", "observed_at TIMESTAMP"),
    (5, "samples", "latitude DOUBLE"),
    (5, "samples", "longitude DOUBLE"),
    # 6: taxonomy-aware label quality: the rank where label and evidence part, answers above the classes
    (6, "samples", "error_rank VARCHAR"),
    (6, "samples", "error_severity DOUBLE"),
    (6, "label_events", "answer VARCHAR"),
    (6, "label_events", "answer_rank VARCHAR"),
]

TABLES: dict[str, str] = {
    "schema_info": "key VARCHAR PRIMARY KEY, value VARCHAR",
    "runs": (
        "run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, config JSON, status VARCHAR NOT NULL, "
        "started TIMESTAMP NOT NULL, finished TIMESTAMP, message VARCHAR, pid INTEGER, host VARCHAR"
    ),
    "metrics": (
        "run_id VARCHAR, split VARCHAR, name VARCHAR, value DOUBLE, "
        "PRIMARY KEY (run_id, split, name)"
    ),
    "class_metrics": (
        "run_id VARCHAR, split VARCHAR, class VARCHAR, precision DOUBLE, recall DOUBLE, "
        "f1 DOUBLE, support INTEGER, PRIMARY KEY (run_id, split, class)"
    ),
    "confusions": (
        "run_id VARCHAR, split VARCHAR, true_label VARCHAR, predicted_label VARCHAR, "
        "count INTEGER, PRIMARY KEY (run_id, split, true_label, predicted_label)"
    ),
    "curves": (
        "run_id VARCHAR, step INTEGER, name VARCHAR, value DOUBLE, PRIMARY KEY (run_id, step, name)"
    ),
    "signals": (
        "run_id VARCHAR, sample_id VARCHAR, signal VARCHAR, value DOUBLE, "
        "PRIMARY KEY (run_id, sample_id, signal)"
    ),
    "annotators": (
        "run_id VARCHAR, annotator VARCHAR, quality DOUBLE, agreement DOUBLE, num_labels INTEGER, "
        "PRIMARY KEY (run_id, annotator)"
    ),
    "relabel_tasks": (
        "project VARCHAR, sample_id VARCHAR, task_id BIGINT, status VARCHAR, pushed TIMESTAMP, "
        "answered TIMESTAMP, answer VARCHAR, PRIMARY KEY (project, sample_id)"
    ),
    "label_events": (
        "event_id VARCHAR PRIMARY KEY, sample_id VARCHAR, old VARCHAR, new VARCHAR, "
        "source VARCHAR, actor VARCHAR, time TIMESTAMP, run_id VARCHAR, answer VARCHAR, answer_rank VARCHAR"
    ),
    "samples": (
        "sample_id VARCHAR PRIMARY KEY, filepath VARCHAR, label VARCHAR, split VARCHAR, "
        "origin VARCHAR, predicted_label VARCHAR, confidence DOUBLE, noise_score DOUBLE, "
        "label_issue BOOLEAN, pseudo_label VARCHAR, pseudo_confidence DOUBLE, updated TIMESTAMP, "
        "review_state VARCHAR, observed_at TIMESTAMP, latitude DOUBLE, longitude DOUBLE, error_rank VARCHAR, "
        "error_severity DOUBLE"
    ),
    # kind: reject (not ingested) or notice (ingested, but a decision the curator should know of)
    "rejects": (
        "run_id VARCHAR, path VARCHAR, reason VARCHAR, kind VARCHAR DEFAULT 'reject', "
        "PRIMARY KEY (run_id, path)"
    ),
    # the class tree: one row per class and rank of its lineage (coarse to fine, the class itself
    # at its own rank); a label's ancestors: SELECT rank, name FROM taxa WHERE class = ? ORDER BY depth
    "taxa": (
        "class VARCHAR, rank VARCHAR, name VARCHAR NOT NULL, depth INTEGER NOT NULL, parent_rank VARCHAR, "
        "parent_name VARCHAR, PRIMARY KEY (class, rank)"
    ),
    # every benchmark's table in long form: one row per (row of its CSV, metric); ``bench`` names the
    # table (suite_heads, noise, heads, ...), its run a ``bench_<name>`` run; ``role`` is default,
    # baseline or NULL, ``better`` higher, lower or NULL (a count); ``params`` the row's other cells
    "bench_results": (
        "run_id VARCHAR, bench VARCHAR, row INTEGER, collection VARCHAR, setting VARCHAR, method VARCHAR, "
        "role VARCHAR, metric VARCHAR, value DOUBLE, better VARCHAR, params JSON, "
        "PRIMARY KEY (run_id, bench, row, metric)"
    ),
    "backbone_costs": (
        "backbone VARCHAR PRIMARY KEY, params BIGINT, macs BIGINT, input_size INTEGER, "
        "images_per_s DOUBLE, measured TIMESTAMP"
    ),
}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def new_run_id(kind: str) -> str:
    return f"{kind}-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class Warehouse:
    """The project's DuckDB file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; retries briefly while another process holds the lock."""
        if read_only and not self.path.exists():
            raise FieldguideError(f"warehouse {self.path} does not exist yet (run a step first)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        delay = 0.05
        for attempt in range(40):
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or attempt == 39:
                    raise FieldguideError(f"warehouse {self.path} could not be opened: {e}") from None
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)
        try:
            if not read_only:
                _ensure_schema(con)
            yield con
        finally:
            con.close()

    # ---- writes -----------------------------------------------------------------------
    def write(self, table: str, rows: pd.DataFrame | list[dict]) -> int:
        """Insert or replace ``rows`` (matched by column name) into ``table``; returns the count."""
        if table not in TABLES:
            raise ValueError(f"unknown warehouse table {table!r}")
        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        if df.empty:
            return 0
        with self.connect() as con:
            con.register("_rows", df)
            con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _rows")
            con.unregister("_rows")
        return len(df)

    def start_run(self, kind: str, config: dict | None = None, run_id: str | None = None,
                  started: dt.datetime | None = None) -> str:
        """Record run ``run_id`` (default: a new id) of ``kind`` as ``running`` in this process;
        a resumed run passes its own id and first ``started`` time."""
        run_id = run_id or new_run_id(kind)
        self.write(
            "runs",
            [{
                "run_id": run_id,
                "kind": kind,
                "config": json.dumps(config or {}, default=str, sort_keys=True),
                "status": "running",
                "started": started or now(),
                "finished": None,
                "message": None,
                "pid": os.getpid(),
                "host": socket.gethostname(),
            }],
        )
        return run_id

    def mark_interrupted(self) -> int:
        """Runs left ``running`` by a process that is gone become ``interrupted``; returns how many.

        Call it while holding the project's write lock: every step that records a run holds it,
        so a ``running`` row of another process on this host whose process is dead (or that
        predates the pid column) was killed mid-run.
        """
        if not self.path.exists():
            return 0
        df = self.query("SELECT run_id, pid, host FROM runs WHERE status = 'running'")
        host = socket.gethostname()
        stale = [
            r.run_id for r in df.itertuples()
            if pd.isna(r.pid) or (r.host == host and int(r.pid) != os.getpid() and not _pid_alive(int(r.pid)))
        ]
        if stale:
            with self.connect() as con:
                con.executemany(
                    "UPDATE runs SET status = 'interrupted', finished = ?, "
                    "message = 'the process running it ended before it finished' WHERE run_id = ?",
                    [[now(), run_id] for run_id in stale],
                )
            log.warning("%d run(s) left running by a process that ended are marked interrupted", len(stale))
        return len(stale)

    def update_config(self, run_id: str, extra: dict) -> None:
        """Merge ``extra`` into a run's recorded config (what the run chose as it went)."""
        with self.connect() as con:
            row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                raise NotReadyError(f"no run {run_id!r} in the warehouse")
            config = {**json.loads(row[0] or "{}"), **extra}
            con.execute("UPDATE runs SET config = ? WHERE run_id = ?",
                        [json.dumps(config, default=str, sort_keys=True), run_id])

    def finish_run(self, run_id: str, status: str = "completed", message: str | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished = ?, message = ? WHERE run_id = ?",
                [status, now(), message, run_id],
            )

    @contextlib.contextmanager
    def run(self, kind: str, config: dict | None = None) -> Iterator[str]:
        """Record a run: ``running`` on entry, ``completed`` or ``failed`` (with the error) on exit."""
        run_id = self.start_run(kind, config)
        try:
            yield run_id
        except BaseException as e:
            self.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
            raise
        self.finish_run(run_id, "completed")

    # ---- reads ------------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame()
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).df()

    def last_run(self, *kinds: str, status: str = "completed") -> dict | None:
        """The newest run (by end, else start) of any of ``kinds`` with ``status``, or None."""
        if not kinds:
            raise ValueError("last_run needs at least one kind")
        marks = ", ".join("?" * len(kinds))
        df = self.query(
            f"SELECT * FROM runs WHERE kind IN ({marks}) AND status = ? "
            "ORDER BY coalesce(finished, started) DESC, started DESC LIMIT 1",
            [*kinds, status],
        )
        return None if df.empty else df.iloc[0].to_dict()

    def run_or_last(self, run_id: str | None, *kinds: str, missing: str) -> str:
        """``run_id`` when given, else the newest completed run of ``kinds``; none: NotReadyError(missing)."""
        if run_id is not None:
            return run_id
        last = self.last_run(*kinds)
        if last is None:
            raise NotReadyError(missing)
        return last["run_id"]

    def schema_version(self) -> int:
        df = self.query("SELECT value FROM schema_info WHERE key = 'schema_version'")
        return int(df.iloc[0, 0]) if not df.empty else 0


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for name, columns in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
    rows = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchall()
    row = rows[0] if rows else None
    if row is None:
        con.execute("INSERT INTO schema_info VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    elif int(row[0]) > SCHEMA_VERSION:
        raise FieldguideError(
            f"warehouse schema version {row[0]} is newer than this fieldguide's {SCHEMA_VERSION} "
            "(upgrade fieldguide)"
        )
    elif int(row[0]) < SCHEMA_VERSION:
        for version, table, column in ADDED_COLUMNS:
            if version > int(row[0]):
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")
        con.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
        log.info("warehouse schema upgraded from version %s to %s", row[0], SCHEMA_VERSION)
