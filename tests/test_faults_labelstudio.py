"""The relabel loop's faults against a real Label Studio (issue 21: the loop survives its second round).

One server per module, owned by a project whose layout is the awkward one: the project folder
sits beside its image folders (``birds/project`` next to ``birds/photos`` and ``birds/more``),
and some images live inside it (``birds/project/images``). The first test is the acceptance
test (three rounds of flag, push, answer, pull); the others push samples no earlier test pushed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import CLASS_COLORS, copy_labelstudio_data, free_port, make_image, running_listener, use_tiny_backbone
from fieldguide.cli import app
from fieldguide.config import dump_config, init_project, open_project
from fieldguide.errors import ServiceError
from fieldguide.platform import labelstudio as ls
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from fieldguide.platform.labelstudio.pulling import Puller

pytestmark = [pytest.mark.server, pytest.mark.slow]
CLASSES = sorted(CLASS_COLORS)


# ---- helpers ------------------------------------------------------------------------------


def _make_images(root: Path, counts: dict[str, int], seed: int) -> Path:
    for split, n in counts.items():
        for cls, color in CLASS_COLORS.items():
            for i in range(n):
                seed += 1
                make_image(root / split / cls / f"{cls}_{split}_{i}.jpg", color, seed=seed)
    return root


def _cli_json(project, *args) -> dict:
    result = CliRunner().invoke(app, ["-p", str(project.root), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def _true_class(filepath: str) -> str:
    return next(c for c in CLASSES if Path(filepath).name.startswith(c + "_"))


def _ls_project(sdk, project):
    title = ls.project_title(project)
    return next(p for p in sdk.projects.list(title=title) if p.title == title)


def _ls_tasks(sdk, project) -> dict[str, object]:
    proj = _ls_project(sdk, project)
    return {t.data["sample_id"]: t for t in sdk.tasks.list(project=proj.id, fields="all")}


def _fresh(project, n: int, folder: str = "", label: str | None = None) -> list[str]:
    """``n`` train sample ids (under ``folder``, of class ``label``) that no test has pushed yet."""
    ds = store.dataset(project, create=False)
    df = store.warehouse(project).query("SELECT sample_id FROM relabel_tasks")
    pushed = set(df["sample_id"]) if not df.empty else set()
    ids, paths, labels = ds.match_tags("train").values(["id", "filepath", "ground_truth.label"])
    ids = [i for i, p, lab in zip(ids, paths, labels)
           if i not in pushed and f"/{folder}/" in p and label in (None, lab)]
    assert len(ids) >= n, f"only {len(ids)} fresh samples under {folder!r}"
    return ids[:n]


def _other(label: str) -> str:
    return CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]


def _labelstudio_history(project, sid: str) -> list[tuple]:
    ds = store.dataset(project, create=False)
    ds.reload()
    return [(e.old, e.new, e.run_id) for e in ds[sid].label_history or [] if e.source == "labelstudio"]


def _labelstudio_events(project, sid: str) -> int:
    df = store.warehouse(project).query(
        "SELECT count(*) FROM label_events WHERE sample_id = ? AND source = 'labelstudio'", [sid]
    )
    return int(df.iloc[0, 0])


def _wait(seen: list, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < n:
        time.sleep(0.1)
    assert len(seen) >= n, f"expected {n} pull(s) from the listener, saw {len(seen)}"


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def birds(tmp_path_factory, tiny_weights, labelstudio_data):
    """The project (beside and around its images) and its own Label Studio on a free port."""
    area = tmp_path_factory.mktemp("lsfaults") / "birds"
    project = use_tiny_backbone(init_project(area / "project", "faults"), tiny_weights)
    project.config.store.lock_timeout_s = 300  # five pulls at once wait for each other
    project.config_path.write_text(dump_config(project.config))
    project = open_project(project.root)
    sources = [
        _make_images(area / "photos", {"train": 8, "test": 2}, seed=1000),
        _make_images(area / "more", {"train": 2}, seed=2000),
        _make_images(project.root / "images", {"train": 2}, seed=3000),
    ]
    for source in sources:
        ingest(project, source, fmt="folder")
    copy_labelstudio_data(labelstudio_data, project)
    info = ls.start(project, port=free_port(), timeout_s=600)
    assert info.running
    yield project
    ls.stop(project)
    store.release_database()


@pytest.fixture(scope="module")
def sdk(birds):
    from label_studio_sdk import LabelStudio

    conn = ls.connection(birds)
    return LabelStudio(base_url=conn.url, api_key=conn.token)


@pytest.fixture
def listener(birds):
    """``labelstudio.listen`` in a thread on a free port: (port, the pulls it made)."""
    ls.push(birds, sample_ids=_fresh(birds, 1, "photos"))  # the Label Studio project its webhook joins
    with running_listener(birds) as (port, seen):
        yield port, seen


def _hook_secret(sdk, birds, port: int) -> str:
    """The listener's secret as any Label Studio API user reads it (/api/webhooks)."""
    hooks = [h for h in sdk.webhooks.list(project=str(_ls_project(sdk, birds).id)) if f":{port}/" in h.url]
    assert len(hooks) == 1
    return hooks[0].headers[ls.WEBHOOK_HEADER]


_OMIT = object()


def _post(port: int, body: bytes, *, secret, length=None) -> tuple[int, str]:
    """A raw HTTP POST (any header bytes); the listener's status and message."""
    lines = [b"POST / HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: application/json", b"Connection: close"]
    if secret is not None:
        lines.append(b"X-Fieldguide-Secret: " + (secret if isinstance(secret, bytes) else secret.encode()))
    if length is not _OMIT:
        lines.append(b"Content-Length: " + str(len(body) if length is None else length).encode())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    head, _, message = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), f"no HTTP answer (connection dropped?): {data[:200]!r}"
    return int(head.split()[1]), message.decode("utf-8", "replace").strip()


# ---- 6. the acceptance test: three rounds on one project -----------------------------------
def test_three_rounds_of_flag_push_answer_pull(birds, sdk):
    """flag -> push -> answer (REST, as a curator) -> pull, three times; each answer applied once."""
    from fieldguide.models.embed import embed
    from fieldguide.models.predict import predict

    project = birds
    embed(project)
    predict(project, head="logreg", folds=3)
    ds = store.dataset(project, create=False)
    answered: dict[str, str] = {}
    for round_no in (1, 2, 3):
        # new noisy labels arrive: one bird of each class, never pushed, gets the next class's label
        # (one per class: cleanlab's per-class thresholds then catch all three)
        noisy = {_fresh(project, 1, "photos", cls)[0]: _other(cls) for cls in CLASSES}
        store.set_labels(project, ds, noisy, source="curator", actor="test")

        flagged = _cli_json(project, "flag")
        assert flagged["flagged"] >= 3, f"round {round_no}: {flagged}"
        pushed = _cli_json(project, "relabel", "push")
        assert pushed["pushed"] >= 3, f"round {round_no}: {pushed}"
        # the curator answers every open task with the bird's true class
        new = {}
        for sid, task in _ls_tasks(sdk, project).items():
            if not task.annotations:
                new[sid] = _true_class(task.data["filepath"])
                sdk.annotations.create(task.id, result=_choice(new[sid]))
        assert set(noisy) <= set(new) and not set(new) & set(answered), f"round {round_no}: {new}"
        pulled = _cli_json(project, "relabel", "pull")
        assert pulled["applied"] == len(new) and pulled["problems"] == [], pulled
        answered.update(new)

        ds.reload()
        for sid, label in answered.items():
            hist = _labelstudio_history(project, sid)
            assert len(hist) == 1 and hist[0][1] == label, (round_no, sid, hist)
            assert _labelstudio_events(project, sid) == 1
            assert ds[sid].ground_truth.label == label
    runs = store.warehouse(project).query(
        "SELECT kind, status FROM runs WHERE kind IN ('flag', 'relabel_push', 'relabel_pull')"
    )
    assert len(runs) == 9 and set(runs["status"]) == {"completed"}


# ---- 1. Label Studio serves the image folders, never the project's files --------------------
def test_label_studio_serves_the_images_and_not_the_project_files(birds, sdk):
    project = birds
    ds = store.dataset(project, create=False)
    ids = _fresh(project, 1, "photos") + _fresh(project, 1, "more") + _fresh(project, 1, "project/images")
    out = ls.push(project, sample_ids=ids)
    assert out.pushed == 3
    conn = ls.connection(project)
    area = project.root.parent
    storages = {Path(s.path) for s in sdk.import_storage.local.list(project=out.project_id)}
    assert storages == {area / "photos", area / "more" / "train", project.root / "images" / "train"}

    auth = {"Authorization": f"Token {conn.token}"}
    root = Path(conn.document_root)

    def get(path: Path | str) -> httpx.Response:
        d = path if isinstance(path, str) else path.relative_to(root).as_posix()
        return httpx.get(f"{conn.url}/data/local-files/", params={"d": d}, headers=auth)

    tasks = _ls_tasks(sdk, project)
    for sid in ids:  # each image is served from its own file, byte for byte
        r = httpx.get(conn.url + tasks[sid].data["image"], headers=auth)
        assert r.status_code == 200 and r.content == Path(ds[sid].filepath).read_bytes()

    creds = ls.credentials(project)
    secrets_ = [project.labelstudio_dir / "credentials.json", project.warehouse_path, project.config_path]

    def refused(path) -> bool:
        r = get(path)
        return r.status_code != 200 and creds["token"] not in r.text and creds["password"] not in r.text

    sneaky = f"{(area / 'photos').relative_to(root).as_posix()}/../project/labelstudio/credentials.json"
    assert all(refused(p) for p in secrets_) and refused(sneaky)

    # a storage an older fieldguide made (the images' common folder, holding the project) leaks ...
    old = sdk.import_storage.local.create(project=out.project_id, path=str(area), title="old", use_blob_urls=True)
    leak = get(secrets_[0])
    assert leak.status_code == 200 and creds["token"] in leak.text
    assert get(secrets_[1]).content[:4] == project.warehouse_path.read_bytes()[:4]
    # ... and the next push removes it
    assert ls.push(project, sample_ids=ids).already_pushed == 3
    left = {s.id: Path(s.path) for s in sdk.import_storage.local.list(project=out.project_id)}
    assert old.id not in left and set(left.values()) == storages
    assert all(refused(p) for p in secrets_) and refused(sneaky)
    # so does the next pull (or the listener's)
    old = sdk.import_storage.local.create(project=out.project_id, path=str(area), title="old", use_blob_urls=True)
    assert get(secrets_[0]).status_code == 200
    ls.pull(project)
    assert old.id not in {s.id for s in sdk.import_storage.local.list(project=out.project_id)}
    assert all(refused(p) for p in secrets_)


def test_images_in_the_project_folder_itself_are_refused_in_one_line(birds):
    protected = ls.protected_paths(birds)
    root = birds.root.parent.parent
    with pytest.raises(ServiceError, match="share a folder with the project's own files"):
        ls.served_folders([birds.root], document_root=root, protected=protected)
    # a folder that is only a string prefix of the project's folder counts as holding it
    prefix = Path(str(birds.root)[:-2])
    with pytest.raises(ServiceError, match="share a folder"):
        ls.served_folders([prefix], document_root=root, protected=protected)
    # image folders inside the project are served one by one (their parent holds more than them)
    assert ls.served_folders([birds.root / "images" / "a", birds.root / "images" / "b"],
                              document_root=root, protected=protected) == [birds.root / "images" / "a",
                                                                           birds.root / "images" / "b"]


# ---- 2. the webhook: a hint, never an answer ---------------------------------------------------
def test_the_webhook_secret_is_the_listeners_own(birds, sdk, listener):
    port, _ = listener
    secret = _hook_secret(sdk, birds, port)
    creds = json.loads((birds.labelstudio_dir / "credentials.json").read_text())
    assert "webhook_secret" not in creds and secret not in creds.values()
    assert len(secret) >= 32


def test_a_forged_webhook_cannot_change_a_label(birds, sdk, listener):
    port, seen = listener
    project = birds
    ds = store.dataset(project, create=False)
    (sid,) = _fresh(project, 1, "photos")
    other_sid = ds.match_tags("test").first().id  # never pushed: test samples are this test's own
    ls.push(project, sample_ids=[sid])
    given, other_given = ds[sid].ground_truth.label, ds[other_sid].ground_truth.label
    forged_label = _other(given)
    task = _ls_tasks(sdk, project)[sid]
    secret = _hook_secret(sdk, project, port)

    def forge(task_id: int, target: str) -> None:
        body = {"action": "ANNOTATION_CREATED", "task": {"id": task_id, "data": {"sample_id": target}},
                "annotation": {"task": task_id, "result": _choice(forged_label), "completed_by": 1}}
        assert _post(port, json.dumps(body).encode(), secret=secret)[0] == 200

    # 1) an answer Label Studio does not hold: the pull reads the task, finds no annotation
    forge(task.id, sid)
    _wait(seen, 1)
    assert seen[-1][0] == [task.id] and seen[-1][1].applied == 0 and seen[-1][1].pending == 1
    # 2) a task someone else made in our project, naming a sample, answered there
    ours = _ls_project(sdk, project)
    sdk.projects.import_tasks(ours.id, request=[{"data": {"sample_id": other_sid, "image": "x", "info": "x", "candidates": []}}])
    planted = next(t for t in sdk.tasks.list(project=ours.id) if t.data.get("sample_id") == other_sid)
    sdk.annotations.create(planted.id, result=_choice(_other(other_given)))
    _wait(seen, 2)  # Label Studio's own webhook for that annotation
    forge(planted.id, other_sid)
    _wait(seen, 3)
    assert all(r.applied == 0 for _, r in seen)
    assert any("did not push it" in line for _, r in seen for line in r.problems)
    # 3) a task of another Label Studio project
    foreign = sdk.projects.create(title="not fieldguide", label_config=ls.label_config(CLASSES))
    sdk.projects.import_tasks(foreign.id, request=[{"data": {"sample_id": sid, "image": "x", "info": "x", "candidates": []}}])
    (ftask,) = list(sdk.tasks.list(project=foreign.id))
    sdk.annotations.create(ftask.id, result=_choice(forged_label))
    forge(ftask.id, sid)
    _wait(seen, 4)
    assert seen[-1][1].applied == 0
    ds.reload()
    assert ds[sid].ground_truth.label == given and not _labelstudio_history(project, sid)
    assert ds[other_sid].ground_truth.label == other_given
    assert not _labelstudio_history(project, other_sid)

    # the curator's real answer, through Label Studio, is applied (its webhook, its pull)
    n = len(seen)
    sdk.annotations.create(task.id, result=_choice(forged_label))
    _wait(seen, n + 1)
    assert seen[-1][1].changed == 1
    assert [h[:2] for h in _labelstudio_history(project, sid)] == [(given, forged_label)]


def test_a_webhook_while_another_step_writes_is_pulled_after_it(birds, sdk, listener):
    """The listener does not drop an answer that arrives while the project is busy: it waits."""
    from fieldguide.platform.lock import project_lock

    port, seen = listener
    (sid,) = _fresh(birds, 1, "photos")
    ls.push(birds, sample_ids=[sid])
    ds = store.dataset(birds, create=False)
    given = ds[sid].ground_truth.label
    task = _ls_tasks(sdk, birds)[sid]
    n = len(seen)
    patient = birds.config.store.lock_timeout_s
    birds.config.store.lock_timeout_s = 0.5  # the listener's pulls give up quickly while we write
    try:
        with project_lock(birds, "train"):
            sdk.annotations.create(task.id, result=_choice(_other(given)))
            time.sleep(3 * ls.BUSY_RETRY_S)
            assert len(seen) == n  # nothing applied while the project was busy ...
    finally:
        birds.config.store.lock_timeout_s = patient
    _wait(seen, n + 1)  # ... and the answer is applied once it is free
    assert seen[-1][0] == [task.id] and seen[-1][1].changed == 1
    assert [h[:2] for h in _labelstudio_history(birds, sid)] == [(given, _other(given))]


# ---- 3. the listener answers every malformed request ------------------------------------------
def test_the_listener_answers_malformed_requests_with_a_4xx(birds, sdk, listener, capfd):
    port, seen = listener
    secret = _hook_secret(sdk, birds, port)

    def hook(body) -> bytes:
        return json.dumps(body).encode()

    ok = hook({"action": "ANNOTATION_CREATED", "task": {"id": 10**9}})
    cases = [
        ("no secret", dict(body=ok, secret=None), 403),
        ("wrong secret", dict(body=ok, secret="x" * 43), 403),
        ("non-ASCII secret", dict(body=ok, secret="é€ secret".encode()), 403),
        ("non-ASCII, latin-1 bytes", dict(body=ok, secret=b"\xff\xfe" + secret.encode()), 403),
        ("a JSON list", dict(body=hook([1, 2]), secret=secret), 400),
        ("a JSON string", dict(body=hook("ANNOTATION_CREATED"), secret=secret), 400),
        ("not JSON", dict(body=b"{nope", secret=secret), 400),
        ("not UTF-8", dict(body=b'{"a": "\xff"}', secret=secret), 400),
        ("task 'abc'", dict(body=hook({"action": "ANNOTATION_CREATED", "task": "abc"}), secret=secret), 400),
        ("task id '12'", dict(body=hook({"action": "ANNOTATION_CREATED", "task": {"id": "12"}}), secret=secret), 400),
        ("task id 1.5", dict(body=hook({"action": "ANNOTATION_UPDATED", "annotation": {"task": 1.5}}),
                             secret=secret), 400),
        ("task id true", dict(body=hook({"action": "ANNOTATION_CREATED", "task": True}), secret=secret), 400),
        ("task id -3", dict(body=hook({"action": "ANNOTATION_CREATED", "task": {"id": -3}}), secret=secret), 400),
        ("task id 2**70", dict(body=hook({"action": "ANNOTATION_CREATED", "task": {"id": 2**70}}), secret=secret), 400),
        ("two task ids", dict(body=hook({"action": "ANNOTATION_CREATED", "task": {"id": 1},
                                         "annotation": {"task": 2}}), secret=secret), 400),
        ("annotation a list", dict(body=hook({"action": "ANNOTATION_CREATED", "annotation": []}), secret=secret), 400),
        ("no task id", dict(body=hook({"action": "ANNOTATION_CREATED"}), secret=secret), 400),
        ("negative Content-Length", dict(body=ok, secret=secret, length=-5), 400),
        ("Content-Length 'abc'", dict(body=ok, secret=secret, length="abc"), 400),
        ("no Content-Length", dict(body=ok, secret=secret, length=_OMIT), 411),
        ("a 2 MB body", dict(body=b"[" + b"1," * (1 << 20) + b"1]", secret=secret), 413),
        ("a claimed 1 TB body", dict(body=ok, secret=secret, length=10**12), 413),
        ("a body shorter than announced", dict(body=ok, secret=secret, length=len(ok) + 10), 408),
    ]
    got = {name: _post(port, **kw) for name, kw, _ in cases}
    assert {name: status for name, (status, _) in got.items()} == {name: want for name, _, want in cases}
    assert all(message for _, message in got.values())  # each answer says why
    # other events are acknowledged and ignored; a sound one still queues its task
    assert _post(port, hook({"action": "PROJECT_UPDATED", "task": "abc"}), secret=secret)[0] == 200
    assert seen == []
    status, message = _post(port, ok, secret=secret)
    assert status == 200 and str(10**9) in message
    _wait(seen, 1)
    assert seen[0][0] == [10**9] and seen[0][1].applied == 0  # no such task in Label Studio
    assert "Traceback" not in capfd.readouterr().err


# ---- 4. two pulls at once apply an answer once --------------------------------------------------
def test_five_pulls_at_once_apply_an_answer_once(birds, sdk):
    """Three ``labelstudio.pull`` threads and two ``fieldguide relabel pull`` processes, all at once."""
    project = birds
    (sid,) = _fresh(project, 1, "photos")
    ls.push(project, sample_ids=[sid])
    given = store.dataset(project, create=False)[sid].ground_truth.label
    sdk.annotations.create(_ls_tasks(sdk, project)[sid].id, result=_choice(_other(given)))
    exe = Path(sys.executable).parent / "fieldguide"
    procs = [subprocess.Popen([str(exe), "-p", str(project.root), "relabel", "pull", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    with ThreadPoolExecutor(3) as pool:
        in_process = [f.result().applied for f in [pool.submit(ls.pull, project) for _ in range(3)]]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    applied = sorted(in_process + [json.loads(out)["applied"] for out, _ in outs])
    assert applied == [0, 0, 0, 0, 1]
    assert [h[:2] for h in _labelstudio_history(project, sid)] == [(given, _other(given))]
    assert _labelstudio_events(project, sid) == 1


def test_a_pull_that_started_before_another_applied_does_not_apply_again(birds, sdk):
    """The check at the point of applying: a pull whose view of the store is stale skips the task.

    Two pullers built before either applies (the interleaving of two pulls that the write lock
    would otherwise hide), driven through the pull's own task-by-task step.
    """
    project = birds
    (sid,) = _fresh(project, 1, "more")
    ls.push(project, sample_ids=[sid])
    given = store.dataset(project, create=False)[sid].ground_truth.label
    task_id = _ls_tasks(sdk, project)[sid].id
    sdk.annotations.create(task_id, result=_choice(_other(given)))
    client = ls.Client(ls.connection(project))
    proj_id = client.find_project(ls.project_title(project)).id
    first, late = (Puller(project, client, proj_id, run) for run in ("pull-a", "pull-b"))
    task = client.task(task_id)
    first.apply(task)
    late.apply(task)  # built before the first applied: its cached rows say "pushed"
    assert (first.report.changed, late.report.changed, late.report.unchanged) == (1, 0, 1)
    assert _labelstudio_history(project, sid) == [(given, _other(given), "pull-a")]
    assert _labelstudio_events(project, sid) == 1


def test_image_folders_far_apart_are_served_apart_never_their_common_parent(tmp_path):
    """Images in ~/Pictures/a and ~/Downloads/b: two storages, never ~ (which holds ~/.ssh)."""
    home = tmp_path / "home"
    for d in ("Pictures/a", "Downloads/b", "Downloads/b/more", ".ssh", "Pictures/c"):
        (home / d).mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("secret")
    (home / "Downloads" / "taxes.pdf").write_text("private")
    project = tmp_path / "srv" / "p"
    project.mkdir(parents=True)
    images = [home / "Pictures" / "a", home / "Downloads" / "b", home / "Downloads" / "b" / "more"]
    protected = [project]
    served = ls.served_folders(images, document_root=tmp_path, protected=protected)
    assert served == [home / "Downloads" / "b", home / "Pictures" / "a"]
    # a folder that holds nothing but image folders is served whole (one storage, not one per class)
    (home / "Pictures" / "c").rmdir()
    (home / "Pictures" / "d").mkdir()
    served = ls.served_folders([home / "Pictures" / "a", home / "Pictures" / "d"], document_root=tmp_path,
                               protected=protected)
    assert served == [home / "Pictures"]
