"""The store on a real embedded MongoDB in a temporary project."""

from __future__ import annotations

import os

import pytest

from fieldguide.config import init_project
from fieldguide.errors import FieldguideError
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest


def test_database_lives_under_the_project(ingested):
    import fiftyone as fo

    assert fo.config.database_dir == str(ingested.database_dir)
    assert any(ingested.database_dir.iterdir())
    ds = store.dataset(ingested, create=False)
    assert len(ds) == 24
    assert ds.persistent


def test_two_projects_in_one_process_do_not_share_a_database(tmp_path, image_folder):
    a = init_project(tmp_path / "a", "same")
    b = init_project(tmp_path / "b", "same")
    ingest(a, image_folder, fmt="folder")
    assert len(store.dataset(a, create=False)) == 24
    with pytest.raises(FieldguideError, match="no dataset yet"):
        store.dataset(b, create=False)
    ingest(b, image_folder / "test", fmt="folder")
    assert len(store.dataset(b, create=False)) == 6
    assert len(store.dataset(a, create=False)) == 24


def test_set_labels_appends_history_and_mirrors_to_warehouse(ingested):
    ds = store.dataset(ingested, create=False)
    ids = ds.match_tags("train").values("id")[:3]
    old = ds.select(ids, ordered=True).values("ground_truth.label")
    new = {ids[0]: "blue_bird", ids[1]: old[1], ids[2]: None}
    changed = store.set_labels(ingested, ds, new, source="curator", actor="ann", run_id="r1")
    assert changed == 2 - int(old[0] == "blue_bird")
    ds.reload()
    s0 = ds[ids[0]]
    assert s0.ground_truth.label == "blue_bird"
    assert [(e.old, e.new, e.source, e.actor, e.run_id) for e in s0.label_history] == [
        (old[0], "blue_bird", "curator", "ann", "r1")
    ]
    assert ds[ids[1]].label_history[0].new == old[1]  # a confirmation is recorded too
    assert ds[ids[2]].ground_truth is None
    events = store.warehouse(ingested).query("SELECT * FROM label_events ORDER BY sample_id")
    assert len(events) == 3
    assert set(events["source"]) == {"curator"}
    store.set_labels(ingested, ds, {ids[0]: "red_bird"}, source="labelstudio", actor="b")
    ds.reload()
    assert [e.new for e in ds[ids[0]].label_history] == ["blue_bird", "red_bird"]
    assert len(store.warehouse(ingested).query("SELECT * FROM label_events")) == 4


def test_set_labels_refuses_unknown_class_and_unknown_sample(ingested):
    ds = store.dataset(ingested, create=False)
    sid = ds.first().id
    before = ds[sid].ground_truth.label
    with pytest.raises(FieldguideError, match="unknown class"):
        store.set_labels(ingested, ds, {sid: "dodo"}, source="curator", actor="a")
    with pytest.raises(FieldguideError, match="not in the store"):
        store.set_labels(ingested, ds, {"0" * 24: "red_bird"}, source="curator", actor="a")
    with pytest.raises(FieldguideError, match="label source"):
        store.set_labels(ingested, ds, {sid: "red_bird"}, source="oracle", actor="a")
    ds.reload()
    assert ds[sid].ground_truth.label == before
    assert not ds[sid].label_history


def test_release_database_stops_mongod_and_the_next_call_reconnects(ingested):
    from fieldguide.platform import store

    n = len(store.dataset(ingested))
    store.release_database()
    import fiftyone.core.odm.database as fod

    assert fod._client is None and getattr(fod, "_db_service", None) is None
    assert "FIFTYONE_PRIVATE_DATABASE_PORT" not in os.environ  # no stale port for the next connection
    assert "port" not in fod._connection_kwargs
    assert len(store.dataset(ingested)) == n  # a fresh mongod on the same project folder


def test_a_projects_database_does_not_preallocate_journal_files(ingested):
    # WiredTiger's default preallocates 300 MB of journal per mongod; a CI run with ~100
    # temporary projects filled the disk. The project's mongod keeps its journal small.
    journal = ingested.database_dir / "journal"
    size = sum(f.stat().st_size for f in journal.iterdir() if f.is_file())
    assert journal.is_dir() and size < 64 * 2**20, f"journal is {size / 2**20:.0f} MB"


def test_the_database_patches_are_tied_to_the_pinned_fiftyone():
    """The patches of FiftyOne's internals name the version they were written for: the pin of
    pyproject.toml, the installed one; any other version is refused in one line."""
    import re
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from fieldguide.errors import StoreError
    from fieldguide.platform import database

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pins = [m.group(1) for d in pyproject["project"]["dependencies"] if (m := re.fullmatch(r"fiftyone==(\S+)", d))]
    assert pins == [database.FIFTYONE_VERSION] == [version("fiftyone")]
    database.check_fiftyone_version()  # the installed one passes
    with pytest.raises(StoreError, match=r"fiftyone 1\.99\.0 is installed.*written for fiftyone "
                                         + re.escape(database.FIFTYONE_VERSION)):
        database.check_fiftyone_version("1.99.0")


def test_written_fields_take_their_declared_type(ingested):
    """A field of the schema gets its declared type even when its first write is all None;
    Classification fields are written from dicts; a free field takes its type from its values."""
    import fiftyone as fo

    from fieldguide.platform import samples
    from fieldguide.platform.fields import SCHEMA, declare_fields, write_values

    ds = store.dataset(ingested, create=False)
    first, second = samples.arrays(ds, tags="train", limit=2)["id"]
    write_values(ds, {"noise_score": {first: None},
                      "synthetic_label": {second: {"label": "red_bird", "origin": "synthetic"}},
                      "observation_id": {first: "obs-1"}})
    schema = ds.get_field_schema()
    assert isinstance(schema["noise_score"], fo.FloatField)
    assert schema["synthetic_label"].document_type is fo.Classification
    assert isinstance(schema["observation_id"], fo.StringField) and "observation_id" not in SCHEMA
    table = samples.arrays(ds, ["noise_score", "synthetic_label.label", "observation_id"], ids=[second, first])
    assert table.values.tolist() == [[second, None, "red_bird", None], [first, None, None, "obs-1"]]
    with pytest.raises(ValueError, match="not in the sample schema"):
        declare_fields(ds, ["noise_scor"])


def test_plain_values_of_many_fields_in_one_update_per_sample(ingested):
    """write_values' bulk path (numbers, booleans, strings of declared fields): the values land
    typed as the schema says, None clears, a sample already loaded sees them, and the sample's
    last_modified_at moves; a Classification field in the same call still goes through set_values."""
    import time

    from fieldguide.platform import samples
    from fieldguide.platform.fields import declare_fields, write_values

    ds = store.dataset(ingested, create=False)
    a, b = samples.arrays(ds, tags="train", limit=2)["id"]
    declare_fields(ds, ["noise_score", "label_issue", "error_rank"])
    loaded = ds[a]
    before = loaded.last_modified_at
    write_values(ds, {"noise_score": {a: 1, b: 0.25}, "label_issue": {a: True, b: False},
                      "error_rank": {a: "genus", b: None}})
    time.sleep(0.01)
    write_values(ds, {"noise_score": {b: None},
                      "prediction": {a: {"label": "red_bird", "confidence": 0.9}}})
    table = samples.arrays(ds, ["noise_score", "label_issue", "error_rank", "prediction.label"], ids=[a, b])
    assert table.values.tolist() == [[a, 1.0, True, "genus", "red_bird"], [b, None, False, None, None]]
    raw = ds._dataset._sample_collection.find_one({"_id": loaded._id}, {"noise_score": 1})
    assert isinstance(raw["noise_score"], float)  # an int given for a float field is stored as a float
    assert loaded.noise_score == 1.0 and loaded.error_rank == "genus"  # the loaded sample was reloaded
    assert loaded.last_modified_at > before
