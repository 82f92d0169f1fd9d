"""The ``fieldguide`` command through Typer's CliRunner, on real projects."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from conftest import make_image
from fieldguide.cli import app
from fieldguide.config import CONFIG_NAME, load_config


@pytest.fixture
def runner():
    return CliRunner()


def _error_line(result) -> str:
    """The one line an expected error prints (on stderr), checked to be the only one."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_help_lists_the_verbs(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("init", "ingest", "status", "app"):
        assert verb in result.stdout


def test_init_writes_the_project_file(runner, tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "birds"), "--name", "warblers"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"project warblers at {tmp_path / 'birds'}"
    config = load_config(tmp_path / "birds" / CONFIG_NAME)
    assert config.project.name == "warblers"
    # again: kept as is
    again = runner.invoke(app, ["init", str(tmp_path / "birds"), "--name", "other"])
    assert again.exit_code == 0
    assert "project warblers" in again.stdout


def test_ingest_folder_and_csv_then_status(runner, tmp_path, image_folder):
    proj = tmp_path / "p"
    assert runner.invoke(app, ["init", str(proj)]).exit_code == 0
    result = runner.invoke(app, ["--project", str(proj), "ingest", str(image_folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "added 24, already in the store 0, rejected 0"

    src = tmp_path / "csvsrc"
    make_image(src / "a.jpg", (10, 200, 10), seed=1)
    make_image(src / "b.jpg", (10, 200, 10), seed=2)
    with (src / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows([
            ["path", "species", "observer"],
            ["a.jpg", "green_bird", "ann"],
            ["b.jpg", "", "bob"],
            ["gone.jpg", "green_bird", "cy"],
        ])
    result = runner.invoke(app, [
        "-p", str(proj), "ingest", str(src / "m.csv"), "--format", "csv",
        "--filepath-column", "path", "--label-column", "species", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["existing"], report["rejected"]) == (2, 0, 1)
    assert report["format"] == "csv"
    assert report["rejects_report"].startswith(str(proj / "runs" / report["run_id"]))

    result = runner.invoke(app, ["-p", str(proj), "status", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["samples"] == 26
    assert info["classes"] == 3
    assert info["splits"] == {"train": 19, "test": 6, "unlabeled": 1}
    assert info["rejects"] == 1  # of the last ingest
    assert info["dataset"].startswith("fieldguide-p-")
    assert info["per_class"] == {"blue_bird": 8, "green_bird": 9, "red_bird": 8}
    assert info["runs_total"] == 2
    assert {r["status"] for r in info["runs"]} == {"completed"}

    plain = runner.invoke(app, ["-p", str(proj), "status"])
    assert plain.exit_code == 0
    assert "samples  26   classes 3   label changes 0   rejects (last ingest) 1" in plain.stdout
    assert "splits   train 19, test 6, unlabeled 1" in plain.stdout


def test_project_from_the_environment(runner, tmp_path, monkeypatch):
    proj = tmp_path / "envproj"
    assert runner.invoke(app, ["init", str(proj)]).exit_code == 0
    monkeypatch.setenv("FIELDGUIDE_PROJECT", str(proj))
    result = runner.invoke(app, ["ingest", str(tmp_path / "missing-folder")])
    assert result.exit_code == 1
    assert _error_line(result) == f"error: {tmp_path / 'missing-folder'} does not exist"


def test_unknown_format_is_a_one_line_error(runner, tmp_path, image_folder):
    proj = tmp_path / "p"
    runner.invoke(app, ["init", str(proj)])
    result = runner.invoke(app, ["-p", str(proj), "ingest", str(image_folder), "--format", "zip"])
    assert result.exit_code == 1
    assert _error_line(result) == "error: unknown format 'zip' (use one of folder, cub, csv, inat, dwca)"


def test_missing_project_is_a_one_line_error(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FIELDGUIDE_PROJECT", raising=False)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1
    line = _error_line(result)
    assert line.startswith(f"error: {tmp_path / CONFIG_NAME} does not exist")
    assert "fieldguide init" in line
    result = runner.invoke(app, ["-p", str(tmp_path / "nowhere"), "ingest", str(tmp_path)])
    assert result.exit_code == 1
    assert "nowhere" in _error_line(result)


def test_bad_config_is_a_one_line_error(runner, tmp_path):
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / CONFIG_NAME).write_text('[project]\nname = "p"\n[ingest]\nworkers = "many"\n')
    result = runner.invoke(app, ["-p", str(proj), "status"])
    assert result.exit_code == 1
    assert "'ingest.workers': Input should be a valid integer" in _error_line(result)


def test_strict_ingest_fails_and_adds_nothing(runner, tmp_path, image_folder):
    proj = tmp_path / "p"
    runner.invoke(app, ["init", str(proj)])
    (image_folder / "train" / "red_bird" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = runner.invoke(app, ["-p", str(proj), "ingest", str(image_folder), "--strict"])
    assert result.exit_code != 0
    line = _error_line(result)
    assert "1 reject(s) with --strict, nothing ingested" in line
    assert "broken.jpg" in line
    # nothing ingested; without --strict the same source goes in, minus the broken file
    result = runner.invoke(app, ["-p", str(proj), "ingest", str(image_folder)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-3] == "added 24, already in the store 0, rejected 1"
    assert lines[-2].startswith(f"  rejected {image_folder / 'train' / 'red_bird' / 'broken.jpg'}: ")
    assert lines[-1].startswith(f"rejects report: {proj / 'runs'}")
