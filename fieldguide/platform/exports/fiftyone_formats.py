"""``imagenet`` and ``fiftyone``: FiftyOne's own exporters on ``ground_truth``.

- ``imagenet``: ``DIR/<split>/<class>/<image>`` (``fo.types.ImageClassificationDirectoryTree``
  per split; samples without a split, e.g. synthetic images, go to ``train``), which
  ``fieldguide ingest DIR`` reads back with its splits.
- ``fiftyone``: ``DIR/data/`` and ``DIR/labels.json`` (``fo.types.FiftyOneImageClassificationDataset``),
  for ``fo.Dataset.from_dir(DIR, dataset_type=fo.types.FiftyOneImageClassificationDataset)``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from fieldguide.platform.exports.registry import ExportJob, register_format


@register_format("imagenet", media=True, labeled_only=True,
                 summary="DIR/<split>/<class>/<image> (ImageNet layout; fieldguide ingest DIR reads it back)")
def write_imagenet(job: ExportJob) -> int:
    import fiftyone as fo

    splits = job.table["split"].fillna("train")
    for split, ids in job.table["id"].groupby(splits):
        _export(job.view.select(list(ids)), job.out / split, fo.types.ImageClassificationDirectoryTree, job.media)
    return len(job.table)


@register_format("fiftyone", media=True, labeled_only=True,
                 summary="data/ + labels.json (FiftyOneImageClassificationDataset)")
def write_fiftyone(job: ExportJob) -> int:
    import fiftyone as fo

    _export(job.view, job.out, fo.types.FiftyOneImageClassificationDataset, job.media, classes=job.classes)
    return len(job.table)


def _export(samples, out: Path, dataset_type, media: str | bool, **kwargs) -> None:
    # FiftyOne's bar prints to stdout: keep stdout for results (--json), bars on a terminal only.
    # overwrite: ``out`` is our own, still empty staging folder (else FiftyOne warns of a merge)
    with contextlib.redirect_stdout(sys.stderr):
        samples.export(export_dir=str(out), dataset_type=dataset_type, label_field="ground_truth",
                       export_media=media, overwrite=True, progress=sys.stderr.isatty(), **kwargs)
