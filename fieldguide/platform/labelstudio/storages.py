"""Which folders Label Studio may serve: the images in place, never the project's own files.

Images are served in place through Label Studio's local-files storages. The document root
(the parent of the folder holding the images, or ``labelstudio.files_root``) only says how
``/data/local-files/?d=...`` paths are spelled: Label Studio serves a file only when it lies
under one of its local storages. :func:`served_folders` picks those storages: the folders
holding the images, collapsed to a few common folders, none of which holds the project
folder (its credentials, database, warehouse and config). Older Label Studio versions match
a storage by string prefix (storage ``/data/pro`` also serves ``/data/project``), so a
storage that is a string prefix of a project path counts as holding it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import ServiceError

# Label Studio refuses a local storage equal to its document root; "/" is its own default.
DEFAULT_DOCUMENT_ROOT = "/"


def images_root(project: Project) -> Path:
    """The folder holding all of the project's images (with no dataset yet, the project folder)."""
    from fieldguide.platform import store

    store.configure_fiftyone(project)
    import fiftyone as fo

    if not fo.dataset_exists(project.dataset_name):
        return project.root
    paths = store.dataset(project, create=False).values("filepath")
    if not paths:
        return project.root
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths]))


def protected_paths(project: Project) -> list[Path]:
    """What Label Studio must never serve: the project folder and what holds its secrets."""
    own = [project.root, project.labelstudio_dir, project.database_dir, project.warehouse_path,
           project.config_path]
    return sorted({q for p in own for q in (Path(os.path.abspath(p)), Path(p).resolve())})


def serves(folder: Path | str, path: Path | str) -> bool:
    """Would a local storage at ``folder`` serve ``path``? (a string prefix, as older Label Studio)"""
    return str(path).startswith(str(folder).rstrip(os.sep))


def storage_problem(folder: Path | str, *, document_root: Path | str, protected: Sequence[Path]) -> str | None:
    """Why a local storage at ``folder`` must not be made (one line), or None when it may."""
    folder, root = Path(os.path.abspath(folder)), Path(os.path.abspath(document_root))
    leaks = [p for p in protected if serves(folder, p)]
    if leaks:
        return (f"images in {folder} share a folder with the project's own files ({leaks[0]}): Label "
                "Studio would serve those too; move the images into a folder of their own")
    if root not in folder.parents:
        return (f"images in {folder} are not below the Label Studio server's file root {root}: restart "
                "the project's server ('fieldguide labelstudio stop', then 'start') or set labelstudio.files_root")
    return None


def holds_only(folder: Path, image_dirs: set[Path], on_the_way: set[Path]) -> bool:
    """Whether everything under ``folder`` is an image folder or a folder on the way to one.

    A file, or a folder that leads to no image folder (``.ssh``, someone's documents), means
    ``folder`` would serve more than the images.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for entry in entries:
        path = Path(entry.path)
        if not entry.is_dir(follow_symlinks=False):
            return False
        if path in image_dirs:
            continue
        if path not in on_the_way or not holds_only(path, image_dirs, on_the_way):
            return False
    return True


def served_folders(image_dirs: Iterable[Path | str], *, document_root: Path | str,
                   protected: Sequence[Path]) -> list[Path]:
    """The local storages that serve ``image_dirs``: few folders, none serving a ``protected`` path.

    The common folder of the images when it may be a storage (:func:`storage_problem`) and holds
    nothing but the image folders (:func:`holds_only`), else the common folder of each of its
    subfolders that hold images, and so on down to the image folders themselves: images in
    ``~/Pictures/a`` and ``~/Downloads/b`` are two storages, never ``~``. Raises
    :class:`ServiceError` when a folder holding images may not itself be a storage.
    """
    dirs = sorted({Path(os.path.abspath(d)) for d in image_dirs})
    for d in dirs:
        problem = storage_problem(d, document_root=document_root, protected=protected)
        if problem:
            raise ServiceError(problem)
    image_set = set(dirs)
    on_the_way = {a for d in dirs for a in d.parents}

    def split(group: list[Path]) -> list[Path]:
        top = Path(os.path.commonpath(group))
        if top in image_set or (
            not storage_problem(top, document_root=document_root, protected=protected)
            and holds_only(top, image_set, on_the_way)
        ):
            return [top]
        groups: dict[str, list[Path]] = {}
        for d in group:
            groups.setdefault(d.relative_to(top).parts[0], []).append(d)
        return [f for sub in groups.values() for f in split(sub)]

    return sorted(split(dirs)) if dirs else []
