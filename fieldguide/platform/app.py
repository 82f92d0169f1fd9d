"""Launch the FiftyOne App on the project's dataset (or one of its saved views)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import StoreError
from fieldguide.platform import store

log = logging.getLogger(__name__)


PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"


def plugin_dir() -> Path:
    """The folder of the ``@fieldguide/curator`` plugin (add its parent to FiftyOne's plugins dir)."""
    return PLUGINS_DIR / "curator"


def start_orchestrator(project: Project, log_path: Path | None = None) -> subprocess.Popen:
    """``fiftyone delegated launch`` beside the App: it runs delegated operations (``retrain``)."""
    store.configure_fiftyone(project)  # the child inherits the project's database and plugins dir
    env = dict(os.environ, FIELDGUIDE_PROJECT=str(project.root))
    log_path = log_path or project.runs_dir / "orchestrator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fiftyone_cli = Path(sys.executable).with_name("fiftyone")
    cmd = [str(fiftyone_cli)] if fiftyone_cli.exists() else [sys.executable, "-m", "fiftyone.core.cli"]
    return subprocess.Popen([*cmd, "delegated", "launch"], env=env, stdout=log_path.open("a"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def launch_app(project: Project, *, port: int | None = None, address: str = "127.0.0.1",
               view: str | None = None, wait: bool = True, orchestrator: bool = False):
    """Serve the App on ``address:port`` (default: ``app.port``) showing the dataset or the saved ``view``.

    The App finds the ``@fieldguide/curator`` plugin (FiftyOne's plugins dir is set to the
    package's ``plugins`` folder for this process; nothing is copied to the home directory).
    With ``orchestrator`` a ``fiftyone delegated launch`` runs beside it for delegated operations.
    Returns the session (when ``wait`` is False) so a caller can close it.
    """
    ds = store.dataset(project, create=False)
    os.environ["FIELDGUIDE_PROJECT"] = str(project.root)  # the App server's operators find the project
    import fiftyone as fo

    target = ds
    if view:
        if not ds.has_saved_view(view):
            names = ", ".join(ds.list_saved_views()) or "none yet (run 'fieldguide flag')"
            raise StoreError(f"no saved view {view!r} (saved views: {names})")
        target = ds.load_saved_view(view)
    port = project.config.app.port if port is None else port
    session = fo.launch_app(target, port=port, address=address, remote=True, auto=False)
    worker = start_orchestrator(project) if orchestrator else None
    if not wait:
        return session
    # a service manager (or `kill`) stops the App with SIGTERM: leave as Ctrl-C does, so that the
    # orchestrator, the App server and the project's mongod stop with it
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        session.wait(-1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if worker is not None:
            stop_process_group(worker)
        _close_session(session)
        store.release_database()
    return session


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a child started with ``start_new_session`` and everything it started."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _close_session(session) -> None:
    """Stop the App server of ``session`` (FiftyOne's server service)."""
    try:
        session._disable_wait_warning = True
        session.close()
    except Exception as e:  # noqa: BLE001 - shutting down: log and go on stopping the rest
        log.warning("the App server did not stop cleanly: %s", e)
