"""Fault injection on the signal steps: crowd votes from one annotator, unwritable exports, formulas.

Each test reproduces one item of the signals issue (its number in the test's docstring) on a real
tiny project through the CLI, and asserts the values written or the one-line error.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.config import PROJECT_ENV, dump_config
from fieldguide.curation.export import neutralise_formula_cells
from fieldguide.curation.flag import flag
from fieldguide.models.embed import embed
from fieldguide.models.predict import predict
from fieldguide.platform import store
from conftest import use_tiny_backbone

FORMULAS = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def tiny_project(ingested, tiny_weights):
    """The ingested project with the tiny backbone in its fieldguide.toml, as the CLI reads it."""
    use_tiny_backbone(ingested, tiny_weights)
    ingested.config_path.write_text(dump_config(ingested.config))
    return ingested


@pytest.fixture
def flagged(tiny_project):
    embed(tiny_project)
    predict(tiny_project, head="logreg", folds=3)
    flag(tiny_project)
    return tiny_project


def invoke_ok(runner: CliRunner, project, *args: str) -> str:
    res = runner.invoke(app, ["--project", str(project.root), *args])
    assert res.exit_code == 0 and "Traceback" not in res.output, (args, res.output, res.exception)
    return res.output


def one_error_line(output: str) -> str:
    """The output is one ``error:`` line and nothing like a traceback; returns it."""
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


# ---- item 1: crowd votes from one annotator ---------------------------------------------------------------
def write_votes(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "annotator", "label"])
        w.writerows(rows)
    return path


@pytest.mark.slow
def test_flag_after_one_annotator_round(runner, tiny_project, image_folder, tmp_path):
    """Item 1: votes from one annotator on a few samples made `flag` crash in cleanlab."""
    p = tiny_project
    train = store.dataset(p).match_tags("train").match({"ground_truth.label": "red_bird"})
    ids, paths = train.values(["id", "filepath"])
    votes = write_votes(tmp_path / "votes.csv", [(paths[0], "curator", "red_bird"),
                                                 (paths[1], "curator", "blue_bird"),
                                                 (paths[2], "curator", "purple_bird")])  # not a class
    invoke_ok(runner, p, "ingest", str(image_folder), "--votes", str(votes))
    invoke_ok(runner, p, "embed")
    invoke_ok(runner, p, "predict", "--head", "logreg", "--folds", "3")
    out = invoke_ok(runner, p, "flag")
    assert "consensus_quality" in out

    ds = store.dataset(p)
    ds.reload()
    assert [ds[i].consensus_label for i in ids[:3]] == ["red_bird", "blue_bird", None]
    assert ds[ids[0]].annotator_agreement is None  # one vote: nobody to agree with
    wh = store.warehouse(p)
    run_id = wh.last_run("flag")["run_id"]
    sig = wh.query("SELECT sample_id, signal, value FROM signals WHERE run_id = ? AND signal LIKE 'consensus%'",
                   [run_id]).pivot(index="sample_id", columns="signal", values="value")
    assert sorted(sig.index) == sorted(ids[:2])
    assert sig.loc[ids[0], "consensus_disagrees"] == 0 and sig.loc[ids[1], "consensus_disagrees"] == 1
    # the model sees a red bird in both: the vote "blue_bird" is the doubtful consensus
    assert sig.loc[ids[1], "consensus_quality"] < sig.loc[ids[0], "consensus_quality"]
    ann = wh.query("SELECT annotator, quality, agreement, num_labels FROM annotators WHERE run_id = ?", [run_id])
    assert ann["annotator"].tolist() == ["curator"] and ann["num_labels"].tolist() == [2]
    assert ann["quality"].iloc[0] == pytest.approx(sig["consensus_quality"].mean())
    assert ann["agreement"].isna().all()


# ---- item 2: unwritable export paths -------------------------------------------------------------------------
@pytest.mark.slow
def test_export_to_a_folder_is_one_error_line(runner, flagged, tmp_path):
    """Item 2: OUT an existing folder gave a traceback (IsADirectoryError)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    res = runner.invoke(app, ["--project", str(flagged.root), "signals", "export", str(folder)])
    assert res.exit_code == 1
    assert "is a folder" in one_error_line(res.output) and str(folder / "signals.csv") in res.output
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_export_under_a_file_is_one_error_line(runner, flagged, tmp_path):
    """Item 2: OUT whose parent is a file gave a traceback (NotADirectoryError / FileExistsError)."""
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    for out in (afile / "signals.csv", afile / "deeper" / "signals.csv"):
        res = runner.invoke(app, ["--project", str(flagged.root), "signals", "export", str(out)])
        assert res.exit_code == 1
        assert f"{afile} is a file" in one_error_line(res.output)
    assert afile.read_text() == "keep me"


def _without_dac_override() -> list[str]:
    """Run as root without the capability that lets root write anywhere (so modes apply)."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


@pytest.mark.slow
def test_export_to_a_read_only_folder_is_one_error_line_and_keeps_the_old_file(flagged, tmp_path):
    """Item 2: a read-only folder gave a traceback (PermissionError); the old export must survive."""
    folder = tmp_path / "ro"
    folder.mkdir()
    old = folder / "signals.csv"
    old.write_text("old export\n")
    folder.chmod(0o555)
    try:
        done = [export_as_a_user(flagged, out) for out in (old, folder / "new.csv")]
    finally:
        folder.chmod(0o755)
    for d in done:
        assert d.returncode == 1, d.stdout + d.stderr
        assert "read-only" in one_error_line(d.stderr)
    assert [f.name for f in folder.iterdir()] == ["signals.csv"] and old.read_text() == "old export\n"


def export_as_a_user(project, out: Path) -> subprocess.CompletedProcess:
    """``fieldguide signals export OUT`` in its own process, without root's right to write anywhere."""
    env = {k: v for k, v in os.environ.items() if k != PROJECT_ENV}
    return subprocess.run([*_without_dac_override(), sys.executable, "-m", "fieldguide.cli", "--project",
                           str(project.root), "signals", "export", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_export_replaces_a_file_and_makes_missing_folders(runner, flagged, tmp_path):
    out = tmp_path / "a" / "b" / "signals.csv"
    invoke_ok(runner, flagged, "signals", "export", str(out))
    first = out.read_text()
    assert len(pd.read_csv(out)) == 24
    invoke_ok(runner, flagged, "signals", "export", str(out))
    assert out.read_text() == first
    assert [f.name for f in out.parent.iterdir()] == ["signals.csv"]  # no temporary file left


# ---- item 3: spreadsheet formulas in labels ---------------------------------------------------------------------
def test_neutralise_formula_cells_keeps_numbers_numbers():
    df = pd.DataFrame({"label": [*FORMULAS, "red_bird", None],
                       "mixed": [-0.5, "-x", True, None, "=1", 3, "ok", "+"],
                       "score": [-0.5, 0.25, np.nan, 1.0, -2.0, 0.0, 0.5, -1e-9]})
    out = neutralise_formula_cells(df)
    assert out["label"].tolist()[:6] == ["'" + f for f in FORMULAS]
    assert out["label"].iloc[6] == "red_bird" and pd.isna(out["label"].iloc[7])
    assert out["mixed"].tolist()[:2] == [-0.5, "'-x"] and out["mixed"].iloc[2] is True
    assert out["mixed"].tolist()[4:] == ["'=1", 3, "ok", "'+"]
    assert out["score"].dtype == float and out["score"].iloc[0] == -0.5
    assert df["label"].iloc[0] == FORMULAS[0]  # the input is left alone


@pytest.mark.slow
def test_export_neutralises_formula_labels(runner, flagged, tmp_path):
    """Item 3: a label like =HYPERLINK(...) went raw into the CSV, where a spreadsheet runs it."""
    p = flagged
    ds = store.dataset(p)
    ids = ds.match_tags("test").values("id")[: len(FORMULAS)]
    store.set_labels(p, ds, dict(zip(ids, FORMULAS)), source="curator", actor="test", allow_new_classes=True)
    invoke_ok(runner, p, "flag")
    wh = store.warehouse(p)
    run_id = wh.last_run("flag")["run_id"]
    wh.write("signals", [{"run_id": run_id, "sample_id": ids[0], "signal": "test_margin", "value": -0.5}])
    out = tmp_path / "signals.csv"
    invoke_ok(runner, p, "signals", "export", str(out))

    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_path = {r["filepath"]: r for r in rows}
    paths = dict(zip(*ds.values(["id", "filepath"])))
    assert [by_path[paths[i]]["label"] for i in ids] == ["'" + f for f in FORMULAS]
    assert by_path[paths[ids[0]]]["test_margin"] == "-0.5"  # a number, not text
    assert {r["label"] for r in rows} - {"'" + f for f in FORMULAS} == {"red_bird", "green_bird", "blue_bird"}
    assert not any(r[c].startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for c in ("filepath", "label",
                                                                                           "predicted_label"))
    df = pd.read_csv(out)
    assert df["noise_score"].dtype == float and df["test_margin"].min() == -0.5
