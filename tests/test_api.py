"""The Python API (``fieldguide.open_project``): the CLI verbs' functions as methods, the store and the
warehouse as DataFrames, on a real tiny project (generated images, the tiny backbone, a real embedded
MongoDB and DuckDB file)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fieldguide as fg
from fieldguide import api
from fieldguide.config import dump_config, init_project
from fieldguide.curation.export import signals_table
from fieldguide.errors import ConfigError, FieldguideError, ServiceError
from fieldguide.platform import store
from conftest import make_image, use_tiny_backbone

ROOT = Path(__file__).resolve().parents[1]


def one_line(error: BaseException) -> str:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def stored(p: api.Project, fields: list[str], view: str | None = None) -> pd.DataFrame:
    """The store's values, read with FiftyOne itself: one row per sample, by id."""
    ds = store.dataset(p.project)
    ds.reload()
    samples = ds.load_saved_view(view) if view else ds
    ids, *columns = samples.values(["id", *fields])
    return pd.DataFrame(dict(zip(fields, columns)), index=ids)


# ---- the package ------------------------------------------------------------------------------------
def test_import_fieldguide_is_light_and_the_api_comes_on_first_use(tmp_path):
    out = tmp_path / "modules.txt"
    code = ("import sys, fieldguide as fg\n"
            "before = sorted(m for m in sys.modules if m.startswith(('fieldguide.', 'fiftyone', 'pandas', 'torch')))\n"
            "fg.open_project\n"
            "after = 'fieldguide.api' in sys.modules, 'fiftyone' in sys.modules, 'torch' in sys.modules\n"
            f"open({str(out)!r}, 'w').write(repr((before, after, sorted(dir(fg)))))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120,
                          stdout=(tmp_path / "out").open("w"), stderr=subprocess.STDOUT)
    assert done.returncode == 0, (tmp_path / "out").read_text()
    before, after, names = eval(out.read_text())  # noqa: S307 - our own repr
    assert before == []
    assert after == (True, False, False)  # the facade imports its steps' heavy parts when they run
    assert {"open_project", "init_project", "Project"} <= set(names)
    assert fg.open_project is api.open_project and fg.init_project is api.init_project
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fg.nope  # noqa: B018


def test_init_and_open(tmp_path, monkeypatch):
    p = fg.init_project(tmp_path / "birds")
    assert (tmp_path / "birds" / "fieldguide.toml").is_file()
    assert p.root == tmp_path / "birds" and p.config.project.name == "birds"
    assert repr(p) == f"<fieldguide project 'birds' at {tmp_path / 'birds'}>"
    again = fg.open_project(tmp_path / "birds")
    assert again.config.project.id == p.config.project.id  # the same project, read from its file
    monkeypatch.setenv("FIELDGUIDE_PROJECT", str(tmp_path / "birds"))
    assert fg.open_project().root == p.root
    # init keeps an existing file; --new-id's counterpart gives the copy an identity of its own
    assert fg.init_project(tmp_path / "birds", "other").config.project.name == "birds"
    with pytest.raises(ConfigError) as e:
        fg.open_project(tmp_path / "nowhere")
    assert "fieldguide init" in one_line(e.value) and str(tmp_path / "nowhere") in str(e.value)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError) as e:
        fg.init_project(tmp_path / "afile")
    assert "is a file" in one_line(e.value)


# ---- the loop's steps through the API ------------------------------------------------------------
@pytest.fixture
def facade(project, tiny_weights):
    """The conftest project opened through the API, with the tiny backbone (this session only)."""
    p = fg.open_project(project.root)
    use_tiny_backbone(p.project, tiny_weights)
    return p


SAMPLE_FIELDS = ["filepath", "ground_truth.label", "tags", "origin"]


def assert_rows_equal_the_store(df: pd.DataFrame, p: api.Project, view: str | None = None) -> None:
    s = stored(p, SAMPLE_FIELDS, view)
    assert df["sample_id"].tolist() == s.index.tolist()  # every sample once, in the store's (view's) order
    assert df["filepath"].tolist() == s["filepath"].tolist()
    assert df["label"].tolist() == s["ground_truth.label"].tolist()
    assert df["split"].tolist() == [store.split_of(t) for t in s["tags"]]
    assert df["origin"].tolist() == s["origin"].tolist()


@pytest.mark.slow
def test_the_loop_through_the_api(facade, image_folder):
    p = facade
    report = p.ingest(image_folder, fmt="folder")
    assert (report.added, report.existing) == (24, 0)
    assert p.ingest(image_folder).added == 0  # re-running adds nothing twice, as the verb
    df = p.samples()
    assert list(df.columns) == ["sample_id", "filepath", "label", "split", "origin", *api.SAMPLE_COLUMNS]
    assert_rows_equal_the_store(df, p)
    assert df[list(api.SAMPLE_COLUMNS)].isna().all().all()  # nothing predicted, flagged or reviewed yet
    assert len(p.samples(split="test")) == 6 and set(p.samples(split="test")["split"]) == {"test"}

    assert p.embed().embedded == 24
    pred = p.predict(head="logreg", folds=3)
    assert pred.n_cross_validated == 18
    metrics = p.evaluate()
    assert metrics["split"] == "test" and metrics["n"] == 6
    flagged = p.flag()
    assert flagged.assessed == 24
    trained = p.train(method="ce", epochs=5)
    assert trained.n_train == 18

    df = p.samples(fields=["filehash"])
    assert_rows_equal_the_store(df, p)
    s = stored(p, ["prediction.label", "prediction.confidence", "noise_score", "label_issue", "filehash"])
    assert df["prediction"].tolist() == s["prediction.label"].tolist()
    np.testing.assert_allclose(df["confidence"].astype(float), s["prediction.confidence"].astype(float))
    np.testing.assert_allclose(df["noise_score"].astype(float), s["noise_score"].astype(float))
    assert df["label_issue"].tolist() == s["label_issue"].tolist() and df["filehash"].tolist() == s["filehash"].tolist()
    queued = set(df[df["review_state"] == "to_review"]["sample_id"])  # flag queued them
    assert queued == set(p.dataset().match_tags("to_review").values("id")) and len(queued) == flagged.queued
    tagged = p.samples(fields=["tags", "ground_truth.label"])  # fields the table reads anyway: one column each
    assert tagged["tags"].tolist() == stored(p, ["tags"])["tags"].tolist()
    assert tagged["ground_truth.label"].tolist() == df["label"].tolist()

    queue = p.samples(view="to_review")
    assert_rows_equal_the_store(queue, p, view="to_review")
    assert len(queue) == flagged.flagged and queue["label_issue"].all()
    assert queue["noise_score"].is_monotonic_decreasing
    assert p.view("to_review").values("id") == queue["sample_id"].tolist()
    assert p.dataset().name == p.project.dataset_name and len(p.dataset()) == 24

    runs = p.runs()
    assert runs["kind"].tolist() == ["ingest", "ingest", "embed", "predict", "evaluate", "flag", "train"]
    assert set(runs["status"]) == {"completed"}
    assert p.runs("flag")["run_id"].tolist() == [flagged.run_id]
    assert p.runs("train")["run_id"].tolist() == [trained.run_id]

    pd.testing.assert_frame_equal(p.signals(), signals_table(p.project))
    path, rows = p.export_signals(Path(p.root) / "out.csv")
    assert rows == 24 and len(pd.read_csv(path)) == 24
    assert p.status()["samples"] == 24


@pytest.mark.slow
def test_set_label_is_a_curators_decision_with_history(facade, image_folder):
    p = facade
    p.ingest(image_folder)
    df = p.samples(split="train")
    red, blue = (df[df["label"] == c]["sample_id"].tolist() for c in ("red_bird", "blue_bird"))
    assert p.set_label(red[0], "blue_bird").changed == 1
    assert p.set_label(red[1:3], "green_bird", actor="ana").changed == 2
    both = p.set_labels({blue[0]: "red_bird", blue[1]: "blue_bird"})  # the second one confirms
    assert (both.changed, both.confirmed) == (1, 1)
    states = p.samples().set_index("sample_id")["review_state"]
    assert states[blue[0]] == "resolved" and states[blue[1]] == "dismissed"
    assert p.confirm(red[0]).confirmed == 1 and p.samples().set_index("sample_id")["review_state"][red[0]] == "dismissed"
    after = p.samples().set_index("sample_id")["label"]
    assert [after[i] for i in (red[0], red[1], red[2], blue[0], blue[1])] == [
        "blue_bird", "green_bird", "green_bird", "red_bird", "blue_bird"]
    history = store.label_history(p.dataset(), red[1])
    assert [(h["old"], h["new"], h["source"], h["actor"]) for h in history] == [
        ("red_bird", "green_bird", "curator", "ana")]
    assert store.label_history(p.dataset(), red[0])[-1]["actor"] == p.config.project.curator
    events = store.warehouse(p.project).query("SELECT sample_id, new, source FROM label_events ORDER BY sample_id")
    assert len(events) == 6 and set(events["source"]) == {"curator"}
    runs = p.runs("set_label")
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    # bad input: one line, nothing changed (no run row either)
    before = p.samples()
    for call, says in ((lambda: p.set_label(red[0], "purple_bird"), "unknown class(es) purple_bird"),
                       (lambda: p.set_label("0" * 24, "red_bird"), "not in the store")):
        with pytest.raises(FieldguideError) as e:
            call()
        assert says in one_line(e.value)
    pd.testing.assert_frame_equal(p.samples(), before)
    assert len(p.runs("set_label")) == 4


def test_errors_are_one_line(facade, image_folder):
    p = facade
    with pytest.raises(FieldguideError) as e:
        p.samples()
    assert "run 'fieldguide ingest SOURCE' first" in one_line(e.value)
    with pytest.raises(FieldguideError) as e:
        p.ingest(image_folder, fmt="tiff")
    assert "unknown format 'tiff'" in one_line(e.value)
    p.ingest(image_folder)
    with pytest.raises(FieldguideError) as e:
        p.view("to_review")
    assert "no saved view 'to_review'" in one_line(e.value)
    with pytest.raises(FieldguideError) as e:
        p.samples(fields=["observer_nickname"])
    assert "no sample field 'observer_nickname'" in one_line(e.value)
    with pytest.raises(FieldguideError) as e:
        p.samples(split="holdout")
    assert "unknown split 'holdout'" in one_line(e.value)
    for step, says in ((p.flag, "fieldguide predict"), (p.signals, "no flag run yet")):
        with pytest.raises(FieldguideError) as e:
            step()
        assert says in one_line(e.value)
    with pytest.raises(FieldguideError) as e:
        p.push()  # nothing flagged yet
    assert "run 'fieldguide flag' first" in one_line(e.value)
    with pytest.raises(ServiceError) as e:
        p.pull()  # no Label Studio: one line that says how to start it
    assert "fieldguide labelstudio start" in one_line(e.value)


# ---- the README's example ------------------------------------------------------------------------------
def docstring_example() -> str:
    """The code block of :mod:`fieldguide.api`'s docstring, after ``Example (README, "Python API")::``."""
    text = api.__doc__.split('Example (README, "Python API")::', 1)[1]
    return textwrap.dedent(text).strip() + "\n"


def readme_example() -> str | None:
    """The first ``python`` block of README.md's "Python API" section, when the README has one."""
    m = re.search(r"^## Python API\n.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.M | re.S)
    return m.group(1) if m else None


def test_the_readme_example_is_the_docstrings():
    readme = readme_example()
    assert readme is None or readme == docstring_example(), "README's Python API example differs from fieldguide/api.py's"


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, tiny_weights, image_folder, monkeypatch):
    """The example as written, in a folder holding its ``photos`` (the generated birds and one red bird
    filed as blue) and its ``birds`` project (made with the tiny backbone, which the example keeps)."""
    image_folder.rename(tmp_path / "photos")
    make_image(tmp_path / "photos" / "train" / "blue_bird" / "mislabeled.jpg", (200, 40, 40), seed=77)
    project = init_project(tmp_path / "birds")
    use_tiny_backbone(project, tiny_weights)
    project.config_path.write_text(dump_config(project.config))
    monkeypatch.chdir(tmp_path)
    code = readme_example() or docstring_example()
    namespace: dict = {}
    try:
        exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102 - our own example
        report, queue, top, p = (namespace[k] for k in ("report", "queue", "top", "p"))
        assert report.assessed == 25 and len(queue) == report.flagged >= 1
        assert len(pd.read_csv(tmp_path / "signals.csv")) == 25
        ds = store.dataset(p.project)
        for sid, predicted in zip(top["sample_id"], top["prediction"]):
            last = store.label_history(ds, sid)[-1]
            assert (last["new"], last["source"]) == (predicted, "curator")
            assert ds[sid].ground_truth.label == predicted
        assert set(p.runs()["kind"]) == {"ingest", "embed", "predict", "flag", "set_label"}
    finally:
        store.release_database()
