"""Ingest on real parts: tiny generated sources, a real embedded MongoDB, a real DuckDB file."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CUB100, make_image
from fieldguide.config import init_project
from fieldguide.errors import IngestError
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from fieldguide.platform.status import project_status


def _read_rejects_csv(path, kind: str = "reject") -> dict[str, str]:
    """path -> reason of the report's rows of ``kind`` (reject or notice)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason", "kind"]
    assert {k for _, _, k in rows[1:]} <= {"reject", "notice"}
    return {p: r for p, r, k in rows[1:] if k == kind}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _truncated_jpeg(path: Path) -> Path:
    """A real JPEG (big enough to span many scan lines) cut in half."""
    buf = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(2).bytes(2048))
    return path


# ---- folder ------------------------------------------------------------------------------
def test_folder_with_split_subfolders(ingested, image_folder):
    ds = store.dataset(ingested, create=False)
    assert len(ds) == 24
    assert ds.count_sample_tags() == {"train": 18, "test": 6}
    assert ds.count_values("ground_truth.label") == {"red_bird": 8, "green_bird": 8, "blue_bird": 8}
    assert ds.default_classes == ["blue_bird", "green_bird", "red_bird"]
    sample = ds.match(
        {"filepath": str(image_folder / "test" / "red_bird" / "red_bird_test_1.jpg")}
    ).first()
    assert sample.tags == ["test"]
    assert sample.ground_truth.label == "red_bird"
    assert sample.origin == "real"
    assert (sample.metadata.width, sample.metadata.height, sample.metadata.num_channels) == (32, 32, 3)
    assert sample.metadata.mime_type == "image/jpeg"
    assert len(sample.filehash) == 40
    # re-running adds nothing
    report = ingest(ingested, image_folder, fmt="folder")
    assert (report.added, report.existing, report.rejects) == (0, 24, [])
    assert len(store.dataset(ingested, create=False)) == 24
    runs = store.warehouse(ingested).query("SELECT status FROM runs WHERE kind = 'ingest'")
    assert runs["status"].tolist() == ["completed", "completed"]
    # the warehouse mirrors the samples for the dashboards
    snap = store.warehouse(ingested).query("SELECT split, count(*) AS n FROM samples GROUP BY split")
    assert dict(zip(snap["split"], snap["n"])) == {"train": 18, "test": 6}


def test_folder_without_split_subfolders_goes_to_train(project, tmp_path):
    src = tmp_path / "flat"
    for i in range(3):
        make_image(src / "wren" / f"w{i}.jpg", (120, 90, 60), seed=i)
        make_image(src / "robin" / "nested" / f"r{i}.png", (200, 80, 40), seed=10 + i)
    (src / "robin" / "notes.txt").write_text("not an image")
    _corrupt_jpeg(src / "wren" / "broken.jpg")
    report = ingest(project, src, fmt="folder")
    assert (report.added, report.existing) == (6, 0)
    assert [(Path(r.path).name, r.reason) for r in report.rejects] == [
        ("broken.jpg", "not an image (cannot identify the format)")
    ]
    ds = store.dataset(project, create=False)
    assert ds.count_sample_tags() == {"train": 6}
    assert ds.count_values("ground_truth.label") == {"wren": 3, "robin": 3}
    png = ds.match({"filepath": str(src / "robin" / "nested" / "r0.png")}).first()
    assert png.metadata.mime_type == "image/png"
    assert png.ground_truth.label == "robin"


def test_source_errors_name_the_problem(project, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no class folders found"):
        ingest(project, tmp_path / "empty", fmt="folder")
    with pytest.raises(IngestError, match=r"unknown format 'zip' \(use one of folder, cub, csv, inat, dwca\)"):
        ingest(project, tmp_path / "empty", fmt="zip")
    with pytest.raises(IngestError, match="does not exist"):
        ingest(project, tmp_path / "nowhere", fmt="folder")
    with pytest.raises(IngestError, match="not a CUB folder, missing images.txt"):
        ingest(project, tmp_path / "empty", fmt="cub")
    with pytest.raises(IngestError, match="--format csv needs a CSV file"):
        ingest(project, tmp_path / "empty", fmt="csv")


# ---- cub -------------------------------------------------------------------------------
def _tiny_cub(root: Path) -> Path:
    """CUB layout, original style: space-separated, '001.Name' classes; 0 = train as in cub100."""
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, splits = [], [], []
    image_id = 0
    for class_id, name in enumerate(classes, start=1):
        for i in range(3):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{i}.jpg"
            make_image(root / "images" / rel, (60 * class_id, 100, 150), seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            splits.append(f"{image_id} {0 if i < 2 else 1}")
    images.append("10 001.Black_footed_Albatross/gone.jpg")  # listed, but no file
    labels.append("10 1")
    splits.append("10 0")
    make_image(root / "images" / "unsorted" / "u.jpg", (10, 10, 10), seed=99)
    images.append("11 unsorted/u.jpg")  # no class: unlabeled
    splits.append("11 0")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(splits) + "\n")
    (root / "classes.txt").write_text(
        "\n".join(f"{i} {c}" for i, c in enumerate(classes, start=1)) + "\n"
    )
    return root


def test_cub_layout(project, tmp_path):
    src = _tiny_cub(tmp_path / "cub")
    report = ingest(project, src, fmt="cub")
    assert report.added == 10
    assert report.classes_added == 3
    assert [(Path(r.path).name, r.reason) for r in report.rejects] == [("gone.jpg", "file does not exist")]
    ds = store.dataset(project, create=False)
    assert ds.count_sample_tags() == {"train": 6, "test": 3, "unlabeled": 1}
    assert ds.count_values("ground_truth.label") == {
        "Black_footed_Albatross": 3, "Laysan_Albatross": 3, "Sooty_Albatross": 3, None: 1,
    }
    first = ds.match({"source_id": "1"}).first()
    assert first.filepath == str(src / "images" / "001.Black_footed_Albatross" / "Black_footed_Albatross_0.jpg")
    assert first.tags == ["train"]
    assert ds.match({"source_id": "3"}).first().tags == ["test"]
    assert ingest(project, src, fmt="cub").added == 0


def test_cub_line_that_is_not_id_value_is_an_error(project, tmp_path):
    src = _tiny_cub(tmp_path / "cub")
    (src / "classes.txt").write_text("1 001.Black_footed_Albatross\njust-one-token\n")
    with pytest.raises(IngestError, match=r"classes.txt:2: expected '<id> <value>'"):
        ingest(project, src, fmt="cub")


@pytest.mark.slow
def test_cub100_real_data(project):
    report = ingest(project, CUB100, fmt="cub")
    assert (report.added, report.existing, len(report.rejects)) == (5902, 0, 0)
    info = project_status(project)
    assert info["samples"] == 5902
    assert info["classes"] == 100
    assert info["splits"] == {"train": 2999, "test": 2903}
    assert info["rejects"] == 0
    ds = store.dataset(project, create=False)
    assert ds.count("metadata") == 5902
    assert set(ds.distinct("metadata.width")) == {227}
    again = ingest(project, CUB100, fmt="cub")
    assert (again.added, again.existing) == (0, 5902)
    assert len(ds) == 5902


# ---- csv ---------------------------------------------------------------------------------
@pytest.fixture
def observations(tmp_path) -> Path:
    """A CSV manifest with observation metadata and free columns, paths relative to its folder."""
    src = tmp_path / "obs"
    for i in range(4):
        make_image(src / "photos" / f"p{i}.jpg", (90, 140, 60), seed=20 + i)
    make_image(src / "photos" / "sub" / "p4.jpg", (90, 140, 60), seed=24)
    header = ["filepath", "label", "family", "genus", "observed_on", "latitude", "longitude",
              "observer", "count", "zip"]
    rows = [
        ["photos/p0.jpg", "Amanita muscaria", "Amanitaceae", "Amanita", "2021-09-14", "52.37", "4.89", "ann", "3", "01234"],
        ["photos/p1.jpg", "Boletus edulis", "Boletaceae", "Boletus", "2021-10-01T08:30:00", "48.85", "2.35", "bob", "1", "75001"],
        ["photos/sub/p4.jpg", "Boletus edulis", "Boletaceae", "Boletus", "", "", "", "", "2.5", "x9"],
        [str(src / "photos" / "p2.jpg"), "", "Amanitaceae", "", "2022-01-02", "-33.9", "151.2", "cy", "", ""],
    ]
    return _write_csv(src / "observations.csv", header, rows)


def test_csv_keeps_observation_metadata_and_extra_columns(project, observations):
    report = ingest(project, observations, fmt="csv")
    assert (report.added, report.rejects) == (4, [])
    ds = store.dataset(project, create=False)
    photos = observations.parent / "photos"
    by_name = {Path(s.filepath).name: s for s in ds}
    assert set(by_name) == {"p0.jpg", "p1.jpg", "p2.jpg", "p4.jpg"}
    p0, p1, p2, p4 = (by_name[n] for n in ("p0.jpg", "p1.jpg", "p2.jpg", "p4.jpg"))
    assert p0.filepath == str(photos / "p0.jpg")  # relative to the CSV's folder
    assert p4.filepath == str(photos / "sub" / "p4.jpg")
    assert (p0.family, p0.genus, p0.observer) == ("Amanitaceae", "Amanita", "ann")
    assert p0.observed_at == dt.datetime(2021, 9, 14)
    assert p1.observed_at == dt.datetime(2021, 10, 1, 8, 30)
    assert p0.location.point == [4.89, 52.37]  # GeoJSON order: longitude, latitude
    assert p2.location.point == [151.2, -33.9]
    assert p0.ground_truth.label == "Amanita muscaria"
    # one type per column: counts are numbers, codes with leading zeros stay text
    assert (p0["count"], p4["count"]) == (3.0, 2.5)
    assert (p0.zip, p1.zip, p4.zip) == ("01234", "75001", "x9")
    # empty cells are not stored
    assert p4.observed_at is None and p4.location is None and p4.observer is None
    assert p2.genus is None
    # a row without a label is unlabeled, whatever else it says
    assert p2.ground_truth is None
    assert p2.tags == ["unlabeled"]
    assert ds.count_sample_tags() == {"train": 3, "unlabeled": 1}
    assert ds.default_classes == ["Amanita muscaria", "Boletus edulis"]
    assert ingest(project, observations, fmt="csv").added == 0
    assert len(ds) == 4


def test_crowd_votes(project, observations):
    photos = observations.parent / "photos"
    votes = _write_csv(
        observations.parent / "votes.csv",
        ["filepath", "annotator", "label", "time"],
        [
            ["photos/p0.jpg", "ann", "Amanita muscaria", "2023-05-01T10:00:00"],
            ["photos/p0.jpg", "bob", "Amanita pantherina", ""],
            ["photos/p1.jpg", "ann", "Boletus edulis", "2023-05-02"],
            ["photos/p1.jpg", "cy", "Boletus edulis", "not a time"],
            ["photos/p9.jpg", "ann", "Boletus edulis", ""],
            ["photos/p2.jpg", "", "Boletus edulis", ""],
        ],
    )
    report = ingest(project, observations, fmt="csv", votes=votes)
    assert report.votes_added == 3
    reasons = {p.rsplit(":", 1)[1]: r for p, r in ((x.path, x.reason) for x in report.rejects)}
    assert reasons == {
        "5": "bad vote time 'not a time'",
        "6": f"vote for {photos / 'p9.jpg'}, which is not in the store",
        "7": "vote without an annotator or a label",
    }
    ds = store.dataset(project, create=False)

    def votes_of(name):
        sample = ds.match({"filepath": str(photos / name)}).first()
        return sorted((c.annotator, c.label) for c in sample.votes.classifications)

    assert votes_of("p0.jpg") == [("ann", "Amanita muscaria"), ("bob", "Amanita pantherina")]
    assert votes_of("p1.jpg") == [("ann", "Boletus edulis")]
    p0 = ds.match({"filepath": str(photos / "p0.jpg")}).first()
    ann = next(c for c in p0.votes.classifications if c.annotator == "ann")
    assert ann.time == dt.datetime(2023, 5, 1, 10, 0)
    assert ds.match({"filepath": str(photos / "p2.jpg")}).first().votes is None
    assert "Amanita pantherina" in ds.default_classes  # a voted class joins the class list
    # the ground truth is not touched by votes
    assert p0.ground_truth.label == "Amanita muscaria"
    # re-running adds no vote twice; a changed vote replaces the annotator's earlier one
    again = ingest(project, observations, fmt="csv", votes=votes)
    assert (again.added, again.votes_added) == (0, 0)
    assert votes_of("p0.jpg") == [("ann", "Amanita muscaria"), ("bob", "Amanita pantherina")]
    changed = _write_csv(observations.parent / "votes2.csv", ["filepath", "annotator", "label"],
                         [["photos/p0.jpg", "bob", "Amanita muscaria"]])
    assert ingest(project, observations, fmt="csv", votes=changed).votes_added == 0
    assert votes_of("p0.jpg") == [("ann", "Amanita muscaria"), ("bob", "Amanita muscaria")]


# ---- bad inputs ------------------------------------------------------------------------------
@pytest.fixture
def messy(tmp_path) -> Path:
    """A manifest where most kinds of bad row sit among four good ones."""
    src = tmp_path / "messy"
    for i in range(5):
        make_image(src / f"good{i}.jpg", (30 * i, 100, 100), seed=40 + i)
    _corrupt_jpeg(src / "corrupt.jpg")
    _truncated_jpeg(src / "truncated.jpg")
    make_image(tmp_path / "outside.jpg", (1, 2, 3))  # a real image, beside the source: ingested
    header = ["filepath", "label", "observed_on", "latitude", "longitude"]
    rows = [
        ["good0.jpg", "a", "2020-05-01", "10", "20"],
        ["good1.jpg", "a", "", "", ""],
        ["good2.jpg", "b", "", "", ""],
        ["good3.jpg", "b", "", "", ""],
        ["corrupt.jpg", "a", "", "", ""],
        ["truncated.jpg", "a", "", "", ""],
        ["missing.jpg", "a", "", "", ""],
        ["../outside.jpg", "a", "", "", ""],
        ["good4.jpg", "b", "2021-02-30", "", ""],
        ["good4.jpg", "b", "", "95", "20"],
        ["", "b", "", "", ""],
        ["good1.jpg", "a", "", "", ""],
        ["good1.jpg", "a", "", "", ""],
        ["missing.jpg", "a", "", "", ""],
    ]
    return _write_csv(src / "manifest.csv", header, rows)


def _expected_rejects(messy: Path) -> dict[str, str]:
    src = messy.parent
    return {
        str(src / "corrupt.jpg"): "not an image (cannot identify the format)",
        str(src / "truncated.jpg"): "corrupt or truncated image",
        str(src / "missing.jpg"): "file does not exist",
        f"{messy}:10": "bad date '2021-02-30' in column 'observed_on'",
        f"{messy}:11": "bad latitude/longitude '95', '20'",
        f"{messy}:12": "empty file path",
    }


def _expected_notices(messy: Path) -> dict[str, str]:
    # identical rows of one file are taken once: a notice, not a reject
    return {str(messy.parent / "good1.jpg"): "listed 3 times in the source with the same values; taken once"}


def _assert_rejects_match(got: dict[str, str], expected: dict[str, str]) -> None:
    assert set(got) == set(expected)
    for path, reason in expected.items():
        assert got[path].startswith(reason), (path, got[path])


def test_bad_rows_are_rejected_with_reasons_and_good_rows_ingested(project, messy):
    # strict: any reject is an error, and nothing is ingested
    with pytest.raises(IngestError, match=r"6 reject\(s\) with --strict, nothing ingested") as info:
        ingest(project, messy, fmt="csv", strict=True)
    assert "\n" not in str(info.value)
    import fiftyone as fo

    from fieldguide.platform.store import configure_fiftyone

    configure_fiftyone(project)  # look in this project's database, not the last one opened
    assert not fo.dataset_exists(project.dataset_name)
    wh = store.warehouse(project)
    failed = wh.query("SELECT * FROM runs").iloc[0]
    assert failed["status"] == "failed"
    assert "nothing ingested" in failed["message"]
    strict_report = project.runs_dir / failed["run_id"] / "rejects.csv"
    _assert_rejects_match(_read_rejects_csv(strict_report), _expected_rejects(messy))
    assert _read_rejects_csv(strict_report, "notice") == _expected_notices(messy)

    # not strict: the good rows go in, each bad one is in the report with its reason
    report = ingest(project, messy, fmt="csv")
    assert (report.added, report.existing) == (5, 0)
    got = {r.path: r.reason for r in report.rejects}
    assert len(got) == len(report.rejects)
    _assert_rejects_match(got, _expected_rejects(messy))
    assert "truncated" in got[str(messy.parent / "truncated.jpg")]
    assert Path(report.rejects_path) == project.runs_dir / report.run_id / "rejects.csv"
    assert {n.path: n.reason for n in report.notices} == _expected_notices(messy)
    assert (report.as_dict()["rejected"], report.as_dict()["noticed"]) == (6, 1)
    assert _read_rejects_csv(report.rejects_path) == got
    assert _read_rejects_csv(report.rejects_path, "notice") == _expected_notices(messy)
    table = wh.query("SELECT path, reason, kind FROM rejects WHERE run_id = ?", [report.run_id])
    assert dict(zip(table["path"], table["reason"])) == got | _expected_notices(messy)
    assert table["kind"].value_counts().to_dict() == {"reject": 6, "notice": 1}
    ds = store.dataset(project, create=False)
    assert sorted(Path(p).name for p in ds.values("filepath")) == [f"good{i}.jpg" for i in range(4)] + ["outside.jpg"]
    assert str(messy.parent.parent / "outside.jpg") in ds.values("filepath")  # "../outside.jpg", resolved
    assert project_status(project)["rejects"] == 6
    # re-running adds nothing and reports the same rejects (good1 is still listed three times)
    again = ingest(project, messy, fmt="csv")
    assert (again.added, again.existing, len(again.rejects), len(again.notices)) == (0, 5, 6, 1)
    assert len(ds) == 5


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "the CSV is empty"),
        ("filepath,label\n", "the CSV has a header but no rows"),
        ('filepath,label\n"a.jpg,x\nb.jpg,y\n', "malformed CSV (Error tokenizing data. C error: EOF inside string"),
        ("filepath,label\na.jpg,x\nb.jpg,y,extra\n", "malformed CSV (Error tokenizing data. C error: Expected 2 fields in line 3, saw 3)"),
        ("filepath,label\na.jpg,x,extra\n", "malformed CSV (a row has more fields than the header)"),
        ("filepath,species\na.jpg,x\n", "no column 'label' (columns: filepath, species; set --label-column)"),
        ("path,label\na.jpg,x\n", "no column 'filepath' (columns: path, label; set --filepath-column)"),
    ],
)
def test_unreadable_manifests_fail_the_run_with_one_line(project, tmp_path, content, expected):
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(IngestError) as info:
        ingest(project, path, fmt="csv")
    message = str(info.value)
    assert message == f"{path}: {expected}" or message.startswith(f"{path}: {expected}")
    assert "\n" not in message
    runs = store.warehouse(project).query("SELECT status, message FROM runs")
    assert runs["status"].tolist() == ["failed"]
    assert runs["message"].iloc[0] == f"IngestError: {message}"


def test_csv_manifest_file_that_does_not_exist(project, tmp_path):
    with pytest.raises(IngestError, match="nope.csv does not exist"):
        ingest(project, tmp_path / "nope.csv", fmt="csv")


# ---- isolation -------------------------------------------------------------------------------
_HOLD_OTHER_PROJECT = textwrap.dedent(
    """
    import sys
    from fieldguide.config import init_project
    from fieldguide.platform import store
    ds = store.dataset(init_project(sys.argv[1], "other"))
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.slow
def test_ingest_writes_to_the_projects_own_database_while_another_project_is_open(tmp_path, image_folder):
    """Another fieldguide process (an App, a dashboard) holds a different project's database."""
    other_dir = tmp_path / "other"
    env = dict(os.environ, FIFTYONE_SHOW_PROGRESS_BARS="false")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_OTHER_PROJECT, str(other_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        project = init_project(tmp_path / "mine", "mine")
        ingest(project, image_folder / "test", fmt="folder")
        import fiftyone.core.odm.database as fod

        mongod_args = fod._db_service.child.cmdline() if hasattr(fod._db_service.child, "cmdline") \
            else fod._db_service.child.args
        dbpath = mongod_args[mongod_args.index("--dbpath") + 1]
        assert dbpath == str(project.database_dir)
        assert (project.database_dir / "WiredTiger").exists()
        assert len(store.dataset(project, create=False)) == 6
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
