"""One write lock per project: two commands never write one store or warehouse at once.

Every step that writes the store or the warehouse runs under :func:`project_lock` (the
:func:`writes` decorator on its public function): an OS file lock (``filelock``, released by
the kernel when the process dies, so a killed command never leaves the project locked) on
``PROJECT/.fieldguide.lock``. A second writer waits ``store.lock_timeout_s`` seconds, then
stops with ``project P is busy (PID n: fieldguide ingest ...)``. Readers (``status``, the
dashboards, exports) never take it. The lock is re-entrant within a process (a step that
calls another step), and the first time a process takes it, runs left ``running`` by a dead
process are marked ``interrupted``.

Starting the project's mongod has its own short lock (:func:`service_lock`), taken by readers
and writers alike, so that two commands started together on a stopped project start one
mongod, not two.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from fieldguide.errors import FieldguideError, StoreError
from fieldguide.platform.elections import is_election_error, lost_primary_message

log = logging.getLogger(__name__)

LOCK_NAME = ".fieldguide.lock"
INFO_NAME = ".fieldguide.lock.json"
SERVICE_LOCK_NAME = ".fieldguide.db.lock"


class ProjectBusyError(FieldguideError):
    """Another process holds the project's write lock."""


_checked_runs: set[str] = set()


def _file_lock(path: Path) -> FileLock:
    """One lock object per file in this process (re-entrant per thread); an OS lock (flock), never
    a marker file a killed process could leave behind on a file system without flock."""
    return FileLock(str(path), is_singleton=True, fallback_to_soft=False)


def _holder(root: Path) -> str:
    try:
        info = json.loads((root / INFO_NAME).read_text())
        return f"PID {info['pid']}: {info['command']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another fieldguide command"


def _writable(root: Path) -> None:
    if not root.is_dir():
        raise FieldguideError(f"project folder {root} does not exist")
    if not os.access(root, os.W_OK | os.X_OK):
        raise FieldguideError(
            f"project folder {root} is read-only: fieldguide needs to write its database and "
            "warehouse there (copy the project somewhere writable)"
        )


@contextlib.contextmanager
def project_lock(project, what: str, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the project's write lock for ``what`` (a verb, shown to a second writer)."""
    root = Path(project.root)
    _writable(root)
    lock = _file_lock(root / LOCK_NAME)
    wait = project.config.store.lock_timeout_s if timeout is None else timeout
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise ProjectBusyError(
            f"project {root} is busy ({_holder(root)}); try again when it has finished"
        ) from None
    except OSError as e:
        raise FieldguideError(f"project {root}: its lock file cannot be used ({e.strerror or e})") from None
    try:
        if lock.lock_counter == 1:  # the outermost hold in this thread
            command = " ".join(["fieldguide", *sys.argv[1:]]) if _is_cli() else f"fieldguide {what}"
            info = {"pid": os.getpid(), "command": command[:300],
                    "since": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
            with contextlib.suppress(OSError):
                (root / INFO_NAME).write_text(json.dumps(info))
            _mark_interrupted_once(project)
        yield
    finally:
        lock.release()


def _is_cli() -> bool:
    return bool(sys.argv) and Path(sys.argv[0]).name in ("fieldguide", "cli.py", "__main__.py")


def _mark_interrupted_once(project) -> None:
    key = str(project.root)
    if key in _checked_runs:
        return
    from fieldguide.platform.warehouse import Warehouse

    Warehouse(project.warehouse_path).mark_interrupted()
    _checked_runs.add(key)


def writes(what: str) -> Callable:
    """Decorator: the function (whose first argument is the Project) runs under the write lock.

    A lost primary of a replica-set database that its writes could not ride out
    (:mod:`fieldguide.platform.elections`) stops it with one line (a :class:`StoreError`)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(project, *args, **kwargs):
            with project_lock(project, what):
                try:
                    return fn(project, *args, **kwargs)
                except FieldguideError:
                    raise
                except Exception as e:
                    if is_election_error(e):
                        raise StoreError(lost_primary_message(what)) from e
                    raise

        return wrapper

    return deco


@contextlib.contextmanager
def service_lock(root: Path, *, timeout: float = 120.0) -> Iterator[None]:
    """Held while this process starts (or attaches to) the project's mongod."""
    root = Path(root)
    _writable(root)
    lock = _file_lock(root / SERVICE_LOCK_NAME)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:  # (a TimeoutError, so an OSError: first)
        raise ProjectBusyError(
            f"project {root}: its database did not start within {timeout:.0f} s while another "
            "command was starting it"
        ) from None
    except OSError as e:
        raise FieldguideError(f"project {root}: its lock file cannot be used ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()
