"""The export's folder: checked before anything is read, written whole or not at all.

The formats write into a staging folder inside DIR; only when the whole export succeeded does
its content replace DIR's (an earlier export, with ``--overwrite``). A failed export leaves DIR as
it was (and removes DIR when the export created it). Every export holds :data:`MARKER`, a JSON
record of what it holds; ``--overwrite`` replaces only a folder that holds one, so a mistyped DIR
never deletes someone's files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fieldguide.errors import ExportError

MARKER = ".fieldguide-export.json"
STAGING_PREFIX = ".fieldguide-export.tmp-"


def check_target(out: Path, *, overwrite: bool, project_root: Path) -> None:
    """Raise :class:`ExportError` unless ``out`` is a new or empty folder we may write, or (with
    ``overwrite``) an earlier export. Writes nothing."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file: give a folder to export into")
    if project_root.resolve().is_relative_to(out.resolve()):
        raise ExportError(f"{out} holds the project {project_root}: export into another folder")
    if _contents(out):
        if not overwrite:
            raise ExportError(f"{out} is not empty (use --overwrite to replace an earlier export, or a new folder)")
        if not (out / MARKER).is_file():
            raise ExportError(f"{out} is not empty and holds no fieldguide export: --overwrite replaces only "
                              "an earlier export (empty it or choose a new folder)")
    nearest = next(p for p in (out, *out.parents) if p.exists())
    if not nearest.is_dir():
        raise ExportError(f"cannot write {out}: {nearest} is a file, not a folder (choose another folder)")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {out}: {nearest} is read-only or not yours (choose another folder)")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder inside ``out``; on success its content replaces ``out``'s."""
    created = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f"{STAGING_PREFIX}{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed export of this pid number
        staging.mkdir()
    except OSError as e:
        raise ExportError(_cannot_write(out, e)) from None
    try:
        yield staging
        _publish(staging, out)
    except OSError as e:  # the disk filled up, an image vanished, ...
        _discard(staging, created)
        raise ExportError(_cannot_write(out, e)) from None
    except BaseException:
        _discard(staging, created)
        raise


def write_marker(folder: Path, record: dict) -> None:
    (folder / MARKER).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def _contents(out: Path) -> list[Path]:
    """What ``out`` holds, staging folders of killed exports aside."""
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if not p.name.startswith(STAGING_PREFIX)]


def _publish(staging: Path, out: Path) -> None:
    """Replace ``out``'s content (an earlier export, stale staging folders) with ``staging``'s."""
    for old in out.iterdir():
        if old != staging:
            _remove(old)
    for new in staging.iterdir():
        new.rename(out / new.name)
    staging.rmdir()


def _discard(staging: Path, created: Path | None) -> None:
    shutil.rmtree(created if created is not None else staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _cannot_write(out: Path, error: OSError) -> str:
    if isinstance(error, PermissionError):
        return f"cannot write {out}: permission denied (choose another folder); nothing was written"
    return f"cannot write {out}: {error.strerror or error} (choose another folder); nothing was written"
