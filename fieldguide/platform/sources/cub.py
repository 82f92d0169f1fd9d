"""The CUB-200 layout: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt."""

from __future__ import annotations

import re
from pathlib import Path

from fieldguide.errors import IngestError
from fieldguide.platform.sources.records import Record, Reject, SourceOptions
from fieldguide.platform.sources.registry import register
from fieldguide.platform.sources.tables import not_utf8

NEEDED = ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")


def _table(source: Path, name: str) -> dict[str, str]:
    """``<id> <value>`` lines (space or comma separated) as id -> value."""
    try:
        text = (source / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise IngestError(f"{source / name}: {not_utf8(source / name, 'file')}") from None
    rows = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            m = re.match(r"^\s*([^\s,]+)\s*[,\s]\s*(.+?)\s*$", line)
            if not m:
                raise IngestError(f"{source / name}:{line_no}: expected '<id> <value>', got {line!r}")
            rows[m.group(1)] = m.group(2)
    return rows


@register("cub", takes="folder")
def read_cub(source: Path, options: SourceOptions, problems: list[Reject]) -> list[Record]:
    """Images under ``images/``, classes ``001.Name``, split flag 0 = train, 1 = test."""
    missing = [n for n in NEEDED if not (source / n).is_file()]
    if missing:
        raise IngestError(f"{source}: not a CUB folder, missing {', '.join(missing)}")
    images, labels = _table(source, "images.txt"), _table(source, "image_class_labels.txt")
    classes, splits = _table(source, "classes.txt"), _table(source, "train_test_split.txt")
    records = []
    for image_id, rel in images.items():
        class_name = classes.get(labels.get(image_id, ""))
        label = re.sub(r"^\d+\.", "", class_name) if class_name else None  # "001.Black_footed_Albatross"
        split = {"0": "train", "1": "test"}.get(splits.get(image_id, ""), "train")
        records.append(Record(source / "images" / rel, label, split if label else "unlabeled",
                              {"source_id": image_id}))
    return records
