"""The ``fieldguide labelstudio start|status|listen|stop`` verbs, each run as a user runs it.

Every verb is its own ``python -m fieldguide.cli`` process, its output in files (never pipes:
a mongod that a command starts inherits its output). One Label Studio server for the module
(on a copy of the session's migrated data dir, conftest's ``labelstudio_data``): the tests run
in file order, start first and stop last.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import CLASS_COLORS, copy_labelstudio_data, free_port, make_image
from fieldguide.config import PROJECT_ENV, init_project
from fieldguide.platform import labelstudio as ls
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from fieldguide.platform.labelstudio.server import read_state

pytestmark = [pytest.mark.server, pytest.mark.slow]

RUNNING = re.compile(r"Label Studio (running|already running) at (http://127\.0\.0\.1:\d+) \(pid (\d+)\)")


def _command(project, *args: str) -> list[str]:
    return [sys.executable, "-m", "fieldguide.cli", "-p", str(project.root), *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != PROJECT_ENV}


def _cli(project, logs: Path, name: str, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    """``fieldguide -p PROJECT ARGS`` to its end: (exit code, stdout, stderr), via files."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with out.open("w") as o, err.open("w") as e:
        done = subprocess.run(_command(project, *args), stdout=o, stderr=e, env=_env(), timeout=timeout)
    stderr = err.read_text()
    assert "Traceback" not in stderr, stderr
    return done.returncode, out.read_text(), stderr


def _default_sigint() -> None:
    """Ctrl-C reaches the child as in a terminal, even where pytest's shell ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] != "Z"


def _wait_for(what: str, check, timeout: float = 120.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


# ---- one server for the module ----------------------------------------------------------------
@pytest.fixture(scope="module")
def area(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lscli")


@pytest.fixture(scope="module")
def logs(area) -> Path:
    path = area / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def project(area, labelstudio_data):
    """A tiny project (2 images a class) beside its image folder, with a migrated Label Studio
    data dir (the first start's migrations ran once for the session)."""
    images = area / "images"
    seed = 500
    for cls, color in CLASS_COLORS.items():
        for i in range(2):
            seed += 1
            make_image(images / "train" / cls / f"{cls}_{i}.jpg", color, seed=seed)
    project = init_project(area / "proj", "lscli")
    ingest(project, images, fmt="folder")
    copy_labelstudio_data(labelstudio_data, project)
    yield project
    ls.stop(project)  # when a test before test_stop failed
    store.release_database()


@pytest.fixture(scope="module")
def started(project, logs):
    """``labelstudio start --port P``: (port, exit code, stdout, stderr)."""
    port = free_port()
    code, out, err = _cli(project, logs, "start", "labelstudio", "start", "--port", str(port),
                          "--timeout", "600", timeout=660)
    return port, code, out, err


@pytest.fixture(scope="module")
def sdk(project, started):
    from label_studio_sdk import LabelStudio

    conn = ls.connection(project)
    return LabelStudio(base_url=conn.url, api_key=conn.token)


# ---- the verbs, in order ----------------------------------------------------------------------
def test_start_prints_the_url_and_the_server_answers_there(project, started):
    port, code, out, err = started
    assert code == 0, out + err
    match = RUNNING.search(out)
    assert match, out
    verb, url, pid = match.group(1), match.group(2), int(match.group(3))
    assert verb == "running" and url == f"http://127.0.0.1:{port}"
    assert f"log in as {project.config.labelstudio.username}" in out
    assert str(project.labelstudio_dir / "credentials.json") in out
    assert ls.credentials(project)["token"] not in out + err  # the token is never printed
    r = httpx.get(f"{url}/health", timeout=10)
    assert r.status_code == 200
    assert _pid_alive(pid)
    state = read_state(project)
    assert (state["pid"], state["port"], state["url"]) == (pid, port, url)


def test_a_second_start_says_it_is_already_running_and_starts_nothing(project, started, logs):
    port, _, first, _ = started
    pid = int(RUNNING.search(first).group(3))
    code, out, err = _cli(project, logs, "start2", "labelstudio", "start", "--port", str(port))
    assert code == 0, out + err
    match = RUNNING.search(out)
    assert match, out
    assert (match.group(1), match.group(2), int(match.group(3))) == (
        "already running", f"http://127.0.0.1:{port}", pid)
    assert read_state(project)["pid"] == pid
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200


def test_status_reports_running_with_the_url(project, started, logs):
    port = started[0]
    code, out, err = _cli(project, logs, "status", "labelstudio", "status")
    assert code == 0, out + err
    assert out.strip().splitlines() == [f"Label Studio running at http://127.0.0.1:{port}: running",
                                        f"database: sqlite {project.labelstudio_dir / 'label_studio.sqlite3'}"]


def test_listen_applies_an_answer_that_label_studio_sends_by_webhook(project, started, sdk, logs):
    ds = store.dataset(project, create=False)
    sid = ds.first().id
    old = ds[sid].ground_truth.label
    new = sorted(set(CLASS_COLORS) - {old})[0]
    pushed = ls.push(project, sample_ids=[sid])  # and the Label Studio project the webhook joins
    assert pushed.pushed == 1
    (task,) = sdk.tasks.list(project=pushed.project_id)

    hook_port = free_port()
    out_path, err_path = logs / "listen.out", logs / "listen.err"
    with out_path.open("w") as o, err_path.open("w") as e:
        listener = subprocess.Popen(_command(project, "labelstudio", "listen", "--port", str(hook_port)),
                                    stdout=o, stderr=e, env=_env(), start_new_session=True,
                                    preexec_fn=_default_sigint)
    try:
        # Label Studio may show the webhook a moment before its actions are stored: wait for both
        hooks = _wait_for("the listener's webhook in Label Studio",
                          lambda: listener.poll() is None and
                          [h for h in sdk.webhooks.list() if h.url == f"http://127.0.0.1:{hook_port}/"
                           and set(h.actions or ()) == {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}])
        assert len(hooks) == 1 and listener.poll() is None
        sdk.annotations.create(task.id, result=[{"from_name": "label", "to_name": "image", "type": "choices",
                                                 "value": {"choices": [new]}}])
        line = f"tasks {task.id}: applied 1 (changed 1, accepted 0, unsure 0, skipped 0)"
        _wait_for("the listener's pull", lambda: line in out_path.read_text() or listener.poll() is not None)
        assert line in out_path.read_text(), out_path.read_text() + err_path.read_text()
    finally:
        if listener.poll() is None:
            listener.send_signal(signal.SIGINT)  # Ctrl-C
        code = listener.wait(60)
    output = out_path.read_text()
    assert output.startswith("listening for Label Studio webhooks"), output
    assert "Traceback" not in err_path.read_text(), err_path.read_text()
    assert code == 130  # interrupted
    assert not [h for h in sdk.webhooks.list() if f":{hook_port}/" in h.url]  # removed on the way out
    ds.reload()
    assert ds[sid].ground_truth.label == new
    assert [(h.old, h.new, h.source) for h in ds[sid].label_history] == [(old, new, "labelstudio")]
    assert ls.pull(project).applied == 0  # the listener's pull is not applied twice


def test_stop_ends_the_server_and_a_second_stop_says_it_was_not_running(project, started, logs):
    port, _, first, _ = started
    pid = int(RUNNING.search(first).group(3))
    code, out, err = _cli(project, logs, "stop", "labelstudio", "stop")
    assert (code, out.strip()) == (0, "Label Studio stopped"), out + err
    assert not _pid_alive(pid)
    assert not _port_open(port)
    assert read_state(project) is None

    code, out, err = _cli(project, logs, "status-stopped", "labelstudio", "status")
    assert code == 3, out + err
    assert out.strip() == "Label Studio stopped: not running (start it with 'fieldguide labelstudio start')"

    code, out, err = _cli(project, logs, "stop2", "labelstudio", "stop")
    assert (code, out.strip()) == (0, "Label Studio was not running"), out + err
