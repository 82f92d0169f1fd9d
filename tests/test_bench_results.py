"""Benchmark results in the warehouse (``bench_results``) and the dashboards' Benchmarks page that charts them:
real benchmark runs (``bench noise`` on the tiny project, ``bench suite --quick`` on a tiny folder collection)
write the rows of the CSV they write; the page (AppTest) shows those numbers, also from an installed-like
copy of the package run outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from fieldguide.config import PROJECT_ENV
from fieldguide.platform import bench_results
from fieldguide.platform.warehouse import Warehouse

PACKAGE = Path(__file__).resolve().parents[1] / "fieldguide"
PAGE = PACKAGE / "dashboards" / "sections" / "benchmarks.py"
APP = PACKAGE / "dashboards" / "app.py"
NOISE_METRICS = ["precision", "recall", "f1", "auroc", "precision_top5", "flagged", "seconds"]


def stored(wh: Warehouse, bench: str, run_id: str | None = None) -> pd.DataFrame:
    """The rows of table ``bench`` (of one run, or of every run), in the order written."""
    where, params = ("AND run_id = ?", [bench, run_id]) if run_id else ("", [bench])
    return wh.query(f"SELECT * FROM bench_results WHERE bench = ? {where} ORDER BY run_id, row, rowid", params)


def as_wide(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Long rows back to one row per ``row``, one column per metric."""
    return rows.pivot(index="row", columns="metric", values="value")[metrics].reset_index(drop=True)


def render_page(project_root: Path) -> AppTest:
    os.environ[PROJECT_ENV] = str(project_root)
    at = AppTest.from_file(str(PAGE), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame(at: AppTest, alt: str) -> pd.DataFrame:
    found = [d for d in at.dataframe if d.proto.alt == alt]
    assert len(found) == 1, [d.proto.alt for d in at.dataframe]
    return found[0].value


def chart_frames(at: AppTest) -> list[pd.DataFrame]:
    """The data of every Vega-Lite chart on the page (one data set each here)."""
    return [pa.ipc.open_stream(d.data.data).read_pandas() for chart in at.get("vega_lite_chart")
            for d in chart.proto.datasets]


@pytest.fixture(autouse=True)
def _restore_project_env():
    before = os.environ.get(PROJECT_ENV)
    yield
    if before is None:
        os.environ.pop(PROJECT_ENV, None)
    else:
        os.environ[PROJECT_ENV] = before


# ---- the long form --------------------------------------------------------------------------------------
def test_a_wide_table_round_trips_through_the_warehouse(tmp_path):
    table = pd.DataFrame({"k": [3, 3, 5], "method": ["supervised only", "pseudo-labeling", "supervised only"],
                          "test_top1": [0.71, 0.68, 0.78], "pseudo_selected": [None, 1764.0, None],
                          "seconds": [1.1, 1.0, 1.3], "torch_threads": [2, 2, 2]})
    rows = bench_results.long_form(
        table, metrics=["test_top1", "pseudo_selected", "seconds"], method=table["method"], collection="mine",
        setting=table["k"].map(lambda k: f"{k}/class"),
        role=table["method"].map({"pseudo-labeling": "default", "supervised only": "baseline"}),
        params=["torch_threads"])
    wh = Warehouse(tmp_path / "warehouse.duckdb")
    with wh.run("bench_pseudolabel") as run_id:
        assert bench_results.record(wh, run_id, "pseudolabel", rows) == 9
        bench_results.record(wh, run_id, "pseudolabel", rows)  # written again: replaced, not doubled
    back = stored(wh, "pseudolabel")
    assert len(back) == 9
    pd.testing.assert_frame_equal(as_wide(back, ["test_top1", "pseudo_selected", "seconds"]),
                                  table[["test_top1", "pseudo_selected", "seconds"]], check_names=False)
    first = back[back["row"] == 0].set_index("metric")
    assert first.loc["test_top1", "setting"] == "3/class" and first.loc["test_top1", "role"] == "baseline"
    assert first.loc["seconds", "better"] == "lower" and first.loc["test_top1", "better"] == "higher"
    assert pd.isna(first.loc["pseudo_selected", "better"])  # a count: neither better nor worse
    assert json.loads(first.loc["seconds", "params"]) == {"torch_threads": 2}
    bad = rows.assign(role="winner")
    with pytest.raises(ValueError, match="roles"):
        bench_results.record(wh, run_id, "pseudolabel", bad)


# ---- bench noise: the rows equal its CSV; the page shows them ---------------------------------------------
@pytest.fixture
def noise_bench(predicted):
    """``bench noise`` on the tiny project, run twice (the second run supersedes the first)."""
    from fieldguide.curation.noise_bench import project_noise_benchmark

    args = dict(rates=(0.2, 0.4), kinds=("symmetric",), folds=3, head="logreg", progress=False)
    project_noise_benchmark(predicted, **args)
    table, path = project_noise_benchmark(predicted, **args, seed=1)
    return predicted, table, path


@pytest.mark.slow
def test_bench_noise_records_the_table_it_writes(noise_bench):
    project, table, path = noise_bench
    wh = Warehouse(project.warehouse_path)
    runs = wh.query("SELECT run_id, status FROM runs WHERE kind = 'bench_noise' ORDER BY started")
    assert runs["status"].tolist() == ["completed", "completed"]
    csv = pd.read_csv(path)
    rows = stored(wh, "noise", runs["run_id"].iloc[-1])
    assert path.name == f"noise-{runs['run_id'].iloc[-1]}.csv"
    assert len(rows) == len(csv) * len(NOISE_METRICS)
    pd.testing.assert_frame_equal(as_wide(rows, NOISE_METRICS), csv[NOISE_METRICS], check_names=False,
                                  check_dtype=False, atol=1e-4, rtol=0)  # the CSV holds 4 decimals
    first = rows[rows["row"] == 0].iloc[0]
    assert first["collection"] == "testproj" and first["setting"] == f"symmetric {csv['rate'][0]:.0%}"
    assert rows.groupby("row")["method"].first().tolist() == csv["signal"].tolist()
    roles = rows.drop_duplicates("row").groupby("method")["role"].agg(lambda r: set(r.fillna("none")))
    assert roles["noise_score"] == {"default"} and roles["label_quality"] == {"baseline"}
    assert roles["cl_issue"] == {"none"}


@pytest.mark.slow
def test_the_page_shows_the_newest_noise_run_once(noise_bench):
    project, table, path = noise_bench
    csv = pd.read_csv(path)
    at = render_page(project.root)
    assert at.title[0].value == "Benchmarks"
    assert [s.value for s in at.subheader] == ["Noise benchmark: each signal finding injected label noise"]
    shown = frame(at, "noise table")
    assert len(shown) == len(csv)  # the newest run's rows only: the first run is superseded, not doubled
    assert shown["method"].tolist() == csv["signal"].tolist()
    assert shown["setting"].tolist() == [f"{k} {r:.0%}" for k, r in zip(csv["kind"], csv["rate"])]
    for metric in ("f1", "auroc", "precision_top5"):
        assert shown[metric].tolist() == pytest.approx(csv[metric].tolist(), abs=1e-4)
    # the chart: the headline metric (AUROC) of every signal and setting, with its status
    (data,) = chart_frames(at)
    assert set(data["metric"]) == {"auroc"} and len(data) == csv["auroc"].notna().sum()
    assert sorted(data["value"]) == pytest.approx(sorted(csv["auroc"].dropna()), abs=1e-4)
    status = dict(zip(zip(data["setting"], data["method"]), data["status"]))
    assert {status[(s, "label_quality")] for s in data["setting"]} == {"baseline"}
    # the noise score is red where it is below cleanlab's label quality, and listed under the chart
    for setting in data["setting"].unique():
        here = data[data["setting"] == setting].set_index("method")["value"]
        loses = here["noise_score"] < here["label_quality"]
        assert status[(setting, "noise_score")] == ("default, below its baseline" if loses else "default")
        listed = any(setting in e.value and "noise_score" in e.value for e in at.error)
        assert listed == loses
    assert at.selectbox[0].value == "auroc"
    at.selectbox[0].set_value("f1").run()
    (data,) = chart_frames(at)
    assert sorted(data["value"]) == pytest.approx(sorted(csv["f1"].dropna()), abs=1e-4)


@pytest.mark.slow
def test_an_installed_package_outside_the_repository_shows_the_numbers(noise_bench, tmp_path):
    """A copy of the package alone (no benchmarks/ folder beside it), run from a folder outside the
    repository: the page reads the warehouse, so it shows the same numbers."""
    project, table, path = noise_bench
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "fieldguide", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = work / "shown.json"
    script = work / "look.py"
    script.write_text(
        "import json, sys, fieldguide\n"
        "from streamlit.testing.v1 import AppTest\n"
        "page = sys.argv[1]\n"
        "at = AppTest.from_file(page, default_timeout=120).run()\n"
        "table = [d for d in at.dataframe if d.proto.alt == 'noise table'][0].value\n"
        "json.dump({'package': fieldguide.__file__, 'exceptions': [str(e.value) for e in at.exception],\n"
        "           'methods': table['method'].tolist(), 'auroc': table['auroc'].tolist()}, open(sys.argv[2], 'w'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), PROJECT_ENV: str(project.root)}
    with (work / "log.txt").open("w") as log:
        done = subprocess.run([sys.executable, str(script), str(site / "fieldguide/dashboards/sections/benchmarks.py"),
                               str(out)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert done.returncode == 0, (work / "log.txt").read_text()[-3000:]
    shown = json.loads(out.read_text())
    assert Path(shown["package"]).is_relative_to(site) and not (site / "benchmarks").exists()
    assert shown["exceptions"] == []
    csv = pd.read_csv(path)
    assert shown["methods"] == csv["signal"].tolist()
    assert shown["auroc"] == pytest.approx(csv["auroc"].tolist(), abs=1e-4, nan_ok=True)


# ---- bench suite --quick: each family's rows equal its CSV; a re-run supersedes ----------------------------
@pytest.mark.slow
def test_bench_suite_records_each_family_in_the_project(tmp_path, tiny_weights, image_folder, project, monkeypatch):
    from typer.testing import CliRunner

    from fieldguide.cli import app
    from fieldguide.suite import COLUMNS

    cache, results = tmp_path / "cache", tmp_path / "results"
    args = ["bench", "suite", "--collection", f"mine={image_folder}:folder", "--quick", "--cache", str(cache),
            "--results", str(results), "--backbone", "timm/test_efficientnet", "--weights", str(tiny_weights)]
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # not a project: the CSVs only
    alone = CliRunner().invoke(app, args + ["--families", "heads"])
    assert alone.exit_code == 0, alone.output
    assert "not recorded in a warehouse (no project here" in alone.output
    assert not project.warehouse_path.exists()

    first = CliRunner().invoke(app, ["--project", str(project.root), *args, "--families", "heads,train"])
    assert first.exit_code == 0, first.output
    assert f"recorded in {project.warehouse_path}" in first.output
    wh = Warehouse(project.warehouse_path)
    (run_id,) = wh.query("SELECT run_id FROM runs WHERE kind = 'bench_suite' AND status = 'completed'")["run_id"]
    for family in ("heads", "train"):
        csv = pd.read_csv(results / f"suite_{family}.csv")
        rows = stored(wh, f"suite_{family}", run_id)
        pd.testing.assert_frame_equal(rows[COLUMNS].reset_index(drop=True), csv[COLUMNS], check_dtype=False)
    assert stored(wh, "suite_noise").empty  # a family not run records nothing

    monkeypatch.chdir(project.root)  # in the project: the current folder is found, as the CLI finds it
    again = CliRunner().invoke(app, args + ["--families", "heads"])
    assert again.exit_code == 0, again.output
    runs = wh.query("SELECT run_id FROM runs WHERE kind = 'bench_suite' ORDER BY started")["run_id"].tolist()
    assert len(runs) == 2 and len(stored(wh, "suite_heads")) == 2 * len(pd.read_csv(results / "suite_heads.csv"))

    at = render_page(project.root)
    for family in ("heads", "train"):
        csv = pd.read_csv(results / f"suite_{family}.csv")
        shown = frame(at, f"suite_{family} table")
        # one row per method of a setting, its metrics side by side: the newest run's, once
        wide = csv.pivot_table(index=["setting", "method", "role"], columns="metric", values="value", sort=False)
        assert len(shown) == len(wide)
        got = shown.set_index(["setting", "method", "role"])
        for metric in ("top1", "macro_f1"):
            assert got[metric].to_dict() == pytest.approx(wide[metric].to_dict())
    caption = " ".join(c.value for c in at.caption)
    assert f"run {runs[1]}" in caption and f"run {runs[0]}" in caption  # heads from the re-run, train from the first
    tables = {d.proto.alt for d in at.dataframe}
    assert tables == {"suite_heads table", "suite_train table"}


def test_the_empty_page_says_what_to_run(project):
    at = render_page(project.root)
    assert "No benchmark recorded yet: run `fieldguide bench suite --quick`" in at.info[0].value
    assert f"fieldguide --project {project.root} bench suite --quick" in [c.value for c in at.code]
    assert not at.dataframe and not at.get("vega_lite_chart")
    Warehouse(project.warehouse_path).write("runs", [{  # a warehouse with runs but no benchmark yet
        "run_id": "ingest-1", "kind": "ingest", "config": "{}", "status": "completed",
        "started": pd.Timestamp("2025-01-01"), "finished": pd.Timestamp("2025-01-01 00:01")}])
    at = render_page(project.root)
    assert "No benchmark recorded yet" in at.info[0].value


def test_a_running_or_failed_run_is_not_shown(project):
    wh = Warehouse(project.warehouse_path)
    table = pd.DataFrame({"head": ["logreg", "knn"], "test_top1": [0.9, 0.8]})
    rows = bench_results.long_form(table, metrics=["test_top1"], method=table["head"], collection="c", setting="test")
    done = bench_results.record_run(wh, "bench_heads", {"heads": rows})
    running = wh.start_run("bench_heads")
    bench_results.record(wh, running, "heads", rows.assign(value=[0.1, 0.2]))
    with pytest.raises(RuntimeError):
        with wh.run("bench_heads") as failed:
            bench_results.record(wh, failed, "heads", rows.assign(value=[0.3, 0.4]))
            raise RuntimeError("killed")
    at = render_page(project.root)
    shown = frame(at, "heads table")
    assert shown["test_top1"].tolist() == [0.9, 0.8]
    assert f"run {done}" in " ".join(c.value for c in at.caption)
