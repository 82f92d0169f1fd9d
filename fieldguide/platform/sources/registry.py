"""The source formats by name: each module registers its reader with ``@register``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fieldguide.platform.sources.records import Record, Reject, SourceOptions
from fieldguide.registry import Registry

Reader = Callable[[Path, SourceOptions, list[Reject]], list[Record]]

# what a format reads -> (does the path fit, how to say what it needs)
_TAKES: dict[str, tuple[Callable[[Path], bool], str]] = {
    "folder": (Path.is_dir, "a folder"),
    "csv": (Path.is_file, "a CSV file"),
    "archive": (Path.exists, "a folder or a .zip file"),
}


@dataclass(frozen=True)
class SourceFormat:
    name: str
    read: Reader  # (source, options, problems) -> records; rejects and notices go to problems
    takes: str  # folder | csv | archive
    options: frozenset[str]  # the SourceOptions it reads besides ``extensions``

    def fits(self, path: Path) -> bool:
        return _TAKES[self.takes][0](path)

    @property
    def needs(self) -> str:
        return _TAKES[self.takes][1]


FORMATS: Registry[SourceFormat] = Registry("source format")


def register(name: str, *, takes: str, options: tuple[str, ...] = ()) -> Callable[[Reader], Reader]:
    """Register a reader as format ``name`` (``fieldguide ingest --format NAME``); a name taken raises
    :class:`~fieldguide.errors.DuplicateNameError`."""
    if takes not in _TAKES:
        raise ValueError(f"takes must be one of {', '.join(_TAKES)}, not {takes!r}")

    def add(read: Reader) -> Reader:
        FORMATS.add(name, SourceFormat(name, read, takes, frozenset(options)))
        return read

    return add
