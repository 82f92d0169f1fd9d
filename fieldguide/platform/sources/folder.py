"""``SOURCE/<class>/<image>``, optionally under split folders ``SOURCE/<split>/<class>/``."""

from __future__ import annotations

from pathlib import Path

from fieldguide.errors import IngestError
from fieldguide.platform.sources.records import SPLIT_NAMES, Record, Reject, SourceOptions, is_image, is_utf8
from fieldguide.platform.sources.registry import register


def _subfolders(folder: Path, extensions: frozenset[str], problems: list[Reject]) -> list[Path]:
    """The sub-folders of ``folder`` but hidden ones (``.git``, an interrupted export's staging
    folder); one whose name is not UTF-8 is a reject (with its images)."""
    good = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_utf8(sub.name):
            good.append(sub)
        else:
            n = sum(is_image(p, extensions) for p in sub.rglob("*"))
            reason = f"folder name is not valid UTF-8; rename it ({n} image(s) in it not ingested)"
            problems.append(Reject(str(sub), reason))
    return good


@register("folder", takes="folder")
def read_folder(source: Path, options: SourceOptions, problems: list[Reject]) -> list[Record]:
    """Class folders, optionally under split folders (train, val, test, unlabeled)."""
    extensions = options.extensions
    if not any(p.is_dir() and not p.name.startswith(".") for p in source.iterdir()):
        raise IngestError(f"{source}: no class folders found (expected SOURCE/<class>/<image>)")
    subdirs = _subfolders(source, extensions, problems)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_NAMES]
    layout = split_dirs if len(split_dirs) == len(subdirs) else []
    roots = [(SPLIT_NAMES[d.name.lower()], d) for d in layout] or [("train", source)]
    records = []
    for split, root in roots:
        class_dirs = subdirs if root == source else _subfolders(root, extensions, problems)
        for class_dir in class_dirs:
            label = None if split == "unlabeled" else class_dir.name
            for path in sorted(class_dir.rglob("*")):
                if is_image(path, extensions):
                    records.append(Record(path, label, split))
        if split == "unlabeled":  # unlabeled images may also sit loose in the split folder
            records += [Record(p, None, split) for p in sorted(root.iterdir()) if is_image(p, extensions)]
    return records
