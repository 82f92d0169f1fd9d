"""Fault injection on real parts: two hands at once, a killed or moved project, bad project files.

Each test reproduces one item of the reliability issue (its number in the test's docstring) and
asserts the clear error and that nothing was lost or duplicated. The Label Studio items are in
test_faults_labelstudio.py, the ingest items in test_faults_ingest.py, the signal items in
test_faults_curation.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from conftest import free_port
from fieldguide.cli import app
from fieldguide.config import CONFIG_NAME, PROJECT_ENV, init_project, open_project

pytestmark = pytest.mark.slow


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``fieldguide ARGS`` as a user runs it: its own process, its own output."""
    env = {k: v for k, v in os.environ.items() if k != PROJECT_ENV}
    return subprocess.run([sys.executable, "-m", "fieldguide.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    """``fieldguide ARGS`` in the background, stdout to ``log``, stderr to ``log`` + ``.err``.

    Files, not pipes: a mongod that a command starts inherits its output, and a pipe would stay
    open until that mongod's last client has been reaped.
    """
    env = {k: v for k, v in os.environ.items() if k != PROJECT_ENV}
    return subprocess.Popen([sys.executable, "-m", "fieldguide.cli", *args], stdout=log.open("w"),
                            stderr=Path(f"{log}.err").open("w"), env=env, start_new_session=True)


def outputs_of(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> list[tuple[str, str]]:
    """Wait for every process (reaping each), then their (stdout, stderr)."""
    deadline = time.time() + timeout
    for p in procs:
        p.wait(timeout=max(1.0, deadline - time.time()))
    return [(log.read_text(), Path(f"{log}.err").read_text()) for log in logs]


def assert_one_error_line(output: str, *needles: str) -> str:
    """A one-line ``error:`` and no traceback; returns the line."""
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def status_json(root: Path) -> dict:
    done = cli("--project", str(root), "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def project_processes(root: Path) -> list[psutil.Process]:
    """Processes that belong to the project: its mongod, App server, orchestrator."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.environ() if "fiftyone" in cmd or "fieldguide" in cmd else {}
        except psutil.Error:
            continue
        if str(root / "db") in cmd or env.get(PROJECT_ENV) == str(root):
            found.append(proc)
    return found


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # it ended meanwhile
        return []




def stop_database(project) -> None:
    """Stop this process's hold on the project's mongod and wait until it has exited."""
    from fieldguide.platform.store import release_database

    release_database()
    deadline = time.time() + 60
    while project_processes(project.root) and time.time() < deadline:
        time.sleep(0.5)
    assert not project_processes(project.root)


@pytest.fixture
def stopped(ingested):
    """An ingested project whose mongod is down (as after any command ended)."""
    stop_database(ingested)
    return ingested


# ---- 2. two hands at once ---------------------------------------------------------------------
def test_ten_concurrent_ingests_leave_one_sample_per_file(project, image_folder, tmp_path):
    """Item 2: two `ingest`s at once duplicated every sample while the project's mongod was up."""
    from fieldguide.platform import store

    # writers wait for each other (a long wait here, so that every one of them gets its turn)
    text = project.config_path.read_text()
    project.config_path.write_text(text.replace("lock_timeout_s = 10.0", "lock_timeout_s = 600.0"))
    ds = store.dataset(project)  # this process holds the project's mongod up
    logs = [tmp_path / f"ingest{i}.log" for i in range(10)]
    procs = [start_cli("--project", str(project.root), "ingest", str(image_folder), log=log) for log in logs]
    outputs = outputs_of(procs, logs)
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and "Traceback" not in out + err, out + err
    ds.reload()
    paths = ds.values("filepath")
    assert len(paths) == len(set(paths)) == 24
    added = [int(out.split()[1].rstrip(",")) for out, _ in outputs]
    assert sum(added) == 24  # the files were added once, by one of them
    wh_rows = store.warehouse(project).query("SELECT count(*) AS n, count(DISTINCT filepath) AS d FROM samples")
    assert wh_rows.iloc[0].tolist() == [24, 24]


def test_a_second_writer_is_told_who_holds_the_project(ingested):
    """Item 2: the lock names the holder; a reader is never blocked."""
    from fieldguide.platform.lock import project_lock

    text = ingested.config_path.read_text()
    ingested.config_path.write_text(text.replace("lock_timeout_s = 10.0", "lock_timeout_s = 0.5"))
    with project_lock(ingested, "train"):
        busy = cli("--project", str(ingested.root), "flag")
        read = cli("--project", str(ingested.root), "status", "--json")
    assert busy.returncode == 1
    line = assert_one_error_line(busy.stderr, f"project {ingested.root} is busy", f"PID {os.getpid()}")
    assert "try again" in line
    assert read.returncode == 0 and json.loads(read.stdout)["samples"] == 24


def test_commands_started_together_on_a_stopped_project_share_one_database(stopped, tmp_path):
    """Item 2: the second of two commands started together printed a ServiceListenTimeout traceback."""
    root = stopped.root
    logs = [tmp_path / f"status{i}.log" for i in range(3)]
    procs = [start_cli("--project", str(root), "status", "--json", log=log) for log in logs]
    most_mongods = 0  # counted while the commands run: one database for all three
    while any(p.poll() is None for p in procs):
        mongods = [p for p in project_processes(root) if _cmdline(p)[:1] and _cmdline(p)[0].endswith("/mongod")]
        most_mongods = max(most_mongods, len(mongods))
        time.sleep(0.1)
    outputs = outputs_of(procs, logs)
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out + err
        assert "Traceback" not in err and json.loads(out)["samples"] == 24
    assert most_mongods == 1


# ---- 5. SIGTERM to the App ----------------------------------------------------------------------
@pytest.mark.server
def test_sigterm_to_the_app_stops_every_process_of_the_project(stopped, tmp_path):
    """Acceptance 5 / items 2 and 8: `kill <pid of fieldguide app>` left mongod and the orchestrator running."""
    root, port = stopped.root, free_port()
    app_proc = start_cli("--project", str(root), "app", "--port", str(port), log=tmp_path / "app.log")
    deadline = time.time() + 240
    while time.time() < deadline:  # up: the App answers, the orchestrator and the database run
        assert app_proc.poll() is None, (tmp_path / "app.log.err").read_text()[-3000:]
        names = [" ".join(_cmdline(p)) for p in project_processes(root)]
        if any("delegated" in n for n in names) and any("mongod" in n for n in names):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
        time.sleep(1)
    else:
        pytest.fail("the App did not start: " + (tmp_path / "app.log.err").read_text()[-3000:])
    app_proc.send_signal(signal.SIGTERM)
    app_proc.wait(timeout=120)
    deadline = time.time() + 60
    while time.time() < deadline and project_processes(root):
        time.sleep(1)
    left = [" ".join(_cmdline(p))[:120] for p in project_processes(root)]
    assert left == []
    assert "Traceback" not in (tmp_path / "app.log.err").read_text()
    assert status_json(root)["samples"] == 24  # the next command works


# ---- 5. a moved or copied project -------------------------------------------------------------------
def _label_one(project) -> str:
    from fieldguide.platform import store

    ds = store.dataset(project, create=False)
    sid = ds.first().id
    store.set_labels(project, ds, {sid: "blue_bird"}, source="curator", actor="ann")
    return sid


def test_a_moved_project_keeps_its_samples_labels_and_history(ingested, tmp_path):
    """Acceptance 4 / item 5: `mv P Q` and `status` showed 0 samples; re-ingest lost the history."""
    from fieldguide.platform.store import release_database

    sid = _label_one(ingested)
    before = status_json(ingested.root)
    stop_database(ingested)
    moved = tmp_path / "elsewhere" / "moved-proj"
    moved.parent.mkdir()
    shutil.move(str(ingested.root), moved)
    after = status_json(moved)
    for key in ("samples", "classes", "splits", "per_class", "label_changes", "dataset"):
        assert after[key] == before[key], key
    assert after["label_changes"] == 1 and after["project"] == str(moved)
    # the history itself, and the warehouse's label events still name samples of the store
    moved_project = open_project(moved)
    from fieldguide.platform import store

    ds = store.dataset(moved_project, create=False)
    history = store.label_history(ds, sid)
    assert [(h["new"], h["actor"]) for h in history] == [("blue_bird", "ann")]
    events = store.warehouse(moved_project).query("SELECT sample_id FROM label_events")
    assert set(events["sample_id"]) <= set(ds.values("id"))
    # re-ingesting the same images adds nothing and keeps the history
    again = cli("--project", str(moved), "ingest", str(tmp_path / "images"))
    assert again.returncode == 0 and again.stdout.startswith("added 0, already in the store 24"), again.stdout
    release_database()


def test_a_copied_project_keeps_everything_and_takes_a_new_id_only_when_asked(ingested, tmp_path):
    """Item 5: a copy holds the same samples; `init --new-id` gives it an identity of its own."""
    _label_one(ingested)
    before = status_json(ingested.root)
    stop_database(ingested)
    copy = tmp_path / "copy"
    shutil.copytree(ingested.root, copy, ignore=shutil.ignore_patterns("*.lock", "mongod.lock"))
    same = status_json(copy)
    assert (same["samples"], same["label_changes"], same["dataset"]) == (24, 1, before["dataset"])
    renamed = cli("--project", str(copy), "init", str(copy), "--new-id")
    assert renamed.returncode == 0, renamed.stderr
    new = status_json(copy)
    assert new["dataset"] != before["dataset"] and (new["samples"], new["label_changes"]) == (24, 1)
    assert open_project(copy).config.project.id != open_project(ingested.root).config.project.id
    assert status_json(ingested.root)["dataset"] == before["dataset"]  # the original is untouched


def test_a_project_made_before_ids_keeps_its_dataset(tmp_path):
    """A fieldguide.toml without an id keeps the dataset named after its folder, pinned as its id."""
    from fieldguide.config import legacy_id

    project = init_project(tmp_path / "old", "old")
    text = project.config_path.read_text().replace(f'id = "{project.config.project.id}"\n', "")
    project.config_path.write_text(text)
    reopened = open_project(project.root)
    assert reopened.dataset_name == f"fieldguide-old-{legacy_id(project.root)}"
    assert f'id = "{legacy_id(project.root)}"' in project.config_path.read_text()


# ---- 7 and 8. project files and the config --------------------------------------------------------------
@pytest.fixture
def runner():
    return CliRunner()


def _run(runner, *args):
    result = runner.invoke(app, list(args), env={PROJECT_ENV: ""})
    return result.exit_code, result.output


def test_project_option_naming_a_file_is_one_line(runner, tmp_path):
    """Item 7: `--project` naming a file."""
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    code, out = _run(runner, "--project", str(afile), "status")
    assert code == 1
    assert_one_error_line(out, str(afile), "is a file")


def test_a_project_file_that_is_a_folder_or_not_utf8_is_one_line(runner, tmp_path):
    """Item 7: a fieldguide.toml that is a directory or not UTF-8."""
    (tmp_path / "a" / CONFIG_NAME).mkdir(parents=True)
    code, out = _run(runner, "--project", str(tmp_path / "a"), "status")
    assert code == 1 and "is a folder" in assert_one_error_line(out)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / CONFIG_NAME).write_bytes(b'[project]\nname = "caf\xe9"\n')
    code, out = _run(runner, "--project", str(tmp_path / "b"), "status")
    assert code == 1 and "not UTF-8" in assert_one_error_line(out)


def test_init_on_an_existing_file_is_one_line(runner, tmp_path):
    """Item 7: `init` on an existing file."""
    afile = tmp_path / "proj"
    afile.write_text("not a folder")
    code, out = _run(runner, "init", str(afile))
    assert code == 1 and "is a file" in assert_one_error_line(out)
    assert afile.read_text() == "not a folder"


def test_config_errors_never_echo_the_token(runner, tmp_path):
    """Item 8: config validation echoed the Label Studio token value in its error."""
    project = init_project(tmp_path / "p", "p")
    secret = "s3cr3t-token-value-0123"
    text = project.config_path.read_text().replace('token = ""', f"token = [\"{secret}\"]")
    project.config_path.write_text(text)
    code, out = _run(runner, "--project", str(project.root), "status")
    assert code == 1
    line = assert_one_error_line(out, "labelstudio.token")
    assert secret not in out and "value not shown" in line


def _without_dac_override() -> list[str]:
    """Run as root without the capability that lets root write anywhere (so modes apply)."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


def test_a_read_only_project_is_one_line_at_once(stopped, tmp_path):
    """Item 7: a read-only project: `status`, `flag`, `signals export` took ~60 s and a traceback."""
    root = stopped.root
    modes = {}
    for path in [root, *root.rglob("*")]:
        modes[path] = path.stat().st_mode
        path.chmod(modes[path] & ~0o222)
    try:
        env = {k: v for k, v in os.environ.items() if k != PROJECT_ENV}
        for *verb, says in (["status", "read-only"], ["flag", "read-only"],
                            ["signals", "export", str(tmp_path / "out.csv"), "no flag run yet"]):
            t0 = time.time()
            done = subprocess.run([*_without_dac_override(), sys.executable, "-m", "fieldguide.cli",
                                   "--project", str(root), *verb], capture_output=True, text=True, env=env,
                                  timeout=120)
            assert done.returncode == 1, (verb, done.stdout, done.stderr)
            assert_one_error_line(done.stderr, says)
            assert time.time() - t0 < 45, verb
    finally:
        for path, mode in sorted(modes.items(), key=lambda kv: len(kv[0].parts)):
            path.chmod(mode)
    assert status_json(root)["samples"] == 24


def test_runs_left_running_by_a_killed_command_are_marked_interrupted(stopped, image_folder):
    """Item 8: killed runs stayed `running` forever; the next command on the project marks them."""
    from fieldguide.platform import store

    victim = start_cli("--project", str(stopped.root), "embed", log=image_folder.parent / "embed.log")
    wh = store.warehouse(stopped)
    deadline = time.time() + 240
    while time.time() < deadline:
        running = wh.query("SELECT run_id FROM runs WHERE kind = 'embed' AND status = 'running'")
        if len(running):
            break
        assert victim.poll() is None, (image_folder.parent / "embed.log.err").read_text()
        time.sleep(0.2)
    else:
        pytest.fail("embed never started a run")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    for p in project_processes(stopped.root):  # what the killed command left behind
        p.kill()
    again = cli("--project", str(stopped.root), "ingest", str(image_folder))
    assert again.returncode == 0, again.stderr
    row = wh.query("SELECT status, message FROM runs WHERE run_id = ?", [running.iloc[0, 0]]).iloc[0]
    assert row["status"] == "interrupted" and "ended before it finished" in row["message"]
