"""The main job (``fieldguide demo``) end to end on a small folder, with the real default backbone."""

from __future__ import annotations

import pytest

from fieldguide.demo import run_demo
from fieldguide.platform import store
from fieldguide.config import open_project

pytestmark = pytest.mark.slow


def test_demo_runs_every_step_and_resumes(tmp_path, image_folder):
    lines: list[str] = []
    summary = run_demo(tmp_path / "demo", image_folder, echo=lines.append, fmt="folder", labelstudio=False)
    text = "\n".join(lines)
    assert summary["samples"] == 24 and summary["classes"] == 3
    assert summary["splits"] == {"train": 18, "test": 6}
    assert summary["assessed"] == 24
    for step in ("ingest", "embed", "predict", "evaluate", "train", "flag", "retrain", "summary"):
        assert any(line.startswith(step) for line in lines), text
    assert "app --view to_review" in text and " dashboard" in text
    project = open_project(tmp_path / "demo")
    # the summary's test top-1 is the share of test samples whose stored prediction is their label
    truth, predicted = store.dataset(project).match_tags("test").values(["ground_truth.label", "prediction.label"])
    assert summary["test"]["top1"] == pytest.approx(sum(t == p for t, p in zip(truth, predicted)) / 6)
    assert any(line.startswith(f"evaluate  test (n=6): top-1 {summary['test']['top1']:.3f}") for line in lines), text
    runs = store.warehouse(project).query("SELECT kind, status FROM runs")
    assert set(runs["kind"]) >= {"ingest", "embed", "predict", "evaluate", "train", "flag", "retrain"}
    assert set(runs["status"]) == {"completed"}
    # a second demo resumes: nothing is ingested or embedded twice
    again: list[str] = []
    run_demo(tmp_path / "demo", image_folder, echo=again.append, fmt="folder", labelstudio=False)
    assert any(line.startswith("ingest    added 0, already in the store 24") for line in again), again
    assert any("embedded 0, cached 24" in line for line in again), again
