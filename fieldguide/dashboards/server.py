"""Serve the dashboards: ``streamlit run app.py`` on 127.0.0.1 for one project."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from fieldguide.config import PROJECT_ENV, Project
from fieldguide.errors import FieldguideError

APP = Path(__file__).resolve().parent / "app.py"
ADDRESS = "127.0.0.1"


def command(port: int) -> list[str]:
    """The ``streamlit run`` command line (headless, no usage stats, no file watcher)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", ADDRESS,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
    ]


def url(port: int) -> str:
    return f"http://{ADDRESS}:{port}/"


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ADDRESS, port))
        except OSError:
            raise FieldguideError(
                f"port {port} on {ADDRESS} is in use (pass --port with a free one)"
            ) from None


def serve(project: Project, port: int | None = None) -> None:
    """Replace this process with the Streamlit server for ``project`` (returns only on failure).

    ``port`` defaults to ``dashboards.port``. The app finds the project through ``FIELDGUIDE_PROJECT`` and reads only its warehouse
    (read-only, one short connection per query) and the images by path.
    """
    port = project.config.dashboards.port if port is None else port
    if not 1 <= port <= 65535:
        raise FieldguideError(f"port {port} is not a TCP port (pass --port between 1 and 65535)")
    _check_port_free(port)
    env = dict(os.environ, **{PROJECT_ENV: str(project.root)})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command(port), env)


def healthy(port: int, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url(port) + "_stcore/health", timeout=timeout) as r:
            return r.read() == b"ok"
    except OSError:
        return False


def served_project(port: int) -> str | None:
    """The project folder of the dashboards listening on ``port`` (from the server process's
    environment), or None when that cannot be read (another user's process, no such server)."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid).environ().get(PROJECT_ENV)
    except (psutil.Error, OSError):
        return None
    return None


def ensure_running(project: Project, port: int | None = None, timeout_s: float = 60.0) -> str:
    """The dashboards' URL, starting ``fieldguide dashboard`` in the background when none answers
    (``port`` defaults to ``dashboards.port``)."""
    import subprocess
    import time

    port = project.config.dashboards.port if port is None else port
    if healthy(port):
        serving = served_project(port)
        if serving is not None and Path(serving).resolve() != project.root.resolve():
            raise FieldguideError(f"port {port} serves the dashboards of another project ({serving}); "
                                  "pass another port")
        return url(port)
    _check_port_free(port)
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    log = (project.runs_dir / "dashboard.log").open("a")
    subprocess.Popen([sys.executable, "-m", "fieldguide.cli", "--project", str(project.root), "dashboard",
                      "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(port):
            return url(port)
        time.sleep(0.5)
    raise FieldguideError(f"the dashboards did not start on port {port} (see {project.runs_dir / 'dashboard.log'})")
