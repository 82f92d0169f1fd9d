"""``fieldguide export``: the current labels out of the store, in a format other tools read.

What is exported: each sample's accepted ``ground_truth`` with its ``origin`` (and, for csv and
dwca, its label history), of the whole dataset, a saved view or a split. Pseudo-labels (samples
of origin ``pseudo`` or whose label came from accepting a pseudo-label) and synthetic images are
left out unless asked for; formats that write images leave out samples without a label and
samples whose image is missing. The report counts what was left out and why.

Formats live in a registry (:data:`FORMATS`, one module each): ``csv``, ``imagenet``,
``fiftyone``, ``coco``, ``dwca``. Images are symlinked (default) or copied (``copy=True``).

Everything is checked before anything is written (format, split, saved view, the folder); the
export is written into a staging folder and replaces DIR's content only when it is complete.
An export reads the store: it takes no project lock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import ExportError
from fieldguide.platform import store
# each format module registers itself on import: imported in the order the formats are listed
from fieldguide.platform.exports import labels_csv  # isort: skip
from fieldguide.platform.exports import fiftyone_formats  # isort: skip
from fieldguide.platform.exports import coco  # isort: skip
from fieldguide.platform.exports import dwca  # isort: skip
from fieldguide.platform.exports.output import check_target, staged, write_marker
from fieldguide.platform.exports.registry import FORMATS, ExportFormat, ExportJob
from fieldguide.platform.exports.selection import export_table, leave_out, select_view
from fieldguide.platform.warehouse import now

__all__ = ["FORMATS", "ExportReport", "export"]

_FORMAT_MODULES = (labels_csv, fiftyone_formats, coco, dwca)  # imported for their registrations


@dataclass
class ExportReport:
    format: str
    directory: str
    exported: int  # samples in the export
    records: int  # records written: rows, images, or (dwca) identifications
    media: str | None  # "symlink", "copy", or None for formats that write no images
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> samples (see LEFT_OUT_REASONS)
    view: str | None = None
    split: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def export(project: Project, directory: str | Path, *, fmt: str, view: str | None = None,
           split: str | None = None, copy: bool = False, include_pseudo: bool = False,
           include_synthetic: bool = False, overwrite: bool = False) -> ExportReport:
    """Export the current labels of ``view``/``split`` (default: every sample) to ``directory``.

    ``directory`` must be new or empty, or (``overwrite``) hold an earlier export. Raises
    :class:`ExportError` (nothing written) for an unknown format, split or saved view, ``copy``
    with a format that writes no images, or a folder that cannot be written.
    """
    form = _format(fmt)
    if copy and not form.media:
        raise ExportError(f"--copy: the {fmt} export writes no images (it lists the store's file paths)")
    out = Path(directory).expanduser().absolute()
    check_target(out, overwrite=overwrite, project_root=project.root)
    ds = store.dataset(project, create=False)
    samples = select_view(ds, view=view, split=split)
    table, left_out = leave_out(export_table(samples), labeled_only=form.labeled_only, media=form.media,
                                include_pseudo=include_pseudo, include_synthetic=include_synthetic)
    media = ("copy" if copy else "symlink") if form.media else None
    report = ExportReport(format=fmt, directory=str(out), exported=len(table), records=0, media=media,
                          left_out=left_out, view=view, split=split)
    with staged(out) as staging:
        job = ExportJob(view=ds.select(list(table["id"]), ordered=True), table=table, out=staging,
                        media=True if copy else "symlink", classes=store.classes(ds),
                        include_pseudo=include_pseudo)
        report.records = form.write(job)
        write_marker(staging, {**report.as_dict(), "project": str(project.root), "dataset": ds.name,
                               "created": now().isoformat() + "Z", "include_pseudo": include_pseudo,
                               "include_synthetic": include_synthetic})
    return report


def _format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ExportError(f"unknown export format {name!r} (use one of {', '.join(FORMATS)})")
    return FORMATS[name]
