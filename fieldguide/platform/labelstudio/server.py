"""The project's own Label Studio server: start, stop, status.

The local server is a real ``label-studio`` (1.23.x) process bound to 127.0.0.1, its data
dir (SQLite database, media, a private ``HOME``) under ``PROJECT/labelstudio``; nothing goes
to the user's home dir. With ``[labelstudio.database] engine = "postgresql"`` its database is a
team's PostgreSQL instead (see :mod:`.database`); the rest stays in the data dir. A user and an
API token are created non-interactively on first start and kept in
``labelstudio/credentials.json`` (mode 0600); the token is never printed or logged.

Label Studio serves the images in place from local-files storages under a document root
picked at start (see :mod:`.storages`).

How fieldguide reaches this server, or a team's own, is :func:`.client.connection`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import ServiceError
from fieldguide.platform.labelstudio.database import check as check_database, describe as describe_database
from fieldguide.platform.labelstudio.database import server_env as database_env
from fieldguide.platform.labelstudio.storages import DEFAULT_DOCUMENT_ROOT, images_root

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "server.json"
CREDENTIALS_FILE = "credentials.json"
LOG_FILE = "server.log"

_LAUNCH = (
    "import sys; from label_studio.server import main; "
    "sys.argv[0] = 'label-studio'; sys.exit(main())"
)


@dataclasses.dataclass
class ServerStatus:
    running: bool
    url: str | None = None
    pid: int | None = None
    data_dir: str | None = None
    document_root: str | None = None
    images_root: str | None = None
    username: str | None = None
    database: str | None = None  # sqlite PATH | postgresql://user@host:port/name (never the password)
    log: str | None = None
    started: str | None = None
    message: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- files under PROJECT/labelstudio ------------------------------------------------------
def _state_path(project: Project) -> Path:
    return project.labelstudio_dir / STATE_FILE


def read_state(project: Project) -> dict | None:
    """What :func:`start` recorded in ``server.json`` (pid, url, document root), or None."""
    try:
        return json.loads(_state_path(project).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_private(path: Path, data: dict) -> None:
    """Write JSON readable by the owner only (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def credentials(project: Project) -> dict:
    """The local server's user, password and API token (made on first use).

    A ``webhook_secret`` left by older versions is kept but no longer used: each
    :func:`.webhook.listen` makes its own (see :mod:`fieldguide.platform.labelstudio.webhook`).
    """
    path = project.labelstudio_dir / CREDENTIALS_FILE
    try:
        creds = json.loads(path.read_text())
    except FileNotFoundError:
        creds = {}
    except json.JSONDecodeError:
        raise ServiceError(f"{path} is not valid JSON (delete it and the labelstudio/ folder to start over)") from None
    wanted = {
        "username": project.config.labelstudio.username,
        "password": secrets.token_urlsafe(18),
        "token": secrets.token_hex(20),
    }
    missing = {k: v for k, v in wanted.items() if not creds.get(k)}
    if missing:
        creds.update(missing)
        _write_private(path, creds)
    return creds


# ---- processes ----------------------------------------------------------------------------
def _alive(pid: int | None) -> bool:
    """True when ``pid`` is a running (not zombie) Label Studio process."""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has exited
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if (proc / "stat").read_text().split(")")[-1].split()[0] == "Z":
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return b"label_studio" in cmdline or b"label-studio" in cmdline
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return _alive(pgid) or _any_in_group(pgid)


def _any_in_group(pgid: int) -> bool:
    """Any non-zombie process in the group (Linux /proc; elsewhere trust killpg)."""
    proc = Path("/proc")
    if not proc.exists():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().split(")")[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def health(url: str, timeout: float = 3.0) -> bool:
    """True when ``url/health`` answers 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(project: Project, *, port: int | None = None, timeout_s: float = 300.0) -> ServerStatus:
    """Start the project's Label Studio on 127.0.0.1 and wait until ``/health`` answers.

    Re-running while it runs returns its status, its message "already running" (it starts
    nothing, whatever ``port`` says). The first start runs the database migrations (a minute
    or two on a small machine); later starts are faster.
    """
    import importlib.util

    if project.config.labelstudio.url:
        raise ServiceError(
            f"labelstudio.url is set ({project.config.labelstudio.url}): this project uses that "
            "server; clear labelstudio.url in fieldguide.toml to run the project's own"
        )
    current = status(project)
    if current.running:
        return dataclasses.replace(current, message="already running")
    if importlib.util.find_spec("label_studio") is None:
        raise ServiceError("label-studio is not installed (pip install 'fieldguide[labelstudio]')")
    port = port or project.config.labelstudio.port
    if _port_in_use(port):
        raise ServiceError(
            f"port {port} on {HOST} is already in use (pass --port or set labelstudio.port)"
        )
    check_database(project)  # PostgreSQL: log in once, or one line naming host:port/db
    data_dir = project.labelstudio_dir
    home = data_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if project.config.labelstudio.files_root:
        document_root = Path(project.config.labelstudio.files_root).expanduser().resolve()
        root = document_root
    else:
        root = images_root(project)
        document_root = root.parent if root.parent != root else root
    creds = credentials(project)
    env = dict(os.environ)
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": creds["username"],
            "LABEL_STUDIO_PASSWORD": creds["password"],
            "LABEL_STUDIO_USER_TOKEN": creds["token"],
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES": "false",
            # bound to 127.0.0.1 only; lets it call the webhook listener on 127.0.0.1
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_FEATURE_FLAGS_OFFLINE": "true",
            "LABEL_STUDIO_LOG_LEVEL": "WARNING",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_HOST", "LABEL_STUDIO_PORT", "DJANGO_SETTINGS_MODULE"):
        env.pop(key, None)
    database_env(project, env)
    args = [
        sys.executable, "-c", _LAUNCH, "start",
        "--no-browser", "--internal-host", HOST, "--port", str(port),
        "--data-dir", str(data_dir), "--enable-legacy-api-token",
        "--debug",  # keeps Label Studio from silently moving to another port when busy
        "--log-level", "WARNING",
    ]
    log_path = data_dir / LOG_FILE
    t0 = time.monotonic()
    with open(log_path, "ab") as logf:
        logf.write(f"\n==== start {time.strftime('%Y-%m-%d %H:%M:%S')} port {port}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            args, cwd=str(data_dir), env=env, stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    state = {
        "pid": proc.pid,
        "pgid": proc.pid,
        "port": port,
        "url": url,
        "document_root": str(document_root),
        "images_root": str(root),
        "database": describe_database(project),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_private(_state_path(project), state)
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            _state_path(project).unlink(missing_ok=True)
            raise ServiceError(
                f"Label Studio exited during start (exit code {code}); see {log_path}"
            )
        if health(url, timeout=2.0):
            log.info("Label Studio up at %s after %.1f s", url, time.monotonic() - t0)
            return status(project)
        time.sleep(0.5)
    _stop_group(proc.pid)
    _state_path(project).unlink(missing_ok=True)
    raise ServiceError(
        f"Label Studio did not answer {url}/health within {timeout_s:.0f} s (stopped it); see {log_path}"
    )


def _stop_group(pgid: int, grace_s: float = 15.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
    if _group_alive(pgid):
        raise ServiceError(f"Label Studio process group {pgid} did not stop (kill it by hand)")


def stop(project: Project) -> bool:
    """Stop the project's server and its whole process group; False when none was running."""
    state = read_state(project)
    if not state:
        return False
    pgid = int(state.get("pgid") or state.get("pid") or 0)
    was_running = _alive(int(state.get("pid") or 0))
    if was_running and pgid:
        _stop_group(pgid)
    _state_path(project).unlink(missing_ok=True)
    return was_running


def status(project: Project) -> ServerStatus:
    """Is the project's server running, where, and who logs in (never the token)."""
    ls = project.config.labelstudio
    if ls.url:
        up = health(ls.url)
        return ServerStatus(
            running=up, url=ls.url, document_root=ls.files_root or DEFAULT_DOCUMENT_ROOT,
            message="your own server" + ("" if up else " (not answering /health)"),
        )
    state = read_state(project)
    data_dir = str(project.labelstudio_dir)
    creds_user = ls.username
    if not state:
        return ServerStatus(running=False, data_dir=data_dir, username=creds_user,
                            message="not running (start it with 'fieldguide labelstudio start')")
    pid = int(state.get("pid") or 0)
    running = _alive(pid) and health(state["url"])
    return ServerStatus(
        running=running, url=state.get("url"), pid=pid, data_dir=data_dir,
        document_root=state.get("document_root"), images_root=state.get("images_root"),
        username=creds_user, database=state.get("database") or describe_database(project),
        log=str(project.labelstudio_dir / LOG_FILE), started=state.get("started"),
        message="running" if running else "not answering (run 'fieldguide labelstudio stop' then 'start')",
    )
