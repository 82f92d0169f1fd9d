"""What a source reader hands to ingest: records, rejects and notices, and the options it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
               "unlabeled": "unlabeled", "unlabelled": "unlabeled"}


@dataclass
class Record:
    """One image of a source: its file, label, split, observation fields and taxonomy."""

    filepath: Path
    label: str | None
    split: str
    fields: dict = field(default_factory=dict)
    taxonomy: dict[str, str] = field(default_factory=dict)  # rank -> name, coarse to fine
    label_rank: str | None = None  # the rank of ``label`` in ``taxonomy``, when known


@dataclass
class Reject:
    """A row or file that was not ingested, and why (one per path)."""

    path: str
    reason: str

    def __post_init__(self):
        self.path, self.reason = printable(str(self.path)), printable(self.reason)


@dataclass
class Notice(Reject):
    """A decision on something ingested or kept, e.g. a label in the source that the store differs from."""


@dataclass(frozen=True)
class SourceOptions:
    """The options of ``fieldguide ingest`` that readers use; each format reads the ones it needs."""

    extensions: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
    filepath_column: str = "filepath"  # csv: the column with the image path
    label_column: str = "label"  # csv: the column with the label
    root: Path | None = None  # csv: relative paths resolve against it (default: the CSV's folder)
    images: Path | None = None  # inat, dwca: the photos, named <id> or <id>_<k> (default: the source's folder)
    label_rank: str | None = None  # inat, dwca: the rank that is the label; csv: the label column's rank
    ranks: tuple[str, ...] = ()  # csv: the columns holding the ranks above the label, coarse to fine


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the undecodable bytes of a file name shown as ``\\xff``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(name: str) -> bool:
    """False for a file name whose bytes are not UTF-8 (Python keeps them as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_image(path: Path, extensions: frozenset[str] | set[str]) -> bool:
    return path.suffix.lower() in extensions and path.is_file()
