"""``[labelstudio.database] engine = "postgresql"``: the project's own Label Studio on a team's
PostgreSQL. A real PostgreSQL server (the OS package's ``initdb`` and ``pg_ctl``) in a temporary
folder on a free port of 127.0.0.1, a database and a user with a password; then a real Label
Studio started by fieldguide against it (its first start migrates PostgreSQL), a push, an
answer, a pull, what PostgreSQL holds, and a restart that keeps it all.

PostgreSQL refuses to run as root: as root (CI) the server runs as the ``postgres`` user (made by
Debian's package), else as the user running the tests.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CLASS_COLORS, free_port, make_image
from fieldguide.cli import app
from fieldguide.config import dump_config, init_project, open_project
from fieldguide.config.sections import LabelStudioDatabase
from fieldguide.errors import ServiceError
from fieldguide.platform import labelstudio as ls
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from fieldguide.platform.labelstudio.server import LOG_FILE, STATE_FILE

PASSWORD_ENV = "FIELDGUIDE_TEST_LS_DB_PASSWORD"


# ---- a real PostgreSQL server ---------------------------------------------------------------
def _postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries of the OS package (``/usr/lib/postgresql/N/bin``)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
             if Path(p).with_name("initdb").exists() and Path(p).with_name("postgres").exists()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _as_server_user(args: list[str]) -> tuple[list[str], str]:
    """``args`` run as the user PostgreSQL runs as (``postgres`` when we are root), and that user."""
    if os.geteuid() != 0:
        return args, pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as "
                    "(install Debian's postgresql package: make test does)")
    return ["runuser", "-u", "postgres", "--", *args], "postgres"


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 (password logins only), a database and its owner.

    Yields a dict: host, port, name, user, password, and ``admin`` (a superuser's connect kwargs).
    The server is stopped and its folder removed at the end.
    """
    import psycopg

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                    "(Debian: apt-get install postgresql; make test installs it)")
    # a folder the server's user owns, outside pytest's root-only tmp dirs
    area = Path(tempfile.mkdtemp(prefix="fieldguide-pg-"))
    _, user = _as_server_user([])
    entry = pwd.getpwnam(user)
    os.chown(area, entry.pw_uid, entry.pw_gid)
    admin_password = secrets.token_urlsafe(12)
    pwfile = area / "admin-password"
    pwfile.write_text(admin_password)
    os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    data, port = area / "data", free_port()
    started = False
    try:
        _run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "admin", "-E", "UTF8",
                              "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                              "--no-sync"])[0], "initdb")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={area} "
                   "-c fsync=off -c shared_buffers=32MB -c max_connections=50")
        _run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(area / "server.log"),
                              "-o", options, "-w", "-t", "60", "start"])[0], "pg_ctl start")
        started = True
        admin = {"host": "127.0.0.1", "port": port, "user": "admin", "password": admin_password,
                 "dbname": "postgres"}
        db = {"host": "127.0.0.1", "port": port, "name": "fg_labels", "user": "fg_curators",
              "password": secrets.token_urlsafe(16), "admin": admin}
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {db['user']} LOGIN PASSWORD '{db['password']}'")
            conn.execute(f"CREATE DATABASE {db['name']} OWNER {db['user']}")
        yield db
    finally:
        try:
            if started or (data / "postmaster.pid").exists():  # also a start that timed out
                _run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])[0],
                     "pg_ctl stop")
        finally:
            shutil.rmtree(area, ignore_errors=True)


def _query(db: dict, sql: str, *params) -> list[tuple]:
    """Rows straight from PostgreSQL, as Label Studio's own user."""
    import psycopg

    with psycopg.connect(host=db["host"], port=db["port"], dbname=db["name"], user=db["user"],
                         password=db["password"]) as conn:
        return conn.execute(sql, params).fetchall()


def _on_postgres(project, db: dict, **changes):
    """``project`` with ``[labelstudio.database]`` pointing at ``db`` (the password by environment)."""
    project.config.labelstudio.database = LabelStudioDatabase(
        engine="postgresql", host=db["host"], port=db["port"], name=db["name"], user=db["user"],
        password_env=PASSWORD_ENV, **changes)
    project.config_path.write_text(dump_config(project.config))
    return open_project(project.root)


def _cli(project, *args: str):
    return CliRunner().invoke(app, ["-p", str(project.root), *args])


# ---- the project and its Label Studio on PostgreSQL ------------------------------------------------
@pytest.fixture(scope="module")
def password_in_env(postgres):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PASSWORD_ENV, postgres["password"])
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres, password_in_env):
    """A tiny project (2 train images a class) whose own Label Studio keeps its data in ``postgres``."""
    area = tmp_path_factory.mktemp("lspg")
    seed = 700
    for cls, color in CLASS_COLORS.items():
        for i in range(2):
            seed += 1
            make_image(area / "images" / "train" / cls / f"{cls}_{i}.jpg", color, seed=seed)
    project = _on_postgres(init_project(area / "proj", "lspg"), postgres)
    ingest(project, area / "images", fmt="folder")
    try:
        info = ls.start(project, port=free_port(), timeout_s=600)  # the first start migrates PostgreSQL
        assert info.running
        yield project
    finally:
        ls.stop(project)
        store.release_database()
    assert not ls.status(project).running


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


@pytest.mark.server
@pytest.mark.slow
def test_label_studio_keeps_tasks_and_answers_in_postgres_across_a_restart(server, postgres):
    from label_studio_sdk import LabelStudio

    project, db = server, postgres
    where = f"postgresql://{db['user']}@127.0.0.1:{db['port']}/{db['name']}"
    status = _cli(project, "labelstudio", "status")
    assert status.exit_code == 0, status.output
    assert status.output.splitlines()[1] == f"database: {where}"
    assert db["password"] not in status.output
    assert ls.status(project).database == where
    state_text = (project.labelstudio_dir / STATE_FILE).read_text()
    assert json.loads(state_text)["database"] == where and db["password"] not in state_text
    assert db["password"] not in (project.labelstudio_dir / LOG_FILE).read_text()
    assert not (project.labelstudio_dir / "label_studio.sqlite3").exists()  # no SQLite beside it

    # push three samples, answer one with another class, pull it back
    ds = store.dataset(project, create=False)
    ids = sorted(ds.values("id"))[:3]
    given = dict(zip(*ds.select(ids).values(["id", "ground_truth.label"])))
    report = ls.push(project, sample_ids=ids)
    assert report.pushed == 3
    conn = ls.connection(project)
    sdk = LabelStudio(base_url=conn.url, api_key=conn.token)
    tasks = {t.data["sample_id"]: t.id for t in sdk.tasks.list(project=report.project_id, fields="all")}
    assert set(tasks) == set(ids)
    sid = ids[0]
    new = sorted(set(CLASS_COLORS) - {given[sid]})[0]
    sdk.annotations.create(tasks[sid], result=_choice(new))
    pulled = ls.pull(project)
    assert (pulled.applied, pulled.changed) == (1, 1)
    ds.reload()
    assert ds[sid].ground_truth.label == new

    # the project, its tasks and the answer are rows of PostgreSQL
    assert _query(db, "SELECT id FROM project WHERE title = %s", ls.project_title(project)) == [(report.project_id,)]
    rows = _query(db, "SELECT id, data->>'sample_id' FROM task WHERE project_id = %s", report.project_id)
    assert {sample_id: task_id for task_id, sample_id in rows} == tasks
    answers = _query(db, "SELECT task_id, result FROM task_completion WHERE project_id = %s", report.project_id)
    assert len(answers) == 1 and answers[0][0] == tasks[sid]
    assert answers[0][1][0]["value"]["choices"] == [new]

    # a restart keeps them: the same tasks and answer, nothing applied twice
    assert ls.stop(project) is True
    assert not ls.status(project).running
    info = ls.start(project, port=free_port(), timeout_s=600)
    assert info.running and info.database == where
    conn = ls.connection(project)
    sdk = LabelStudio(base_url=conn.url, api_key=conn.token)
    again = {t.data["sample_id"]: t for t in sdk.tasks.list(project=report.project_id, fields="all")}
    assert {s: t.id for s, t in again.items()} == tasks
    assert [a["result"][0]["value"]["choices"] for a in again[sid].annotations] == [[new]]
    assert ls.push(project, sample_ids=ids).already_pushed == 3
    assert ls.pull(project).applied == 0
    assert len(_query(db, "SELECT id FROM task WHERE project_id = %s", report.project_id)) == 3


# ---- errors in one line, before any server starts -------------------------------------------------
def _one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_an_unreachable_database_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not-shown-anywhere")
    port = free_port()  # nothing listens there
    db = {"host": "127.0.0.1", "port": port, "name": "labels", "user": "curators"}
    project = _on_postgres(init_project(tmp_path / "proj", "lost"), db)
    t0 = time.monotonic()
    line = _one_error_line(_cli(project, "labelstudio", "start", "--port", str(free_port())))
    assert time.monotonic() - t0 < 30  # no hang: the check gives up, no server is left to time out
    assert line.startswith(f"error: cannot use Label Studio's database postgresql://curators@127.0.0.1:{port}/labels "
                           "(labelstudio.database): "), line
    assert "not-shown-anywhere" not in line
    assert not (project.labelstudio_dir / STATE_FILE).exists()  # nothing was started
    assert not ls.status(project).running


def test_a_wrong_password_is_one_error_line(tmp_path, monkeypatch, postgres):
    monkeypatch.setenv(PASSWORD_ENV, "wrong-" + postgres["password"])
    project = _on_postgres(init_project(tmp_path / "proj", "wrongpw"), postgres)
    line = _one_error_line(_cli(project, "labelstudio", "start", "--port", str(free_port())))
    assert f"postgresql://{postgres['user']}@127.0.0.1:{postgres['port']}/{postgres['name']}" in line
    assert "password authentication failed" in line and postgres["password"] not in line
    monkeypatch.delenv(PASSWORD_ENV)  # neither a password nor its variable: the error says so
    with pytest.raises(ServiceError, match="no password set"):
        ls.start(project, port=free_port())
    assert not (project.labelstudio_dir / STATE_FILE).exists()


def test_bad_database_settings_are_one_error_line(tmp_path):
    project = init_project(tmp_path / "proj", "bad")
    text = project.config_path.read_text()
    cases = [
        (text.replace('engine = "sqlite"', 'engine = "mysql"'), "'labelstudio.database.engine'"),
        (text.replace("port = 5432", "port = 70000"), "'labelstudio.database.port'"),
        (text.replace('engine = "sqlite"', 'engine = "postgresql"').replace('password = ""', 'password = "s3cret-pw"'),
         "'labelstudio.database': Value error, engine 'postgresql' needs host, name, user"),
        # a connection URI pasted into host: its password is never echoed back
        (text.replace('engine = "sqlite"', 'engine = "postgresql"').replace('host = ""', 'host = "postgres://u:s3cret-pw@db"'),
         "'labelstudio.database.host'"),
    ]
    for bad, expected in cases:
        assert bad != text
        project.config_path.write_text(bad)
        line = _one_error_line(_cli(project, "labelstudio", "status"))
        assert expected in line and "s3cret-pw" not in line, line


def test_the_database_section_round_trips_and_never_shows_the_password(tmp_path):
    project = init_project(tmp_path / "proj", "rt")
    assert project.config.labelstudio.database.engine == "sqlite"  # today's behaviour by default
    assert "[labelstudio.database]" in project.config_path.read_text()
    project = _on_postgres(project, {"host": "db.example.org", "port": 6543, "name": "ls", "user": "team"},
                           password="s3cret-pw")
    section = project.config.labelstudio.database
    assert (section.engine, section.host, section.port, section.password) == (
        "postgresql", "db.example.org", 6543, "s3cret-pw")
    assert section.where() == "postgresql://team@db.example.org:6543/ls"
    assert "s3cret-pw" not in repr(project.config)
