"""Issue 21: bad input to ``ingest`` gets a clear error or a reject, and loses nothing.

On real parts: a temporary project on a real embedded MongoDB and a real DuckDB warehouse,
generated images, the command through Typer's CliRunner.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_image
from fieldguide.cli import app
from fieldguide.errors import IngestError
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest

NOT_UTF8 = "file name is not valid UTF-8; rename it"


@pytest.fixture
def runner():
    return CliRunner()


def _cli(runner, project, *args):
    result = runner.invoke(app, ["--project", str(project.root), "ingest", *map(str, args)])
    assert not isinstance(result.exception, Exception), result.exception  # a traceback, a bug
    assert "Traceback" not in result.output
    return result


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _bad_path(folder: Path, name: bytes) -> Path:
    """A path whose last part is ``name``: bytes that are not UTF-8 (e.g. Latin-1 ``caf\\xe9``)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def _state(project) -> dict:
    """What a failed ingest must leave as it was: the store and the warehouse tables."""
    ds = store.dataset(project, create=False)
    wh = store.warehouse(project)

    def count(sql):
        return int(wh.query(sql).iloc[0, 0])

    return {
        "samples": len(ds),
        "labels": ds.count_values("ground_truth.label"),
        "tags": ds.count_sample_tags(),
        "votes": ds.count("votes.classifications"),
        "history": ds.count("label_history"),
        "classes": list(ds.default_classes),
        "warehouse_samples": count("SELECT count(*) FROM samples"),
        "warehouse_labels": dict(wh.query("SELECT label, count(*) FROM samples GROUP BY label").values.tolist()),
        "label_events": count("SELECT count(*) FROM label_events"),
        "rejects": count("SELECT count(*) FROM rejects"),
    }


def _last_run(project) -> dict:
    return store.warehouse(project).query("SELECT * FROM runs ORDER BY started DESC LIMIT 1").iloc[0].to_dict()


def _rejects_table(project, run_id) -> dict[str, tuple[str, str]]:
    df = store.warehouse(project).query("SELECT path, reason, kind FROM rejects WHERE run_id = ?", [run_id])
    return {p: (r, k) for p, r, k in df.itertuples(index=False)}


@pytest.fixture
def more(image_folder) -> Path:
    """A source that would change the store: two new images, one new label for a stored file."""
    src = image_folder.parent / "more"
    make_image(src / "wren" / "w0.jpg", (120, 90, 60), seed=70)
    make_image(src / "wren" / "w1.jpg", (120, 90, 60), seed=71)
    return src


# ---- 1. a failed ingest changes nothing -----------------------------------------------------
@pytest.mark.parametrize(
    ("votes_file", "content", "problem"),
    [
        ("missing.csv", None, "votes CSV file does not exist"),
        ("folder.csv", "a folder", "the votes CSV is a folder, not a file"),
        ("cols.csv", "filepath,label\nwren/w0.jpg,wren\n",
         "votes CSV needs columns filepath, annotator, label (has filepath, label)"),
        ("latin1.csv", "filepath,annotator,label\nwren/w0.jpg,jos\xe9,wren\n".encode("latin-1"),
         "the votes CSV is not UTF-8 text (line 2; save it as UTF-8)"),
        ("empty.csv", "", "the votes CSV is empty"),
    ],
)
def test_bad_votes_file_fails_before_anything_is_written(runner, ingested, more, votes_file, content, problem):
    votes = more / votes_file
    if content == "a folder":
        votes.mkdir()
    elif isinstance(content, bytes):
        votes.write_bytes(content)
    elif content is not None:
        votes.write_text(content)
    before = _state(ingested)
    result = _cli(runner, ingested, more, "--votes", votes)
    assert result.exit_code == 1
    assert _error_line(result) == f"error: {votes}: {problem}"
    assert result.stdout == ""
    assert _state(ingested) == before  # the two new images were not added
    run = _last_run(ingested)
    assert (run["kind"], run["status"]) == ("ingest", "failed")
    assert run["message"] == f"IngestError: {votes}: {problem}"
    assert _rejects_table(ingested, run["run_id"]) == {}


def test_failed_ingest_leaves_labels_and_label_events_as_they_were(runner, ingested, image_folder):
    """A source with new images, a new label for a stored file (--update-labels) and a new class,
    but a votes CSV without an annotator column: nothing of it lands."""
    make_image(image_folder / "new" / "n0.jpg", (5, 5, 5), seed=80)
    manifest = _write_csv(image_folder / "m.csv", ["filepath", "label"], [
        ["train/red_bird/red_bird_train_0.jpg", "green_bird"],
        ["new/n0.jpg", "wren"],
    ])
    votes = _write_csv(image_folder / "votes.csv", ["filepath", "who", "label"], [["new/n0.jpg", "ann", "wren"]])
    before = _state(ingested)
    result = _cli(runner, ingested, manifest, "--format", "csv", "--update-labels", "--votes", votes)
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"error: {votes}: votes CSV needs columns filepath, annotator, label (has filepath, who, label)"
    )
    assert _state(ingested) == before
    assert before["labels"] == {"red_bird": 8, "green_bird": 8, "blue_bird": 8}
    assert before["label_events"] == 0 and before["history"] == 0
    assert _last_run(ingested)["status"] == "failed"


def test_csv_column_that_does_not_fit_the_stores_field_fails_before_writing(runner, project, tmp_path):
    """A column of whole numbers makes an integer field; text in it later would fail mid-write."""
    src = tmp_path / "obs"
    for i in range(4):
        make_image(src / f"p{i}.jpg", (90, 140, 60), seed=90 + i)
    first = _write_csv(src / "a.csv", ["filepath", "label", "count"], [["p0.jpg", "x", "3"], ["p1.jpg", "x", "4"]])
    assert _cli(runner, project, first, "--format", "csv").exit_code == 0
    second = _write_csv(src / "b.csv", ["filepath", "label", "count"], [["p2.jpg", "y", "5"], ["p3.jpg", "y", "three"]])
    before = _state(project)
    result = _cli(runner, project, second, "--format", "csv")
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"error: {second}: field 'count' would get text ('5' for {src / 'p2.jpg'}), but the store's "
        "'count' holds whole numbers (rename the column or fix its values)"
    )
    assert _state(project) == before
    assert before["samples"] == 2 and before["classes"] == ["x"]
    assert _last_run(project)["status"] == "failed"


# ---- 2. file and folder names that are not UTF-8 -------------------------------------------
def test_file_name_that_is_not_utf8_is_a_reject_and_reruns_add_nothing(runner, project, tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        make_image(src / "wren" / f"w{i}.jpg", (120, 90, 60), seed=i)
    make_image(_bad_path(src / "wren", b"caf\xe9.jpg"), (1, 2, 3))  # Latin-1
    make_image(_bad_path(src / "wren", b"w1\xff.jpg"), (1, 2, 3))  # between w1 and w2: mid-batch
    shown = {str(src / "wren" / "caf\\xe9.jpg"), str(src / "wren" / "w1\\xff.jpg")}
    result = _cli(runner, project, src)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "added 3, already in the store 0, rejected 2"
    assert sorted(lines[1:3]) == sorted(f"  rejected {p}: {NOT_UTF8}" for p in shown)
    ds = store.dataset(project, create=False)
    assert sorted(Path(p).name for p in ds.values("filepath")) == ["w0.jpg", "w1.jpg", "w2.jpg"]
    run = _last_run(project)
    assert _rejects_table(project, run["run_id"]) == {p: (NOT_UTF8, "reject") for p in shown}
    with open(project.runs_dir / run["run_id"] / "rejects.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason", "kind"]
    assert sorted(rows[1:]) == sorted([p, NOT_UTF8, "reject"] for p in shown)
    for _ in range(2):
        again = _cli(runner, project, src)
        assert again.exit_code == 0, again.output
        assert again.stdout.splitlines()[0] == "added 0, already in the store 3, rejected 2"
        assert len(ds) == 3
    assert store.warehouse(project).query("SELECT count(*) FROM samples").iloc[0, 0] == 3


def test_class_folder_name_that_is_not_utf8_is_one_reject(project, tmp_path):
    src = tmp_path / "src"
    for seed, split in enumerate(("train", "test")):
        make_image(src / split / "wren" / "w.jpg", (120, 90, 60), seed=seed)
    for i in range(2):
        make_image(_bad_path(src / "train", b"caf\xe9") / f"c{i}.jpg", (1, 2, 3), seed=i)
    make_image(_bad_path(src, b"\xfftra") / "x.jpg", (1, 2, 3))  # beside the split folders
    report = ingest(project, src)
    assert sorted((r.path, r.reason) for r in report.rejects) == [
        (str(src / "\\xfftra"), "folder name is not valid UTF-8; rename it (1 image(s) in it not ingested)"),
        (str(src / "train" / "caf\\xe9"), "folder name is not valid UTF-8; rename it (2 image(s) in it not ingested)"),
    ]
    ds = store.dataset(project, create=False)
    assert report.added == 2
    assert ds.count_sample_tags() == {"train": 1, "test": 1}  # still the split layout
    assert ds.default_classes == ["wren"]
    assert ingest(project, src).added == 0 and len(ds) == 2


def test_csv_path_through_a_folder_whose_name_is_not_utf8(project, tmp_path):
    src = tmp_path / "obs"
    make_image(_bad_path(src, b"d\xe9j\xe0") / "p.jpg", (1, 2, 3))
    make_image(src / "ok.jpg", (4, 5, 6))
    os.symlink(os.fsencode(_bad_path(src, b"d\xe9j\xe0")), src / "photos")
    manifest = _write_csv(src / "m.csv", ["filepath", "label"], [["photos/p.jpg", "x"], ["ok.jpg", "x"]])
    report = ingest(project, manifest, fmt="csv")
    assert [(r.path, r.reason) for r in report.rejects] == [
        (str(src / "photos" / "p.jpg"), "folder name 'd\\xe9j\\xe0' is not valid UTF-8; rename it")
    ]
    assert report.added == 1


# ---- 3. a symlink loop --------------------------------------------------------------------------
def test_symlink_loop_in_a_csv_or_votes_csv_is_a_reject(runner, project, tmp_path):
    src = tmp_path / "obs"
    make_image(src / "ok.jpg", (4, 5, 6))
    os.symlink("loop.jpg", src / "loop.jpg")
    manifest = _write_csv(src / "m.csv", ["filepath", "label"], [["loop.jpg", "x"], ["ok.jpg", "x"]])
    votes = _write_csv(src / "v.csv", ["filepath", "annotator", "label"],
                       [["loop.jpg", "ann", "x"], ["ok.jpg", "ann", "x"]])
    result = _cli(runner, project, manifest, "--format", "csv", "--votes", votes, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["rejected"], report["votes_added"]) == (1, 2, 1)
    table = _rejects_table(project, report["run_id"])
    assert table == {
        str(src / "loop.jpg"): (f"cannot resolve path: Symlink loop from '{src / 'loop.jpg'}'", "reject"),
        f"{votes}:2": (f"cannot resolve path: Symlink loop from '{src / 'loop.jpg'}'", "reject"),
    }
    assert len(store.dataset(project, create=False)) == 1


# ---- 4. decisions are explicit -------------------------------------------------------------
def test_class_names_differing_in_case_within_a_source(project, tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        make_image(src / "Robin" / f"R{i}.jpg", (200, 80, 40), seed=i)
        make_image(src / "robin" / f"r{i}.jpg", (200, 80, 40), seed=10 + i)
    report = ingest(project, src)
    assert [(n.path, n.reason) for n in report.notices] == [
        ("class:robin", "class 'robin' differs only in case from 'Robin'; kept as its own class "
                        "(--fold-case maps it onto 'Robin')")
    ]
    assert store.dataset(project, create=False).count_values("ground_truth.label") == {"Robin": 2, "robin": 2}
    assert report.rejects == [] and report.as_dict()["noticed"] == 1


def test_fold_case_maps_variants_onto_the_first_spelling(project, tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        make_image(src / "Robin" / f"R{i}.jpg", (200, 80, 40), seed=i)
        make_image(src / "robin" / f"r{i}.jpg", (200, 80, 40), seed=10 + i)
    report = ingest(project, src, fold_case=True)
    assert [(n.path, n.reason) for n in report.notices] == [
        ("class:robin", "class 'robin' differs only in case from 'Robin'; mapped onto 'Robin' (--fold-case)")
    ]
    ds = store.dataset(project, create=False)
    assert ds.count_values("ground_truth.label") == {"Robin": 4}
    assert ds.default_classes == ["Robin"] and report.classes_added == 1


def test_class_names_differing_in_case_from_the_store(runner, ingested, tmp_path):
    src = tmp_path / "more"
    make_image(src / "Red_Bird" / "a.jpg", (200, 40, 40), seed=60)
    make_image(src / "wren" / "b.jpg", (120, 90, 60), seed=61)
    votes = _write_csv(src / "votes.csv", ["filepath", "annotator", "label"], [["wren/b.jpg", "ann", "WREN"]])
    reason = "class 'Red_Bird' differs only in case from 'red_bird' (in the store)"
    result = _cli(runner, ingested, src, "--votes", votes)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:3] == [
        "added 2, already in the store 0, rejected 0, notices 2, votes 1",
        f"  notice class:Red_Bird: {reason}; kept as its own class (--fold-case maps it onto 'red_bird')",
        "  notice class:WREN: class 'WREN' differs only in case from 'wren'; kept as its own class "
        "(--fold-case maps it onto 'wren')",
    ]
    ds = store.dataset(ingested, create=False)
    assert ds.count_values("ground_truth.label")["Red_Bird"] == 1
    assert "WREN" in ds.default_classes


def test_fold_case_maps_variants_onto_the_stores_spelling(runner, ingested, tmp_path):
    src = tmp_path / "more"
    make_image(src / "Red_Bird" / "a.jpg", (200, 40, 40), seed=60)
    make_image(src / "wren" / "b.jpg", (120, 90, 60), seed=61)
    votes = _write_csv(src / "votes.csv", ["filepath", "annotator", "label"], [["wren/b.jpg", "ann", "WREN"]])
    result = _cli(runner, ingested, src, "--votes", votes, "--fold-case")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == (
        "  notice class:Red_Bird: class 'Red_Bird' differs only in case from 'red_bird' (in the store); "
        "mapped onto 'red_bird' (--fold-case)"
    )
    ds = store.dataset(ingested, create=False)
    assert ds.count_values("ground_truth.label") == {"red_bird": 9, "green_bird": 8, "blue_bird": 8, "wren": 1}
    assert ds.default_classes == ["blue_bird", "green_bird", "red_bird", "wren"]
    b = ds.match({"filepath": str(src / "wren" / "b.jpg")}).first()
    assert [(c.annotator, c.label) for c in b.votes.classifications] == [("ann", "wren")]


def test_rows_of_one_file_that_disagree_are_rejected_identical_ones_taken_once(project, tmp_path):
    src = tmp_path / "obs"
    for name in ("a", "b", "c", "d"):
        make_image(src / f"{name}.jpg", (90, 140, 60), seed=ord(name))
    manifest = _write_csv(src / "m.csv", ["filepath", "label", "observer"], [
        ["a.jpg", "x", "ann"],
        ["b.jpg", "x", "ann"],
        ["a.jpg", "y", "ann"],
        ["b.jpg", "x", "ann"],
        ["c.jpg", "x", "ann"],
        ["./c.jpg", "x", "bob"],
        ["d.jpg", "x", "ann"],
    ])
    report = ingest(project, manifest, fmt="csv")
    assert [(r.path, r.reason) for r in report.rejects] == [
        (str(src / "a.jpg"), "listed 2 times with different labels ('x', 'y'); keep one row for it"),
        (str(src / "c.jpg"), "listed 2 times with different observer; keep one row for it"),
    ]
    assert [(n.path, n.reason) for n in report.notices] == [
        (str(src / "b.jpg"), "listed 2 times in the source with the same values; taken once")
    ]
    ds = store.dataset(project, create=False)
    assert sorted(Path(p).name for p in ds.values("filepath")) == ["b.jpg", "d.jpg"]
    table = _rejects_table(project, report.run_id)
    assert {p: k for p, (_, k) in table.items()} == {
        str(src / "a.jpg"): "reject", str(src / "c.jpg"): "reject", str(src / "b.jpg"): "notice",
    }


@pytest.fixture
def relabel_csv(image_folder) -> Path:
    """New labels for three stored files: another class, a new class, the same label."""
    return _write_csv(image_folder / "relabel.csv", ["filepath", "label"], [
        ["train/red_bird/red_bird_train_0.jpg", "green_bird"],
        ["train/blue_bird/blue_bird_train_0.jpg", "robin"],
        ["train/green_bird/green_bird_train_0.jpg", "green_bird"],
    ])


def test_new_label_for_a_stored_file_is_a_notice_and_kept(ingested, image_folder, relabel_csv):
    report = ingest(ingested, relabel_csv, fmt="csv")
    train = image_folder / "train"
    assert (report.added, report.existing, report.labels_updated) == (0, 3, 0)
    assert [(n.path, n.reason) for n in report.notices] == [
        (str(train / "red_bird" / "red_bird_train_0.jpg"),
         "in the store as 'red_bird', the source says 'green_bird'; kept 'red_bird' (--update-labels applies it)"),
        (str(train / "blue_bird" / "blue_bird_train_0.jpg"),
         "in the store as 'blue_bird', the source says 'robin'; kept 'blue_bird' (--update-labels applies it)"),
    ]
    ds = store.dataset(ingested, create=False)
    assert ds.count_values("ground_truth.label") == {"red_bird": 8, "green_bird": 8, "blue_bird": 8}
    assert ds.count("label_history") == 0
    assert "robin" not in ds.default_classes
    assert store.warehouse(ingested).query("SELECT count(*) FROM label_events").iloc[0, 0] == 0


def test_update_labels_applies_them_with_history_and_label_events(runner, ingested, image_folder, relabel_csv):
    result = _cli(runner, ingested, relabel_csv, "--format", "csv", "--update-labels")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "added 0, already in the store 3, rejected 0, notices 2, labels updated 2"
    )
    assert result.stdout.splitlines()[1].endswith(
        "in the store as 'red_bird', the source says 'green_bird'; label set to 'green_bird' (--update-labels)"
    )
    run_id = _last_run(ingested)["run_id"]
    ds = store.dataset(ingested, create=False)
    assert ds.count_values("ground_truth.label") == {"red_bird": 7, "green_bird": 9, "blue_bird": 7, "robin": 1}
    assert "robin" in ds.default_classes
    red0 = ds.match({"filepath": str(image_folder / "train" / "red_bird" / "red_bird_train_0.jpg")}).first()
    blue0 = ds.match({"filepath": str(image_folder / "train" / "blue_bird" / "blue_bird_train_0.jpg")}).first()
    assert [(h.old, h.new, h.source, h.actor, h.run_id) for h in red0.label_history] == [
        ("red_bird", "green_bird", "ingest", "ingest", run_id)
    ]
    wh = store.warehouse(ingested)
    events = wh.query("SELECT sample_id, old, new, source, actor, run_id FROM label_events ORDER BY new")
    assert events.values.tolist() == [
        [red0.id, "red_bird", "green_bird", "ingest", "ingest", run_id],
        [blue0.id, "blue_bird", "robin", "ingest", "ingest", run_id],
    ]
    assert wh.query("SELECT label FROM samples WHERE sample_id = ?", [red0.id]).iloc[0, 0] == "green_bird"
    # the same source again: nothing left to change, nothing to report
    again = ingest(ingested, relabel_csv, fmt="csv", update_labels=True)
    assert (again.labels_updated, again.notices) == (0, [])
    assert ds.count("label_history") == 2


def test_update_labels_on_an_unlabeled_sample_moves_it_to_its_split(project, tmp_path):
    src = tmp_path / "obs"
    make_image(src / "u.jpg", (1, 2, 3))
    first = _write_csv(src / "a.csv", ["filepath", "label"], [["u.jpg", ""]])
    ingest(project, first, fmt="csv")
    second = _write_csv(src / "b.csv", ["filepath", "label", "split"], [["u.jpg", "wren", "val"]])
    report = ingest(project, second, fmt="csv", update_labels=True)
    assert [n.reason for n in report.notices] == [
        "in the store without a label, the source says 'wren'; label set to 'wren' (--update-labels)"
    ]
    sample = store.dataset(project, create=False).first()
    assert (sample.ground_truth.label, sample.tags) == ("wren", ["val"])
    assert report.labels_updated == 1


def test_strict_still_counts_only_rejects(project, tmp_path):
    src = tmp_path / "obs"
    make_image(src / "a.jpg", (1, 2, 3))
    manifest = _write_csv(src / "m.csv", ["filepath", "label"], [["a.jpg", "x"], ["a.jpg", "x"]])
    report = ingest(project, manifest, fmt="csv", strict=True)  # a notice is not a reject
    assert (report.added, len(report.rejects), len(report.notices)) == (1, 0, 1)
    with pytest.raises(IngestError, match=r"^1 reject\(s\) with --strict"):
        ingest(project, _write_csv(src / "n.csv", ["filepath", "label"], [["a.jpg", "x"], ["a.jpg", "y"]]),
               fmt="csv", strict=True)
