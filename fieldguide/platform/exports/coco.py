"""``coco``: ``DIR/data/`` and ``DIR/labels.json``, COCO-style classification.

FiftyOne's ``COCODetectionDatasetExporter`` takes detections, polylines and keypoints, not
classifications; this writes the classification form of COCO that the iNaturalist competitions
use: ``images`` (id, file_name under ``data/``, width, height), ``categories`` (id, name; ids
1.. in the project's class order, so they are stable across exports) and ``annotations``
(id, image_id, category_id, no bbox). Images are placed by FiftyOne's ``ImageExporter``
(symlinks or copies, unique names).
"""

from __future__ import annotations

import json

from fieldguide.platform.exports.labels_csv import iso_utc
from fieldguide.platform.exports.registry import ExportJob, register_format
from fieldguide.platform.warehouse import now

FILENAME = "labels.json"


@register_format("coco", media=True, labeled_only=True,
                 summary="data/ + labels.json (COCO-style classification, as the iNaturalist competitions)")
def write_coco(job: ExportJob) -> int:
    import fiftyone.utils.data as foud

    category_ids = {name: i for i, name in enumerate(job.classes, start=1)}
    media = foud.ImageExporter(job.media, export_path=str(job.out / "data"), supported_modes=(True, "symlink"))
    media.setup()
    images, annotations = [], []
    for n, row in enumerate(job.table.itertuples(), start=1):
        _, file_name = media.export(row.filepath)
        images.append({"id": n, "file_name": file_name, "width": _int(row.width), "height": _int(row.height),
                       "fieldguide_id": row.id})
        annotations.append({"id": n, "image_id": n, "category_id": category_ids[row.label]})
    media.close()
    document = {
        "info": {"description": "fieldguide export of the current labels", "date_created": iso_utc(now())},
        "licenses": [],
        "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in category_ids.items()],
        "images": images,
        "annotations": annotations,
    }
    (job.out / FILENAME).write_text(json.dumps(document, indent=1), encoding="utf-8")
    return len(images)


def _int(value) -> int | None:
    return None if value is None or value != value else int(value)  # NaN where metadata is missing
