"""``fieldguide export`` on real projects: round trips through ingest and FiftyOne, Darwin Core,
the filters, and bad input that writes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.config import init_project
from fieldguide.errors import ExportError
from fieldguide.platform import store
from fieldguide.platform.exports import FORMATS, export
from fieldguide.platform.exports.output import MARKER
from fieldguide.platform.ingest import ingest

DWC = "http://rs.tdwg.org/dwc/terms/"


def _sha1(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _labels_by_hash(project) -> dict[str, tuple[str | None, str | None]]:
    """file content hash -> (label, split) of every sample in ``project``'s store."""
    df = store.samples_table(store.dataset(project, create=False))
    return {_sha1(p): (label, split) for p, label, split in zip(df["filepath"], df["label"], df["split"])}


def _ids_by_name(ds) -> dict[str, str]:
    ids, paths = ds.values(["id", "filepath"])
    return {Path(p).name: sid for sid, p in zip(ids, paths)}


@pytest.fixture
def curated(ingested):
    """``ingested`` where the curator ann relabeled two samples (one train, one test)."""
    ds = store.dataset(ingested, create=False)
    ids = _ids_by_name(ds)
    changes = {ids["red_bird_train_0.jpg"]: "blue_bird", ids["green_bird_test_1.jpg"]: "red_bird"}
    assert store.set_labels(ingested, ds, changes, source="curator", actor="ann") == 2
    return ingested


@pytest.fixture
def second_project(tmp_path):
    """An empty project to ingest an export into (the first project's mongod is stopped by then)."""
    return init_project(tmp_path / "proj2", "roundtrip")


def _expected(project) -> dict[str, tuple[str | None, str | None]]:
    expected = _labels_by_hash(project)
    assert expected[_sha1_of(project, "red_bird_train_0.jpg")] == ("blue_bird", "train")
    assert expected[_sha1_of(project, "green_bird_test_1.jpg")] == ("red_bird", "test")
    return expected


def _sha1_of(project, name: str) -> str:
    ds = store.dataset(project, create=False)
    return _sha1(next(p for p in ds.values("filepath") if Path(p).name == name))


# ---- round trips ---------------------------------------------------------------------------
def test_imagenet_round_trip_keeps_curated_labels_and_splits(curated, second_project, tmp_path):
    expected = _expected(curated)
    out = tmp_path / "imagenet"
    report = export(curated, out, fmt="imagenet", copy=True)
    assert (report.exported, report.records, report.media, report.left_out) == (24, 24, "copy", {})
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "test", "train"]
    assert (out / "train" / "blue_bird" / "red_bird_train_0.jpg").is_file()
    assert (out / "test" / "red_bird" / "green_bird_test_1.jpg").is_file()
    assert not any(p.is_symlink() for p in out.rglob("*"))

    added = ingest(second_project, out, fmt="folder")
    assert (added.added, len(added.rejects)) == (24, 0)
    assert _labels_by_hash(second_project) == expected


def test_imagenet_links_images_by_default(curated, second_project, image_folder, tmp_path):
    expected = _expected(curated)
    out = tmp_path / "links"
    report = export(curated, out, fmt="imagenet")
    assert report.media == "symlink"
    files = [p for p in out.rglob("*.jpg")]
    assert len(files) == 24 and all(p.is_symlink() for p in files)
    assert {p.resolve().parent.parent.parent for p in files} == {image_folder.resolve()}
    assert {p.name: p.parent.name for p in files}["red_bird_train_0.jpg"] == "blue_bird"

    # ingest resolves links to the originals, wherever they lie
    added = ingest(second_project, out, fmt="folder")
    assert (added.added, len(added.rejects)) == (24, 0)
    assert _labels_by_hash(second_project) == expected


def test_csv_round_trip_with_last_change(curated, second_project, image_folder, tmp_path):
    expected = _expected(curated)
    ds = store.dataset(curated, create=False)
    history = {sid: store.label_history(ds, sid) for sid in ds.values("id")}
    out = tmp_path / "csv"
    report = export(curated, out, fmt="csv")
    assert (report.exported, report.records, report.media) == (24, 24, None)

    rows = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert list(rows.columns) == ["filepath", "label", "split", "origin", "sample_id", "observation_id",
                                  "changed_by", "changed_at", "change_source", "previous_label"]
    changed = rows[rows["changed_by"] != ""].set_index("filepath")
    assert len(changed) == 2
    row = changed.loc[next(p for p in changed.index if p.endswith("red_bird_train_0.jpg"))]
    entry = history[row["sample_id"]][-1]
    assert (row["label"], row["previous_label"], row["change_source"], row["origin"]) == \
        ("blue_bird", "red_bird", "curator", "real")
    assert row["changed_at"] == entry["time"].strftime("%Y-%m-%dT%H:%M:%SZ")
    untouched = rows[rows["changed_by"] == ""]
    assert (untouched[["changed_at", "change_source", "previous_label"]] == "").all().all()

    # the store's paths are absolute: csv ingest takes them as they are
    added = ingest(second_project, out / "labels.csv", fmt="csv")
    assert (added.added, len(added.rejects)) == (24, 0)
    assert _labels_by_hash(second_project) == expected


def test_fiftyone_export_loads_with_the_same_labels(curated, tmp_path):
    import fiftyone as fo

    ds = store.dataset(curated, create=False)
    before = dict(zip(*ds.values(["filepath", "ground_truth.label"])))
    out = tmp_path / "fo"
    assert export(curated, out, fmt="fiftyone").exported == 24
    loaded = fo.Dataset.from_dir(str(out), dataset_type=fo.types.FiftyOneImageClassificationDataset)
    try:
        after = {str(Path(p).resolve()): label for p, label in zip(*loaded.values(["filepath", "ground_truth.label"]))}
    finally:
        loaded.delete()
    assert after == {str(Path(p).resolve()): label for p, label in before.items()}


def test_coco_classification_json_leaves_out_unlabeled(curated, tmp_path):
    ds = store.dataset(curated, create=False)
    ids = _ids_by_name(ds)
    store.set_labels(curated, ds, {ids["blue_bird_test_0.jpg"]: None}, source="curator", actor="ann")
    out = tmp_path / "coco"
    report = export(curated, out, fmt="coco", copy=True)
    assert (report.exported, report.left_out) == (23, {"unlabeled": 1})

    doc = json.loads((out / "labels.json").read_text())
    categories = {c["id"]: c["name"] for c in doc["categories"]}
    assert sorted(categories.values()) == ["blue_bird", "green_bird", "red_bird"]
    label_of = {a["image_id"]: categories[a["category_id"]] for a in doc["annotations"]}
    exported = {img["file_name"]: label_of[img["id"]] for img in doc["images"]}
    assert len(exported) == 23 and "blue_bird_test_0.jpg" not in exported
    assert exported["red_bird_train_0.jpg"] == "blue_bird"
    assert all((out / "data" / name).is_file() for name in exported)
    assert {(img["width"], img["height"]) for img in doc["images"]} == {(32, 32)}


# ---- Darwin Core ---------------------------------------------------------------------------
def test_dwca_one_identification_per_label_change(curated, tmp_path):
    ds = store.dataset(curated, create=False)
    ids = _ids_by_name(ds)
    red0, green1 = ids["red_bird_train_0.jpg"], ids["green_bird_test_1.jpg"]
    store.set_labels(curated, ds, {red0: "green_bird"}, source="labelstudio", actor="bob")  # a second change
    store.set_labels(curated, ds, {green1: "red_bird"}, source="curator", actor="cy")  # a confirmation: no record
    store.set_labels(curated, ds, {ids["blue_bird_test_0.jpg"]: None}, source="curator", actor="ann")  # removal
    store.set_field(ds, "observation_id", {green1: "obs-42"})
    history = {sid: store.label_history(ds, sid) for sid in (red0, green1)}

    out = tmp_path / "dwca"
    report = export(curated, out, fmt="dwca")
    assert report.records == 3

    rows = pd.read_csv(out / "identification.txt", sep="\t", dtype=str, keep_default_na=False)
    got = {(r.occurrenceID, r.scientificName, r.identifiedBy, r.identificationRemarks, r.previousIdentifications,
            r.dateIdentified) for r in rows.itertuples()}
    when = {sid: [e["time"].strftime("%Y-%m-%dT%H:%M:%SZ") for e in h] for sid, h in history.items()}
    assert got == {
        (red0, "blue_bird", "ann", "curator", "red_bird", when[red0][0]),
        (red0, "green_bird", "bob", "labelstudio", "blue_bird", when[red0][1]),
        ("obs-42", "red_bird", "ann", "curator", "green_bird", when[green1][0]),
    }
    assert set(rows["identificationID"]) == {f"{red0}-0", f"{red0}-1", f"{green1}-0"}

    from dwca.read import DwCAReader  # python-dwca-reader (GBIF's) reads the archive as written

    with DwCAReader(str(out)) as archive:
        assert archive.descriptor.core.type == DWC + "Identification"
        records = [(r.id, r.data[DWC + "identifiedBy"], r.data[DWC + "dateIdentified"]) for r in archive]
    assert sorted(records) == sorted(zip(rows["identificationID"], rows["identifiedBy"], rows["dateIdentified"]))


# ---- what is exported ----------------------------------------------------------------------
def test_split_and_saved_view_filters(curated, tmp_path):
    ds = store.dataset(curated, create=False)
    test = export(curated, tmp_path / "test", fmt="csv", split="test")
    rows = pd.read_csv(tmp_path / "test" / "labels.csv", dtype=str)
    assert test.exported == 6 and set(rows["split"]) == {"test"}

    ids = _ids_by_name(ds)
    chosen = [ids["red_bird_train_0.jpg"], ids["green_bird_test_1.jpg"], ids["blue_bird_train_3.jpg"]]
    ds.save_view("to_review", ds.select(chosen))
    review = export(curated, tmp_path / "review", fmt="csv", view="to_review")
    assert review.exported == 3
    assert set(pd.read_csv(tmp_path / "review" / "labels.csv", dtype=str)["sample_id"]) == set(chosen)
    both = export(curated, tmp_path / "both", fmt="imagenet", view="to_review", split="train")
    assert both.exported == 2
    assert sorted(p.name for p in (tmp_path / "both").rglob("*.jpg")) == ["blue_bird_train_3.jpg",
                                                                          "red_bird_train_0.jpg"]


def test_pseudo_labels_and_synthetic_images_only_when_asked(curated, tmp_path):
    ds = store.dataset(curated, create=False)
    ids = _ids_by_name(ds)
    pseudo, confirmed = ids["green_bird_train_2.jpg"], ids["green_bird_train_3.jpg"]
    synthetic = ids["blue_bird_train_5.jpg"]
    store.set_labels(curated, ds, {pseudo: "red_bird", confirmed: "red_bird"}, source="pseudo", actor="ann")
    store.set_labels(curated, ds, {confirmed: "red_bird"}, source="labelstudio", actor="bob")  # a person agreed
    store.set_field(ds, "origin", {synthetic: "synthetic"})

    default = export(curated, tmp_path / "default", fmt="imagenet")
    assert (default.exported, default.left_out) == (22, {"synthetic": 1, "pseudo": 1})
    names = {p.name for p in (tmp_path / "default").rglob("*.jpg")}
    assert "green_bird_train_2.jpg" not in names and "blue_bird_train_5.jpg" not in names
    assert "green_bird_train_3.jpg" in names

    every = export(curated, tmp_path / "every", fmt="csv", include_pseudo=True, include_synthetic=True)
    assert (every.exported, every.left_out) == (24, {})
    rows = pd.read_csv(tmp_path / "every" / "labels.csv", dtype=str).set_index("sample_id")
    assert rows.loc[pseudo, "change_source"] == "pseudo" and rows.loc[synthetic, "origin"] == "synthetic"

    dwca_default = export(curated, tmp_path / "dwca", fmt="dwca")
    dwca_all = export(curated, tmp_path / "dwca-all", fmt="dwca", include_pseudo=True)
    assert (dwca_default.records, dwca_all.records) == (2, 4)  # the curator's two, then + two pseudo


# ---- the folder and bad input --------------------------------------------------------------
def test_non_empty_folder_is_refused_unless_overwrite_replaces_an_export(curated, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="is not empty"):
            export(curated, out, fmt="csv", overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    again = tmp_path / "again"
    export(curated, again, fmt="imagenet")
    with pytest.raises(ExportError, match="use --overwrite"):
        export(curated, again, fmt="csv")
    assert export(curated, again, fmt="csv", overwrite=True).exported == 24
    assert sorted(p.name for p in again.iterdir()) == [MARKER, "labels.csv"]
    assert json.loads((again / MARKER).read_text())["format"] == "csv"


def test_bad_input_is_one_error_and_writes_nothing(curated, tmp_path):
    out = tmp_path / "new" / "out"
    for kwargs, message in (
        ({"fmt": "zip"}, "unknown export format 'zip' (use one of csv, imagenet, fiftyone, coco, dwca)"),
        ({"fmt": "csv", "view": "nope"}, "no saved view 'nope' in this project"),
        ({"fmt": "csv", "split": "holdout"}, "unknown split 'holdout'"),
        ({"fmt": "dwca", "copy": True}, "--copy: the dwca export writes no images"),
    ):
        with pytest.raises(ExportError) as err:
            export(curated, out, **kwargs)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
        assert not (tmp_path / "new").exists()


def test_folder_that_cannot_be_written(curated, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export(curated, tmp_path / "file" / "out", fmt="csv")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    caps = "-dac_override,-dac_read_search"  # root writes anywhere: run this export without that
    as_user = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*as_user, sys.executable, "-m", "fieldguide.cli", "--project", str(curated.root),
                           "export", str(locked / "out"), "--format", "csv"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "read-only" in done.stderr
    assert list(locked.iterdir()) == []


def test_formats_are_a_registry():
    assert list(FORMATS) == ["csv", "imagenet", "fiftyone", "coco", "dwca"]
    assert [f.name for f in FORMATS.values() if f.media] == ["imagenet", "fiftyone", "coco"]


# ---- the CLI -------------------------------------------------------------------------------
def test_cli_export_and_its_errors(curated, tmp_path):
    runner = CliRunner()
    base = ["--project", str(curated.root), "export"]
    ds = store.dataset(curated, create=False)
    store.set_field(ds, "origin", {_ids_by_name(ds)["blue_bird_train_5.jpg"]: "synthetic"})

    result = runner.invoke(app, [*base, str(tmp_path / "tree"), "--format", "imagenet", "--split", "train"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"exported 17 samples (imagenet, images symlinked) to {tmp_path / 'tree'}",
        "left out: 1 synthetic (--include-synthetic)",
    ]
    result = runner.invoke(app, [*base, str(tmp_path / "dwca"), "-f", "dwca", "--json"])
    assert result.exit_code == 0, result.output
    assert {k: json.loads(result.stdout)[k] for k in ("exported", "records")} == {"exported": 23, "records": 2}

    for args, error in (
        ([str(tmp_path / "tree"), "-f", "csv"], f"error: {tmp_path / 'tree'} is not empty"),
        ([str(tmp_path / "x"), "-f", "csv", "--view", "to_review"], "error: no saved view 'to_review'"),
    ):
        result = runner.invoke(app, [*base, *args])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(error), result.output
    assert not (tmp_path / "x").exists()
