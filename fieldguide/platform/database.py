"""The project's embedded database: FiftyOne's configuration, its mongod, and the patches of
FiftyOne's private internals that keep one project's database to itself.

FiftyOne reads its configuration when it is first imported, so :func:`configure_fiftyone` must
run before anything imports ``fiftyone`` (every function of :mod:`fieldguide.platform.store`
calls it). One process talks to one project's database at a time.

Patches of FiftyOne's private internals, tied to fiftyone ``1.22.1`` (:data:`FIFTYONE_VERSION`,
the pin in ``pyproject.toml``); they live here and nowhere else:

- ``fiftyone.core.service.DatabaseService`` is replaced by a subclass that attaches only to a
  mongod of the same ``--dbpath`` (and starts it with :data:`MONGOD_EXTRA_ARGS`); it uses the
  private ``_service_args`` and ``fiftyone.service.util.find_processes_by_args`` /
  ``send_ipc_message``, and starts FiftyOne's service process (``fiftyone/service/main.py``,
  as ``fiftyone.core.service.Service.start`` does) through :data:`SERVICE_LAUNCH`;
- ``fiftyone.core.odm.database``: ``_connect``, ``_disconnect``, ``_connection_kwargs`` (its
  ``host`` / ``port``) and ``_db_service`` are called or reset to connect, stop and move
  between projects.

:func:`check_fiftyone_version` refuses any other installed fiftyone before a patch is applied:
moving the pin means re-reading these internals in the new version and changing
:data:`FIFTYONE_VERSION` with it (a test ties the two together).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import StoreError

log = logging.getLogger(__name__)

#: the fiftyone version the patches below were written for (``pyproject.toml`` pins it)
FIFTYONE_VERSION = "1.22.1"


def check_fiftyone_version(installed: str | None = None) -> None:
    """Refuse a fiftyone other than :data:`FIFTYONE_VERSION` (default: the installed one): the
    patches of its private internals would fail in unforeseen ways, or silently share databases."""
    if installed is None:
        from importlib.metadata import version

        installed = version("fiftyone")
    if installed != FIFTYONE_VERSION:
        raise StoreError(
            f"fiftyone {installed} is installed, but fieldguide's patches of its database internals "
            f"(fieldguide/platform/database.py) are written for fiftyone {FIFTYONE_VERSION} "
            f"(install fiftyone=={FIFTYONE_VERSION})"
        )


_configured_for: str | None = None

#: FiftyOne's own database name: the one used when ``store.database_name`` is empty
DEFAULT_DATABASE_NAME = "fiftyone"


def configure_fiftyone(project: Project) -> None:
    """Point FiftyOne at the project's database (its embedded mongod's dir, or ``store.database_uri``,
    and ``store.database_name`` in it) and keep it from writing to the home dir."""
    global _configured_for
    db_dir = str(project.database_dir)
    uri = project.config.store.database_uri
    name = project.config.store.database_name or DEFAULT_DATABASE_NAME
    key = f"{uri or db_dir} {name}"
    if _configured_for == key:
        return
    check_fiftyone_version()
    settings = {
        "FIFTYONE_DATABASE_DIR": db_dir,
        "FIFTYONE_DATABASE_NAME": name,
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_SHOW_PROGRESS_BARS": os.environ.get("FIFTYONE_SHOW_PROGRESS_BARS", "true"),
        # unset, FiftyOne finds it by reading the metadata of every installed package each time it
        # loads its config (a second of CPU per mongod start); fieldguide's models are torch
        "FIFTYONE_DEFAULT_ML_BACKEND": os.environ.get("FIFTYONE_DEFAULT_ML_BACKEND", "torch"),
        "FIFTYONE_PLUGINS_DIR": str(Path(__file__).resolve().parent.parent / "plugins"),
        "FIFTYONE_MODEL_ZOO_DIR": str(project.root / "models-zoo"),
        "FIFTYONE_DATASET_ZOO_DIR": str(project.root / "datasets-zoo"),
        "FIFTYONE_DEFAULT_DATASET_DIR": str(project.root / "fiftyone-datasets"),
    }
    if uri:
        settings["FIFTYONE_DATABASE_URI"] = uri
    else:
        os.environ.pop("FIFTYONE_DATABASE_URI", None)
    # FiftyOne passes the port of the mongod it started to child processes in this variable;
    # a port inherited from another project's process would point at the wrong database.
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    os.environ.update(settings)
    if "fiftyone" in sys.modules:
        import fiftyone as fo

        fo.config.plugins_dir = settings["FIFTYONE_PLUGINS_DIR"]  # read at import: set it again
        _reconnect(db_dir, uri, name)
    _isolate_database_service()
    _connect(project)
    _configured_for = key


def _connect(project: Project) -> None:
    """Connect now, starting the project's mongod when it is down.

    Under the project's service lock: two commands started together on a stopped project start
    one mongod (the second attaches to it). A database that cannot start (a read-only project,
    no mongod, a port or lock held elsewhere) is one clear error, not a traceback.
    """
    import fiftyone.core.odm.database as fod
    import fiftyone.core.service as fos

    from fieldguide.platform.lock import service_lock

    if project.config.store.database_uri:
        try:
            fod._connect()
        except Exception as e:  # noqa: BLE001 - pymongo's many connection errors: one line
            raise StoreError(f"cannot reach the database at store.database_uri ({type(e).__name__}: {e})") from None
        return
    try:
        project.database_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the project's database folder {project.database_dir} ({e.strerror})") from None
    if not os.access(project.database_dir, os.W_OK):
        raise StoreError(
            f"project database {project.database_dir} is read-only: fieldguide's embedded MongoDB "
            "needs to write there (copy the project somewhere writable)"
        )
    with service_lock(project.root):
        try:
            fod._connect()
        except (fos.ServiceException, ConnectionError, OSError) as e:
            _stop_service()
            log_path = project.database_dir / "log" / "mongo.log"
            raise StoreError(
                f"the project's database did not start ({type(e).__name__}); see {log_path}"
            ) from None


# WiredTiger's defaults preallocate three 100 MB journal files per database: 300 MB for a
# project that may hold a few MB of labels (and for every temporary test project). Small,
# unpreallocated journal files keep the same durability (WiredTiger starts a new file when one
# is full and removes old ones after each checkpoint).
MONGOD_EXTRA_ARGS = ["--wiredTigerEngineConfigString=log=(prealloc=false,file_max=16MB)"]

#: How the service process that runs (and watches) mongod starts: FiftyOne's ``service/main.py``
#: as ``__main__``, under a bare ``fiftyone`` package. The script needs only the package's IPC
#: server, but run as a file it imports the whole of ``fiftyone`` first: seconds of CPU before
#: each mongod starts.
SERVICE_LAUNCH = (
    "import importlib.util, runpy, sys, types; "
    "package = types.ModuleType('fiftyone'); "
    "package.__path__ = list(importlib.util.find_spec('fiftyone').submodule_search_locations); "
    "sys.modules['fiftyone'] = package; "
    "runpy.run_module('fiftyone.service.main', run_name='__main__')"
)


def _isolate_database_service() -> None:
    """Make FiftyOne attach only to a mongod serving *this* database dir.

    FiftyOne's ``DatabaseService`` attaches to any running fieldguide-less FiftyOne database
    service of the same user, whatever its ``--dbpath``: two projects open at once (or a test
    run beside a project) would share one database. This subclass searches for a service whose
    command line also names the same mongod and ``--dbpath``.
    """
    import fiftyone.core.service as fos
    import fiftyone.service.util as fosu
    import psutil

    if getattr(fos.DatabaseService, "_fieldguide_isolated", False):
        return

    class ProjectDatabaseService(fos.DatabaseService):
        _fieldguide_isolated = True

        @property
        def command(self):
            return super().command + MONGOD_EXTRA_ARGS

        def start(self):
            command = self.command  # FiftyOne's loads its whole config each time
            key = self._service_args + command[:3]  # ... mongod --dbpath DIR
            for process in fosu.find_processes_by_args(key):
                try:
                    if fosu.send_ipc_message(process, ("register", os.getpid())) is True:
                        self.attached = True
                        self.child = process
                        return
                except IOError:
                    log.warning("database service %s did not respond", process.pid)
            # fos.Service.start, with SERVICE_LAUNCH for the script's path
            self.child = psutil.Popen(
                [sys.executable, "-c", SERVICE_LAUNCH, *self._service_args, *command],
                cwd=self.working_dir,
                stdin=subprocess.PIPE,
                env={**os.environ, "FIFTYONE_DISABLE_SERVICES": "1", **self.env},
            )

    fos.DatabaseService = ProjectDatabaseService


def release_database() -> None:
    """Disconnect and stop the embedded MongoDB this process started (before its folder is
    deleted, e.g. a temporary project); the next store call starts it again."""
    global _configured_for
    if "fiftyone" not in sys.modules:
        return
    _stop_service()
    _configured_for = None


def _stop_service() -> None:
    """Disconnect, stop the mongod this process started, and forget its port: the next
    connection starts (or finds) the service of whatever database dir is configured then."""
    import fiftyone.core.odm.database as fod

    fod._disconnect()
    fod._connection_kwargs.pop("port", None)
    fod._connection_kwargs.pop("host", None)
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)  # FiftyOne set it when it started mongod
    _forget_repositories()
    service = getattr(fod, "_db_service", None)
    if service is not None:
        try:
            service.stop()
        except Exception:  # noqa: BLE001 - an already-stopped service is fine
            pass
        fod._db_service = None


def _forget_repositories() -> None:
    """FiftyOne's repository factory keeps the first database handle it made (the execution store
    of panels and the delegated operations' queue): forget it with the connection, or the next
    project's panels would use a closed client."""
    import fiftyone.factory.repo_factory as repo_factory

    repo_factory._db = None
    repo_factory.RepositoryFactory.repos.clear()


def _reconnect(db_dir: str, uri: str, name: str) -> None:
    """FiftyOne was imported for another project in this process: move it to this one."""
    import fiftyone as fo

    if (fo.config.database_dir == db_dir and (fo.config.database_uri or "") == uri
            and fo.config.database_name == name):
        return
    _stop_service()
    fo.config.database_dir = db_dir
    fo.config.database_uri = uri or None
    fo.config.database_name = name
    fo.config.database_validation = False
