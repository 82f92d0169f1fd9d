"""The relabel round trip with a real Label Studio server on a free port.

One server per module, started on a copy of the session's migrated data dir (conftest's
``labelstudio_data``: the migrations of a first start run once per session): the ``main``
project owns it (the project's local server); the ``remote`` project reaches the same server
as "your own server" (url and token from the environment).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import CLASS_COLORS, copy_labelstudio_data, free_port, make_image, running_listener
from fieldguide.cli import app
from fieldguide.config import dump_config, init_project, open_project
from fieldguide.errors import ServiceError
from fieldguide.platform import labelstudio as ls
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest

TOKEN_ENV = "FIELDGUIDE_TEST_LS_TOKEN"
TIMINGS: dict[str, float] = {}


# ---- pure parts (no server) -----------------------------------------------------------------
def test_decide_rules():
    assert ls.decide(["a"]) == "a"
    assert ls.decide(["a", "a", "b"]) == "a"
    assert ls.decide(["a", "b"]) is None  # no majority
    assert ls.decide(["a", "b", "c"]) is None
    assert ls.decide(["a", "a", "b", "c"], "plurality") == "a"
    assert ls.decide(["a", "a", "b", "b"], "plurality") is None
    assert ls.decide(["a", "a", "b"], "unanimous") is None
    assert ls.decide(["a", "a"], "unanimous") == "a"
    assert ls.decide([ls.UNSURE, ls.UNSURE, "a"]) == ls.UNSURE
    assert ls.decide([]) is None
    with pytest.raises(ValueError, match="majority rule"):
        ls.decide(["a"], "loudest")


def test_label_config_has_every_class_and_candidates():
    import xml.etree.ElementTree as ET

    root = ET.fromstring(ls.label_config(["red_bird", 'odd "name" & <co>']))
    choices = root.find(".//Choices")  # the task's candidates (UNSURE among them)
    assert choices.get("choice") == "single" and choices.get("toName") == "image"
    assert choices.get("value") == "$candidates"
    assert sorted(c.get("value") for c in root.find(".//Taxonomy")) == ['odd "name" & <co>', "red_bird"]
    assert root.find(".//Image").get("value") == "$image"


# ---- fixtures -------------------------------------------------------------------------------


@contextlib.contextmanager
def _answering(status: int):
    """A tiny HTTP server on 127.0.0.1 answering every request with ``status``; yields (url, hits)."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            body = json.dumps({"detail": f"status {status}"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client(url: str, retries: int) -> ls.Client:
    return ls.Client(ls.Connection(url=url, token="t", document_root="/", local=False, timeout_s=5,
                                   retries=retries))


def test_client_retries_5xx_through_the_sdk_within_its_budget():
    with _answering(503) as (url, hits):
        with pytest.raises(ServiceError, match=r"answered 503 \(trying to check the API token, 2 tries\)"):
            _client(url, retries=1).check()
    assert len(hits) == 2  # one try and the SDK's one retry


def test_client_does_not_retry_4xx():
    with _answering(404) as (url, hits):
        with pytest.raises(ls.NotFound):
            _client(url, retries=3).check()
    assert len(hits) == 1
    with _answering(400) as (url, hits):
        with pytest.raises(ServiceError, match=r"could not check the API token \(400: \"status 400\"\)"):
            _client(url, retries=3).check()
    assert len(hits) == 1


def _make_project(area: Path, name: str):
    images = area / "images" / name
    seed = 100
    for split, n in (("train", 6), ("test", 2)):
        for cls, color in CLASS_COLORS.items():
            for i in range(n):
                seed += 1
                make_image(images / split / cls / f"{cls}_{split}_{i}.jpg", color, seed=seed)
    project = init_project(area / name, name)
    ingest(project, images, fmt="folder")
    return project


def _flag(project, ids: list[str], view_name: str = "to_review") -> None:
    """What the flag step writes: prediction, noise_score, label_issue and a saved view."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    ds = store.dataset(project, create=False)
    all_ids, labels = ds.values(["id", "ground_truth.label"])
    classes = sorted(CLASS_COLORS)
    preds, noise, issue = {}, {}, {}
    for i, (sid, lab) in enumerate(zip(all_ids, labels)):
        other = classes[(classes.index(lab) + 1) % len(classes)]
        preds[sid] = fo.Classification(label=other if i % 2 == 0 else lab, confidence=0.5 + i / 100,
                                       logits=[0.1, 0.2, 0.3])
    flagged = set(ids)
    for rank, sid in enumerate(ids):
        noise[sid] = round(0.99 - rank * 0.01, 3)
    for sid in all_ids:
        noise.setdefault(sid, 0.05)
        issue[sid] = sid in flagged
    ds.set_values("prediction", preds, key_field="id")
    ds.set_values("noise_score", noise, key_field="id")
    ds.set_values("label_issue", issue, key_field="id")
    view = ds.match(F("label_issue") == True).sort_by("noise_score", reverse=True)  # noqa: E712
    ds.save_view(view_name, view, overwrite=True)


@pytest.fixture(scope="module")
def area(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("relabel")


@pytest.fixture(scope="module")
def server(area, labelstudio_data):
    """The ``main`` project and its own Label Studio on a free port (stopped at the end)."""
    project = _make_project(area, "main")
    copy_labelstudio_data(labelstudio_data, project)
    t0 = time.monotonic()
    info = ls.start(project, port=free_port(), timeout_s=600)
    TIMINGS["first_start_s"] = time.monotonic() - t0
    assert info.running and info.url.startswith("http://127.0.0.1:")
    yield project
    ls.stop(project)
    assert not ls.status(project).running


@pytest.fixture
def sdk(server):
    from label_studio_sdk import LabelStudio

    conn = ls.connection(server)
    return LabelStudio(base_url=conn.url, api_key=conn.token)


@pytest.fixture(scope="module")
def remote(area, server):
    """A second project that uses the same server as "your own server" (url + token env)."""
    project = _make_project(area, "remote")
    project.config.labelstudio.url = ls.connection(server).url
    project.config.labelstudio.token_env = TOKEN_ENV
    project.config.labelstudio.files_root = str(area / "images")  # the server's document root
    project.config_path.write_text(dump_config(project.config))
    return open_project(project.root)


@pytest.fixture
def token_env(server, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, ls.connection(server).token)


def _cli(project, *args):
    result = CliRunner().invoke(app, ["-p", str(project.root), *args])
    return result


def _cli_json(project, *args) -> dict:
    result = _cli(project, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def _ls_tasks(sdk, project) -> dict[str, object]:
    proj = [p for p in sdk.projects.list(title=ls.project_title(project)) if
            p.title == ls.project_title(project)][0]
    return {t.data["sample_id"]: t for t in sdk.tasks.list(project=proj.id, fields="all")}


def _state(project):
    """Everything the bridge may change: labels, history, votes, relabel_tasks."""
    ds = store.dataset(project, create=False)
    ds.reload()
    ids, labels, hist, votes = ds.values(["id", "ground_truth.label", "label_history", "votes"])
    wh = store.warehouse(project)
    tasks = wh.query("SELECT * FROM relabel_tasks ORDER BY sample_id").to_dict("records")
    return {
        "labels": dict(zip(ids, labels)),
        "history": {i: [(e.old, e.new, e.source, e.actor) for e in (h or [])] for i, h in zip(ids, hist)},
        "votes": {i: sorted((c.annotator, c.label) for c in v.classifications) if v else [] for i, v in zip(ids, votes)},
        "tasks": json.dumps(tasks, default=str),
    }


# ---- the round trip -------------------------------------------------------------------------
@pytest.mark.server
@pytest.mark.slow
def test_round_trip_push_annotate_pull(server, sdk):
    project = server
    ds = store.dataset(project, create=False)
    ids = ds.match_tags("train").values("id")[:12]
    _flag(project, ids)
    given = dict(zip(*ds.select(ids).values(["id", "ground_truth.label"])))
    scores = dict(zip(*ds.select(ids).values(["id", "noise_score"])))

    out = _cli_json(project, "relabel", "push", "--limit", "10")
    assert (out["pushed"], out["already_pushed"]) == (10, 0)
    tasks = _ls_tasks(sdk, project)
    pushed_ids = ids[:10]  # the view is sorted by noise score, as the flag step saves it
    assert set(tasks) == set(pushed_ids)

    # the labeling config: every class and "unsure"; tasks: image served in place, facts, prediction
    proj = sdk.projects.get(out["project_id"])
    for cls in CLASS_COLORS:
        assert f'value="{cls}"' in proj.label_config
    conn = ls.connection(project)
    for sid, task in tasks.items():
        data = task.data
        assert data["image"].startswith("/data/local-files/?d=")
        assert "base64" not in json.dumps(data) and "data:image" not in json.dumps(data)
        assert data["given_label"] == given[sid]
        assert float(data["noise_score"]) == pytest.approx(scores[sid], abs=1e-6)  # the store's score
        assert "given label" in data["info"] and "noise score" in data["info"]
        assert [c["value"] for c in data["candidates"]][-1] == ls.UNSURE
        assert data["predicted_label"] in [c["value"] for c in data["candidates"]]
        assert not task.predictions  # below labelstudio.preselect_confidence (0.8): nothing pre-selected
    # the image comes from the project's own file, byte for byte (acceptance 3)
    sid0 = pushed_ids[0]
    r = httpx.get(conn.url + tasks[sid0].data["image"], headers={"Authorization": f"Token {conn.token}"})
    assert r.status_code == 200
    assert r.content == Path(ds[sid0].filepath).read_bytes()
    assert not any(project.labelstudio_dir.rglob("*.jpg"))  # no copies

    # a curator answers: 4 changes, 4 confirmations, 1 unsure, 1 skip
    classes = sorted(CLASS_COLORS)
    expect = {}
    for k, sid in enumerate(pushed_ids):
        tid = tasks[sid].id
        if k < 4:
            new = classes[(classes.index(given[sid]) + 1) % 3]
            sdk.annotations.create(tid, result=_choice(new))
            expect[sid] = new
        elif k < 8:
            sdk.annotations.create(tid, result=_choice(given[sid]))
            expect[sid] = given[sid]
        elif k == 8:
            sdk.annotations.create(tid, result=_choice(ls.UNSURE))
            expect[sid] = given[sid]
        else:
            sdk.annotations.create(tid, result=[], was_cancelled=True)
            expect[sid] = given[sid]

    out = _cli_json(project, "relabel", "pull")
    assert (out["changed"], out["accepted"], out["unsure"], out["skipped"]) == (4, 4, 1, 1)
    assert out["applied"] == 10 and out["problems"] == []

    ds.reload()
    user = project.config.labelstudio.username
    for k, sid in enumerate(pushed_ids):
        sample = ds[sid]
        assert sample.ground_truth.label == expect[sid]
        hist = [(e.old, e.new, e.source, e.actor, e.run_id) for e in (sample.label_history or [])]
        if k < 8:
            assert hist == [(given[sid], expect[sid], "labelstudio", user, out["run_id"])]
            assert sample.label_history[0].time is not None
            assert [(c.annotator, c.label) for c in sample.votes.classifications] == [(user, expect[sid])]
        else:
            assert hist == []  # unsure and skipped leave the label alone
    wh = store.warehouse(project)
    rows = wh.query("SELECT sample_id, status, answer FROM relabel_tasks").set_index("sample_id")
    assert (rows.loc[pushed_ids[:9], "status"] == "answered").all()
    assert rows.loc[pushed_ids[9], "status"] == "skipped"
    assert json.loads(rows.loc[pushed_ids[0], "answer"])["outcome"] == "changed"
    events = wh.query("SELECT * FROM label_events WHERE source = 'labelstudio'")
    assert len(events) == 8
    snap = wh.query("SELECT sample_id, label FROM samples").set_index("sample_id")["label"]
    assert all(snap[sid] == expect[sid] for sid in pushed_ids)
    runs = wh.query("SELECT kind, status FROM runs WHERE kind LIKE 'relabel%'")
    assert sorted(runs["kind"]) == ["relabel_pull", "relabel_push"] and set(runs["status"]) == {"completed"}

    # a second push and pull change nothing
    before = _state(project)
    out = _cli_json(project, "relabel", "push", "--limit", "10")
    assert (out["pushed"], out["already_pushed"]) == (0, 10)
    assert len(_ls_tasks(sdk, project)) == 10
    out = _cli_json(project, "relabel", "pull")
    assert out["applied"] == 0 and out["unchanged"] == 10
    assert _state(project) == before

    # pushing the whole view adds only the two new samples
    out = _cli_json(project, "relabel", "push")
    assert (out["pushed"], out["already_pushed"]) == (2, 10)
    assert len(_ls_tasks(sdk, project)) == 12


@pytest.mark.server
@pytest.mark.slow
def test_webhook_listener_pulls_the_annotated_task(server, sdk):
    project = server
    ds = store.dataset(project, create=False)
    ids = ds.match_tags("test").values("id")[:2]
    _flag(project, ids, "hooked")
    assert ls.push(project, view="hooked").pushed == 2
    tasks = _ls_tasks(sdk, project)
    sid = ids[0]
    old = ds[sid].ground_truth.label
    new = sorted(set(CLASS_COLORS) - {old})[0]

    with running_listener(project) as (port, seen):
        # a request without the shared secret is refused
        assert httpx.post(f"http://127.0.0.1:{port}/", json={"action": "ANNOTATION_CREATED"}).status_code == 403
        sdk.annotations.create(tasks[sid].id, result=_choice(new))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen:
            time.sleep(0.2)
        assert seen, "no webhook arrived"
        task_ids, report = seen[0]
        assert task_ids == [tasks[sid].id] and report.changed == 1
    ds.reload()
    assert ds[sid].ground_truth.label == new
    assert [(e.old, e.new, e.source) for e in ds[sid].label_history] == [(old, new, "labelstudio")]
    assert ls.pull(project).applied == 0  # the webhook's pull is not applied again
    hooks = sdk.webhooks.list()
    assert not [h for h in hooks if str(port) in h.url]  # removed on the way out


@pytest.mark.server
@pytest.mark.slow
def test_server_stopped_push_and_pull_fail_in_one_line_then_restart(server):
    project = server
    before = _state(project)
    assert ls.stop(project) is True
    status = _cli(project, "labelstudio", "status")
    assert status.exit_code != 0 and "stopped" in status.output
    for verb in ("push", "pull"):
        result = _cli(project, "relabel", verb)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "not running" in lines[0] and "labelstudio start" in lines[0], lines
    assert _state(project) == before
    t0 = time.monotonic()
    info = ls.start(project, port=free_port(), timeout_s=600)
    TIMINGS["later_start_s"] = time.monotonic() - t0
    assert info.running
    out = _cli_json(project, "relabel", "pull")  # the same tasks, nothing applied twice
    assert out["applied"] == 0
    print(f"\nLabel Studio timings: {TIMINGS}")


# ---- your own server, several annotators, faults --------------------------------------------
@pytest.mark.server
@pytest.mark.slow
def test_several_annotators_vote_and_the_majority_decides(remote, sdk, token_env):
    project = remote
    ds = store.dataset(project, create=False)
    ids = ds.match_tags("train").values("id")[:3]
    _flag(project, ids, "votes3")
    given = dict(zip(*ds.select(ids).values(["id", "ground_truth.label"])))
    out = _cli_json(project, "relabel", "push", "--view", "votes3")
    assert out["pushed"] == 3
    tasks = _ls_tasks(sdk, project)
    users = {u.email: u.id for u in sdk.users.list()}
    for email in ("ann1@fieldguide.local", "ann2@fieldguide.local"):
        if email not in users:
            users[email] = sdk.users.create(email=email, username=email.split("@")[0]).id
    me = sdk.users.whoami()
    classes = sorted(CLASS_COLORS)
    other = {sid: classes[(classes.index(given[sid]) + 1) % 3] for sid in ids}
    third = {sid: classes[(classes.index(given[sid]) + 2) % 3] for sid in ids}
    a, b, c = ids
    # a: two of three say "other" -> changed; b: one each -> no majority (unsure); c: 2 keep, 1 other
    plan = {
        a: [(me.id, other[a]), (users["ann1@fieldguide.local"], other[a]), (users["ann2@fieldguide.local"], given[a])],
        b: [(me.id, other[b]), (users["ann1@fieldguide.local"], third[b])],
        c: [(me.id, given[c]), (users["ann1@fieldguide.local"], given[c]), (users["ann2@fieldguide.local"], other[c])],
    }
    for sid, votes in plan.items():
        for uid, label in votes:
            sdk.annotations.create(tasks[sid].id, result=_choice(label), completed_by=uid)
    out = _cli_json(project, "relabel", "pull")
    assert (out["changed"], out["unsure"], out["accepted"]) == (1, 1, 1), out
    ds.reload()
    assert ds[a].ground_truth.label == other[a]
    assert ds[a].label_history[-1].actor == ",".join(sorted([me.email, "ann1@fieldguide.local"]))
    assert ds[b].ground_truth.label == given[b] and not ds[b].label_history
    assert ds[c].ground_truth.label == given[c]
    assert sorted((v.annotator, v.label) for v in ds[a].votes.classifications) == sorted(
        [(me.email, other[a]), ("ann1@fieldguide.local", other[a]), ("ann2@fieldguide.local", given[a])]
    )
    assert len(ds[b].votes.classifications) == 2

    # a change of mind (ANNOTATION_UPDATED) is applied once more, and only once
    ann = [x for x in sdk.tasks.get(str(tasks[b].id)).annotations
           if (x["completed_by"]["id"] if isinstance(x["completed_by"], dict) else x["completed_by"]) == users["ann1@fieldguide.local"]][0]
    sdk.annotations.update(ann["id"], result=_choice(other[b]))
    out = _cli_json(project, "relabel", "pull")
    assert out["changed"] == 1 and out["applied"] == 1
    ds.reload()
    assert ds[b].ground_truth.label == other[b]
    assert _cli_json(project, "relabel", "pull")["applied"] == 0


@pytest.mark.server
@pytest.mark.slow
def test_classes_added_later_update_the_labeling_config(remote, sdk, token_env):
    project = remote
    ds = store.dataset(project, create=False)
    _flag(project, ds.match_tags("test").values("id")[:1], "one")
    _cli_json(project, "relabel", "push", "--view", "one")
    store.add_classes(ds, ["yellow_bird"])
    out = _cli_json(project, "relabel", "push", "--view", "one")
    assert out["config_updated"] and out["already_pushed"] == 1 and out["pushed"] == 0
    proj = sdk.projects.get(out["project_id"])
    assert 'value="yellow_bird"' in proj.label_config


@pytest.mark.server
@pytest.mark.slow
def test_deleted_task_and_vanished_sample_are_report_lines(remote, sdk, token_env):
    project = remote
    ds = store.dataset(project, create=False)
    ids = ds.match_tags("test").values("id")[2:5]
    _flag(project, ids, "faults")
    assert ls.push(project, view="faults").pushed == 3
    tasks = _ls_tasks(sdk, project)
    gone_task, gone_sample, fine = ids
    sdk.tasks.delete(str(tasks[gone_task].id))
    sdk.annotations.create(tasks[gone_sample].id, result=_choice("red_bird"))
    sdk.annotations.create(tasks[fine].id, result=_choice("blue_bird"))
    ds.delete_samples([gone_sample])
    result = _cli(project, "relabel", "pull")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"task {tasks[gone_task].id} (sample {gone_task}) was deleted in Label Studio" in out
    assert f"sample {gone_sample} is no longer in the store" in out
    ds.reload()
    assert ds[fine].ground_truth.label == "blue_bird"
    assert [e.new for e in ds[gone_task].label_history or []] == []
    rows = store.warehouse(project).query("SELECT sample_id, status FROM relabel_tasks").set_index("sample_id")
    assert rows.loc[gone_task, "status"] == "deleted" and rows.loc[gone_sample, "status"] == "orphaned"
    again = ls.pull(project)
    assert again.applied == 0 and again.problems == []  # reported once
    # the deleted task is made again by the next push
    assert ls.push(project, view="faults").pushed == 1


@pytest.mark.server
@pytest.mark.slow
def test_wrong_token_down_server_and_timeout_fail_in_one_line(remote, monkeypatch, area):
    project = remote
    ds = store.dataset(project, create=False)
    _flag(project, ds.match_tags("train").values("id")[5:7], "never")
    before = _state(project)
    runs_before = len(store.warehouse(project).query("SELECT * FROM runs"))

    def fails(*args, match: str):
        result = _cli(project, *args)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and match in lines[0], lines
        assert "not-the-token" not in result.output
        return lines[0]

    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    fails("relabel", "push", "--view", "never", match="refused the API token (401)")
    fails("relabel", "pull", match="refused the API token (401)")

    monkeypatch.delenv(TOKEN_ENV)
    fails("relabel", "pull", match=f"set the environment variable {TOKEN_ENV}")

    # a server that is down: nothing listens on the port (retried with backoff, then one line)
    monkeypatch.setenv(TOKEN_ENV, "whatever")
    down = project.config.model_copy(deep=True)
    down.labelstudio.url = f"http://127.0.0.1:{free_port()}"
    down.labelstudio.retries = 2
    project.config_path.write_text(dump_config(down))
    try:
        t0 = time.monotonic()
        line = fails("relabel", "push", "--view", "never", match="is not reachable (connection refused)")
        assert "3 tries" in line and time.monotonic() - t0 >= 2.7  # the SDK's backoff: 1 s + 2 s, ±10 %
        fails("relabel", "pull", match="is not reachable")

        # a server that accepts but never answers: a timeout
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        down.labelstudio.url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        down.labelstudio.timeout_s = 1.0
        down.labelstudio.retries = 1
        project.config_path.write_text(dump_config(down))
        line = fails("relabel", "pull", match="did not answer within 1 s")
        assert "2 tries" in line  # timeouts are retried by the client, not the SDK
        silent.close()
    finally:
        project.config_path.write_text(dump_config(project.config))
    assert _state(project) == before
    assert len(store.warehouse(project).query("SELECT * FROM runs")) == runs_before


def test_connection_needs_a_running_local_server(project):
    with pytest.raises(ServiceError, match="not running"):
        ls.connection(project)
    assert ls.stop(project) is False
    assert not ls.status(project).running


@pytest.mark.server
@pytest.mark.slow
def test_app_plugin_pushes_a_selection_and_pulls_answers(area, server, sdk, token_env):
    """The @fieldguide/curator operators against a real server: the App's selection becomes
    tasks (once), the answers come back through the same pull as the CLI's."""
    from tests.test_plugin import run_op

    project = _make_project(area, "plugin")
    project.config.labelstudio.url = ls.connection(server).url
    project.config.labelstudio.token_env = TOKEN_ENV
    project.config.labelstudio.files_root = str(area / "images")
    project.config_path.write_text(dump_config(project.config))
    project = open_project(project.root)
    ds = store.dataset(project, create=False)
    selected = ds.match_tags("train").values("id")[:3]
    given = dict(zip(*ds.select(selected).values(["id", "ground_truth.label"])))
    out = run_op("push_to_label_studio", ds, params={"limit": 10}, selected=selected)
    assert (out["pushed"], out["already_pushed"]) == (3, 0) and out["url"] == ls.connection(server).url
    tasks = _ls_tasks(sdk, project)
    assert set(tasks) == set(selected)
    out = run_op("push_to_label_studio", ds, params={"limit": 10}, selected=selected)
    assert (out["pushed"], out["already_pushed"]) == (0, 3)
    assert len(_ls_tasks(sdk, project)) == 3  # no second task

    classes = sorted(CLASS_COLORS)
    new = classes[(classes.index(given[selected[0]]) + 1) % 3]
    sdk.annotations.create(tasks[selected[0]].id, result=_choice(new))
    sdk.annotations.create(tasks[selected[1]].id, result=_choice(given[selected[1]]))
    out = run_op("pull_from_label_studio", ds)
    assert (out["applied"], out["changed"], out["accepted"], out["pending"]) == (2, 1, 1, 1)
    ds.reload()
    assert ds[selected[0]].ground_truth.label == new
    assert ds[selected[0]].label_history[-1].source == "labelstudio"
    assert run_op("pull_from_label_studio", ds)["applied"] == 0


@pytest.fixture(scope="module")
def decided(area, server):
    """A third project on the same server, for the review lifecycle."""
    project = _make_project(area, "decided")
    project.config.labelstudio.url = ls.connection(server).url
    project.config.labelstudio.token_env = TOKEN_ENV
    project.config.labelstudio.files_root = str(area / "images")
    project.config_path.write_text(dump_config(project.config))
    return open_project(project.root)


@pytest.mark.server
@pytest.mark.slow
def test_a_curators_decision_closes_the_task_and_older_or_later_answers_are_conflicts(decided, sdk, token_env):
    """Acceptance 2 of the curator's-day issue, below the App: push → decide → the task is closed
    in Label Studio; an answer given before the decision, or to the closed task, is a conflict."""
    from fieldguide.platform import review

    project = decided
    ds = store.dataset(project, create=False)
    a, b, c, d = ids = ds.match_tags("train").values("id")[:4]
    _flag(project, ids)
    given = dict(zip(*ds.select(ids).values(["id", "ground_truth.label"])))
    assert _cli_json(project, "relabel", "push")["pushed"] == 4
    ds.reload()
    assert set(ds.select(ids).values(review.FIELD)) == {review.PUSHED}
    tasks = _ls_tasks(sdk, project)
    other = {sid: next(k for k in sorted(CLASS_COLORS) if k != given[sid]) for sid in ids}

    sdk.annotations.create(tasks[a].id, result=_choice(other[a]))  # answered in LS, not pulled yet
    time.sleep(1.1)  # Label Studio keeps times to the microsecond; one second apart for sure
    decision = review.decide(project, {a: given[a], b: other[b]}, actor="ana")
    assert decision.closed_tasks == 2 and decision.problems == []
    rows = store.warehouse(project).query("SELECT sample_id, status, answer FROM relabel_tasks").set_index("sample_id")
    assert rows.loc[a, "status"] == rows.loc[b, "status"] == "closed" and rows.loc[c, "status"] == "pushed"
    # a decision taken while Label Studio could not be told (the task stays open) ...
    assert review.decide(project, {d: other[d]}, actor="ana", close_tasks=False).closed_tasks == 0
    closed_b = sdk.tasks.get(str(tasks[b].id))
    assert closed_b.is_labeled and closed_b.data["review_state"] == f"decided by a curator: {other[b]}"
    ds.reload()
    assert ds[a][review.FIELD] == review.DISMISSED and ds[b][review.FIELD] == review.RESOLVED
    assert not {a, b} & set(ds.match_tags(review.QUEUE_TAG).values("id"))  # the queue (flag saves its view by this tag)

    time.sleep(1.1)
    sdk.annotations.create(tasks[b].id, result=_choice(given[b]))  # an annotator answers the closed task
    sdk.annotations.create(tasks[c].id, result=_choice(other[c]))  # an open task: applied
    sdk.annotations.create(tasks[d].id, result=[], was_cancelled=True)  # ... then skipped: decides nothing
    out = _cli_json(project, "relabel", "pull")
    assert out["conflicts"] == 2 and out["changed"] == 1 and out["skipped"] == 1
    assert sum("conflicts with a curator's decision" in p or "came after the task was closed" in p
               for p in out["problems"]) == 2
    ds.reload()
    assert ds[a].ground_truth.label == given[a] and ds[b].ground_truth.label == other[b]  # decisions stand
    assert ds[c].ground_truth.label == other[c] and ds[c][review.FIELD] == review.RESOLVED
    assert [e.source for e in ds[a].label_history] == ["curator"]
    assert ds[d][review.FIELD] == review.RESOLVED and ds[d].ground_truth.label == other[d]  # the skip left it
    # a second pull reports nothing new
    again = _cli_json(project, "relabel", "pull")
    assert again["conflicts"] == 0 and again["applied"] == 0 and again["unchanged"] == 4
    # the evidence changes (a new crowd vote): b is queued again, but keeps its one, closed task
    import fiftyone as fo

    ds.set_values("votes", {b: fo.Classifications(classifications=[
        fo.Classification(label=given[b], annotator="zoe")])}, key_field="id")
    review.requeue(ds, {b})
    out = _cli_json(project, "relabel", "push")
    assert out["decided_before"] == [b] and out["pushed"] == 0 and out["already_pushed"] == 3
    # an annotator edits the curator's own closing answer: a conflict too, not silence
    closing = json.loads(store.warehouse(project).query(
        "SELECT answer FROM relabel_tasks WHERE sample_id = ?", [a]).iloc[0, 0])["closing_annotation"]
    sdk.annotations.update(closing, result=_choice(other[a]))
    out = _cli_json(project, "relabel", "pull")
    assert out["conflicts"] == 1 and out["applied"] == 0
    ds.reload()
    assert ds[a].ground_truth.label == given[a]
