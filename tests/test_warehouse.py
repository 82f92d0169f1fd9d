"""The DuckDB warehouse on a real file: schema, idempotent writes, runs, read-only queries."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from fieldguide.errors import FieldguideError
from fieldguide.platform.warehouse import SCHEMA_VERSION, TABLES, Warehouse


@pytest.fixture
def wh(tmp_path):
    return Warehouse(tmp_path / "proj" / "warehouse.duckdb")


def test_schema_has_every_table_and_its_version(wh):
    wh.write("metrics", [{"run_id": "r", "split": "test", "name": "acc", "value": 0.5}])
    assert wh.path.is_file()
    tables = set(wh.query("SELECT table_name FROM information_schema.tables")["table_name"])
    assert tables == set(TABLES)
    assert wh.schema_version() == SCHEMA_VERSION == 6
    runs_columns = list(wh.query("DESCRIBE runs")["column_name"])
    assert runs_columns == ["run_id", "kind", "config", "status", "started", "finished", "message", "pid", "host"]


def test_runs_left_running_by_a_dead_process_are_marked_interrupted(wh):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = wh.start_run("train")  # this process: alive, never touched
    stale = wh.start_run("embed")
    with wh.connect() as con:
        con.execute("UPDATE runs SET pid = ? WHERE run_id = ?", [dead.pid, stale])
        con.execute("INSERT INTO runs (run_id, kind, status, started) VALUES ('old', 'flag', 'running', now())")
    assert wh.mark_interrupted() == 2
    status = dict(wh.query("SELECT run_id, status FROM runs").itertuples(index=False))
    assert status == {mine: "running", stale: "interrupted", "old": "interrupted"}
    assert wh.mark_interrupted() == 0


def test_a_newer_schema_is_refused(wh):
    wh.write("metrics", [{"run_id": "r", "split": "test", "name": "acc", "value": 0.5}])
    con = duckdb.connect(str(wh.path))
    con.execute("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(FieldguideError, match="schema version 99 is newer"):
        wh.write("metrics", [{"run_id": "r", "split": "test", "name": "acc", "value": 0.7}])


def test_an_older_warehouse_gains_the_new_columns_and_keeps_its_rows(wh):
    wh.path.parent.mkdir(parents=True)
    con = duckdb.connect(str(wh.path))  # a version-1 warehouse: samples without pseudo-labels
    con.execute("CREATE TABLE schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '1')")
    con.execute("CREATE TABLE samples (sample_id VARCHAR PRIMARY KEY, filepath VARCHAR, label VARCHAR, "
                "split VARCHAR, origin VARCHAR, predicted_label VARCHAR, confidence DOUBLE, "
                "noise_score DOUBLE, label_issue BOOLEAN, updated TIMESTAMP)")
    con.execute("INSERT INTO samples (sample_id, label) VALUES ('a', 'wren')")
    con.close()
    wh.write("samples", [{"sample_id": "b", "label": None, "pseudo_label": "wren", "pseudo_confidence": 0.9}])
    assert wh.schema_version() == SCHEMA_VERSION
    columns = set(wh.query("DESCRIBE samples")["column_name"])
    assert {"pseudo_label", "review_state", "observed_at", "latitude", "longitude"} <= columns
    rows = wh.query("SELECT sample_id, coalesce(label, '-') AS label, coalesce(pseudo_label, '-') AS pseudo "
                    "FROM samples ORDER BY sample_id")
    assert rows.to_dict("records") == [{"sample_id": "a", "label": "wren", "pseudo": "-"},
                                       {"sample_id": "b", "label": "-", "pseudo": "wren"}]
    wh.write("samples", [{"sample_id": "c", "label": "tit"}])  # a second open changes nothing more
    assert len(wh.query("SELECT * FROM samples")) == 3


def test_a_version_5_warehouse_gains_the_taxonomy_columns(wh):
    """Step 6 of the migration: ``samples.error_rank``/``error_severity``, ``label_events.answer``/``answer_rank``."""
    wh.path.parent.mkdir(parents=True)
    con = duckdb.connect(str(wh.path))
    con.execute("CREATE TABLE schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '5')")
    con.execute("CREATE TABLE label_events (event_id VARCHAR PRIMARY KEY, sample_id VARCHAR, old VARCHAR, "
                "new VARCHAR, source VARCHAR, actor VARCHAR, time TIMESTAMP, run_id VARCHAR)")
    con.execute("INSERT INTO label_events (event_id, sample_id, old, new) VALUES ('a-0', 'a', 'wren', 'tit')")
    con.close()
    wh.write("label_events", [{"event_id": "b-0", "sample_id": "b", "old": "tit", "new": "tit",
                               "answer": "Parus", "answer_rank": "genus"}])
    assert wh.schema_version() == SCHEMA_VERSION == 6
    rows = wh.query("SELECT event_id, new, answer, answer_rank FROM label_events ORDER BY event_id")
    assert rows.astype(object).where(rows.notna(), None).to_dict("records") == [
        {"event_id": "a-0", "new": "tit", "answer": None, "answer_rank": None},
        {"event_id": "b-0", "new": "tit", "answer": "Parus", "answer_rank": "genus"}]
    assert {"error_rank", "error_severity"} <= set(wh.query("DESCRIBE samples")["column_name"])


def test_writes_are_insert_or_replace(wh):
    rows = [
        {"run_id": "r1", "split": "test", "name": "accuracy", "value": 0.5},
        {"run_id": "r1", "split": "test", "name": "macro_f1", "value": 0.4},
    ]
    assert wh.write("metrics", rows) == 2
    assert wh.write("metrics", rows) == 2
    assert len(wh.query("SELECT * FROM metrics")) == 2
    wh.write("metrics", [{"run_id": "r1", "split": "test", "name": "accuracy", "value": 0.9}])
    df = wh.query("SELECT name, value FROM metrics ORDER BY name")
    assert df.to_dict("records") == [
        {"name": "accuracy", "value": 0.9},
        {"name": "macro_f1", "value": 0.4},
    ]
    # columns are matched by name, in any order, and missing ones are NULL
    wh.write("class_metrics", [{"f1": 0.5, "class": "wren", "run_id": "r1", "split": "test"}])
    row = wh.query("SELECT * FROM class_metrics").iloc[0]
    assert (row["class"], row["f1"]) == ("wren", 0.5)
    assert pd.isna(row["precision"])  # not given: NULL
    assert wh.write("metrics", []) == 0
    with pytest.raises(ValueError, match="unknown warehouse table 'metricz'"):
        wh.write("metricz", rows)


def test_run_context_records_completed_and_failed_runs(wh):
    with wh.run("ingest", {"source": "/data", "strict": True}) as ok_id:
        running = wh.query("SELECT status, finished FROM runs WHERE run_id = ?", [ok_id]).iloc[0]
        assert running["status"] == "running"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with wh.run("predict") as bad_id:
            raise RuntimeError("disk on fire")
    runs = wh.query("SELECT * FROM runs ORDER BY started").set_index("run_id")
    assert ok_id.startswith("ingest-") and bad_id.startswith("predict-")
    assert runs.loc[ok_id, "status"] == "completed"
    assert pd.isna(runs.loc[ok_id, "message"])
    assert json.loads(runs.loc[ok_id, "config"]) == {"source": "/data", "strict": True}
    assert runs.loc[bad_id, "status"] == "failed"
    assert runs.loc[bad_id, "message"] == "RuntimeError: disk on fire"
    assert runs.loc[bad_id, "finished"] >= runs.loc[bad_id, "started"]
    assert wh.last_run("ingest")["run_id"] == ok_id
    assert wh.last_run("predict") is None
    assert wh.last_run("predict", status="failed")["run_id"] == bad_id
    assert wh.last_run("predict", "ingest")["run_id"] == ok_id  # any of several kinds
    with pytest.raises(ValueError):
        wh.last_run()


def test_query_is_read_only_and_needs_no_writer(wh):
    assert wh.query("SELECT 1").empty  # no file yet: an empty answer, and no file created
    assert not wh.path.exists()
    with pytest.raises(FieldguideError, match="does not exist yet"):
        with wh.connect(read_only=True):
            pass
    wh.write("signals", [{"run_id": "r", "sample_id": "s1", "signal": "entropy", "value": 1.5}])
    # two readers at once (as the dashboards do), while no writer holds the file
    with wh.connect(read_only=True) as a, wh.connect(read_only=True) as b:
        assert a.execute("SELECT value FROM signals").fetchone() == (1.5,)
        assert b.execute("SELECT count(*) FROM signals").fetchone() == (1,)
        with pytest.raises(duckdb.Error):
            a.execute("DELETE FROM signals")
    assert wh.query("SELECT count(*) AS n FROM signals")["n"].tolist() == [1]
    # and the file is free again for a writer afterwards
    wh.write("signals", [{"run_id": "r", "sample_id": "s2", "signal": "entropy", "value": 0.5}])
    assert wh.query("SELECT sum(value) AS v FROM signals")["v"].tolist() == [2.0]
