"""The export formats by name, and what a format's writer receives.

Each format module registers its writer with :func:`register_format`; adding a format is adding
one module (imported by the package ``__init__``), and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fieldguide.registry import Registry

if TYPE_CHECKING:
    import fiftyone as fo
    import pandas as pd


@dataclass
class ExportJob:
    """What a writer gets: the samples to export, as a FiftyOne view and as a table in one order.

    ``table`` has one row per sample: ``id``, ``filepath``, ``label``, ``split``, ``origin``,
    ``observation_id`` (text or None), ``width``, ``height``, ``history`` (the ``label_history``
    entries as dicts) and ``last_change`` (the last entry that changed the label, or None).
    """

    view: "fo.DatasetView"
    table: "pd.DataFrame"
    out: Path  # the folder to write into (a staging folder; it becomes DIR when the export succeeds)
    media: str | bool  # FiftyOne's export_media: "symlink", or True to copy
    classes: list[str]  # the project's class list (stable category ids)
    include_pseudo: bool  # dwca: also the label changes that accepted pseudo-labels


@dataclass(frozen=True)
class ExportFormat:
    name: str
    write: Callable[[ExportJob], int]  # writes into job.out; returns how many records it wrote
    media: bool  # writes the images (symlinks or copies): --copy applies, missing images are left out
    labeled_only: bool  # samples without a label are left out
    summary: str


FORMATS: Registry[ExportFormat] = Registry("export format")


def register_format(name: str, *, media: bool, labeled_only: bool, summary: str):
    """Decorator: register ``write(job) -> int`` as the export format ``name`` (a name taken raises
    :class:`~fieldguide.errors.DuplicateNameError`)."""

    def wrap(write: Callable[[ExportJob], int]) -> Callable[[ExportJob], int]:
        FORMATS.add(name, ExportFormat(name, write, media, labeled_only, summary))
        return write

    return wrap
