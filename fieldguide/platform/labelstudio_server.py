"""The project's own Label Studio server: start, stop, status, and how to reach a server.

The local server is a real ``label-studio`` (1.23.x) process bound to 127.0.0.1, its data
dir (SQLite database, media, a private ``HOME``) under ``PROJECT/labelstudio``; nothing goes
to the user's home dir. A user and an API token are created non-interactively on first start
and kept in ``labelstudio/credentials.json`` (mode 0600); the token is never printed or
logged.

Images are served in place through Label Studio's local-files storages. The document root
(the parent of the folder holding the images, or ``labelstudio.files_root``) only says how
``/data/local-files/?d=...`` paths are spelled: Label Studio serves a file only when it lies
under one of its local storages. :func:`served_folders` picks those storages: the folders
holding the images, collapsed to a few common folders, none of which holds the project
folder (its credentials, database, warehouse and config). Older Label Studio versions match
a storage by string prefix (storage ``/data/pro`` also serves ``/data/project``), so a
storage that is a string prefix of a project path counts as holding it.

A team can instead point at its own server: ``labelstudio.url`` in fieldguide.toml and the
token in the environment variable named by ``labelstudio.token_env`` (or ``labelstudio.token``).
:func:`connection` resolves either into a :class:`Connection`.
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
from collections.abc import Iterable, Sequence
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import ServiceError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "server.json"
CREDENTIALS_FILE = "credentials.json"
LOG_FILE = "server.log"
# Label Studio refuses a local storage equal to its document root; "/" is its own default.
DEFAULT_DOCUMENT_ROOT = "/"

_LAUNCH = (
    "import sys; from label_studio.server import main; "
    "sys.argv[0] = 'label-studio'; sys.exit(main())"
)


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where a Label Studio server is and how to authenticate; ``repr`` hides the token."""

    url: str
    token: str = dataclasses.field(repr=False)
    document_root: str
    local: bool
    timeout_s: float = 30.0
    retries: int = 3


@dataclasses.dataclass
class ServerStatus:
    running: bool
    url: str | None = None
    pid: int | None = None
    data_dir: str | None = None
    document_root: str | None = None
    images_root: str | None = None
    username: str | None = None
    log: str | None = None
    started: str | None = None
    message: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- files under PROJECT/labelstudio ------------------------------------------------------
def _state_path(project: Project) -> Path:
    return project.labelstudio_dir / STATE_FILE


def _read_state(project: Project) -> dict | None:
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
    ``relabel.listen`` makes its own (see :mod:`fieldguide.platform.relabel`).
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


def images_root(project: Project) -> Path:
    """The folder holding all of the project's images (with no dataset yet, the project folder)."""
    from fieldguide.platform import store

    store.configure_fiftyone(project)
    import fiftyone as fo

    if not fo.dataset_exists(project.dataset_name):
        return project.root
    paths = store.dataset(project, create=False).values("filepath")
    if not paths:
        return project.root
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths]))


def protected_paths(project: Project) -> list[Path]:
    """What Label Studio must never serve: the project folder and what holds its secrets."""
    own = [project.root, project.labelstudio_dir, project.database_dir, project.warehouse_path,
           project.config_path]
    return sorted({q for p in own for q in (Path(os.path.abspath(p)), Path(p).resolve())})


def serves(folder: Path | str, path: Path | str) -> bool:
    """Would a local storage at ``folder`` serve ``path``? (a string prefix, as older Label Studio)"""
    return str(path).startswith(str(folder).rstrip(os.sep))


def storage_problem(folder: Path | str, *, document_root: Path | str, protected: Sequence[Path]) -> str | None:
    """Why a local storage at ``folder`` must not be made (one line), or None when it may."""
    folder, root = Path(os.path.abspath(folder)), Path(os.path.abspath(document_root))
    leaks = [p for p in protected if serves(folder, p)]
    if leaks:
        return (f"images in {folder} share a folder with the project's own files ({leaks[0]}): Label "
                "Studio would serve those too; move the images into a folder of their own")
    if root not in folder.parents:
        return (f"images in {folder} are not below the Label Studio server's file root {root}: restart "
                "the project's server ('fieldguide labelstudio stop', then 'start') or set labelstudio.files_root")
    return None


def holds_only(folder: Path, image_dirs: set[Path], on_the_way: set[Path]) -> bool:
    """Whether everything under ``folder`` is an image folder or a folder on the way to one.

    A file, or a folder that leads to no image folder (``.ssh``, someone's documents), means
    ``folder`` would serve more than the images.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for entry in entries:
        path = Path(entry.path)
        if not entry.is_dir(follow_symlinks=False):
            return False
        if path in image_dirs:
            continue
        if path not in on_the_way or not holds_only(path, image_dirs, on_the_way):
            return False
    return True


def served_folders(image_dirs: Iterable[Path | str], *, document_root: Path | str,
                   protected: Sequence[Path]) -> list[Path]:
    """The local storages that serve ``image_dirs``: few folders, none serving a ``protected`` path.

    The common folder of the images when it may be a storage (:func:`storage_problem`) and holds
    nothing but the image folders (:func:`holds_only`), else the common folder of each of its
    subfolders that hold images, and so on down to the image folders themselves: images in
    ``~/Pictures/a`` and ``~/Downloads/b`` are two storages, never ``~``. Raises
    :class:`ServiceError` when a folder holding images may not itself be a storage.
    """
    dirs = sorted({Path(os.path.abspath(d)) for d in image_dirs})
    for d in dirs:
        problem = storage_problem(d, document_root=document_root, protected=protected)
        if problem:
            raise ServiceError(problem)
    image_set = set(dirs)
    on_the_way = {a for d in dirs for a in d.parents}

    def split(group: list[Path]) -> list[Path]:
        top = Path(os.path.commonpath(group))
        if top in image_set or (
            not storage_problem(top, document_root=document_root, protected=protected)
            and holds_only(top, image_set, on_the_way)
        ):
            return [top]
        groups: dict[str, list[Path]] = {}
        for d in group:
            groups.setdefault(d.relative_to(top).parts[0], []).append(d)
        return [f for sub in groups.values() for f in split(sub)]

    return sorted(split(dirs)) if dirs else []


def start(project: Project, *, port: int | None = None, timeout_s: float = 300.0) -> ServerStatus:
    """Start the project's Label Studio on 127.0.0.1 and wait until ``/health`` answers.

    Re-running while it runs returns its status. The first start runs the database
    migrations (a minute or two on a small machine); later starts are faster.
    """
    import importlib.util

    if project.config.labelstudio.url:
        raise ServiceError(
            f"labelstudio.url is set ({project.config.labelstudio.url}): this project uses that "
            "server; clear labelstudio.url in fieldguide.toml to run the project's own"
        )
    current = status(project)
    if current.running:
        return current
    if importlib.util.find_spec("label_studio") is None:
        raise ServiceError("label-studio is not installed (pip install 'fieldguide[labelstudio]')")
    port = port or project.config.labelstudio.port
    if _port_in_use(port):
        raise ServiceError(
            f"port {port} on {HOST} is already in use (pass --port or set labelstudio.port)"
        )
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
    state = _read_state(project)
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
    state = _read_state(project)
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
        username=creds_user, log=str(project.labelstudio_dir / LOG_FILE), started=state.get("started"),
        message="running" if running else "not answering (run 'fieldguide labelstudio stop' then 'start')",
    )


def connection(project: Project) -> Connection:
    """How to reach this project's Label Studio: the configured one, else the local server.

    Raises :class:`ServiceError` (one line) when there is no token or no local server.
    """
    ls = project.config.labelstudio
    if ls.url:
        token = ls.token or os.environ.get(ls.token_env, "")
        if not token:
            raise ServiceError(
                f"no API token for Label Studio at {ls.url}: set the environment variable "
                f"{ls.token_env} (labelstudio.token_env) to your token"
            )
        return Connection(
            url=ls.url.rstrip("/"), token=token,
            document_root=str(Path(ls.files_root or DEFAULT_DOCUMENT_ROOT).expanduser()),
            local=False, timeout_s=ls.timeout_s, retries=ls.retries,
        )
    state = _read_state(project)
    if not state:
        raise ServiceError(
            "the project's Label Studio server is not running (start it with 'fieldguide labelstudio start')"
        )
    token = credentials(project)["token"]
    return Connection(
        url=state["url"], token=token, document_root=state["document_root"], local=True,
        timeout_s=ls.timeout_s, retries=ls.retries,
    )
