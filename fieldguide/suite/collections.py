"""Collections: which to run, each ingested and embedded into its own project, split into train and test."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fieldguide.config.sections import ModelsSection
from fieldguide.errors import FieldguideError
from fieldguide.suite.plan import SPLIT_SEED, TEST_SHARE

log = logging.getLogger(__name__)


# ---- collections ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Collection:
    """A collection of labeled images and how ``ingest`` reads it."""

    name: str
    source: Path
    format: str = "folder"
    options: dict = field(default_factory=dict)  # ingest's keyword options (csv columns, ranks, ...)


def bundled_collections(data: Path) -> dict[str, Collection]:
    """The collections under ``shared/data`` (see its README), each with its matching format.

    inat-plants-dev is a manifest (``metadata.csv``: path, species, scientific_name, family,
    genus, observed_on, inat_id), not an iNaturalist export (no ``id`` column, photos not named
    by observation id): it is read by the ``csv`` format with its ranks; it has no split, so
    the suite makes one.
    """
    data = Path(data)
    return {
        "cub100": Collection("cub100", data / "cub100", "cub"),
        "inat-plants-dev": Collection(
            "inat-plants-dev", data / "inat-plants-dev" / "metadata.csv", "csv",
            {"filepath_column": "path", "label_column": "scientific_name", "ranks": "family,genus"}),
        "flowers12": Collection("flowers12", data / "flowers12", "folder"),
    }


def parse_collection(text: str) -> Collection:
    """``NAME=PATH[:FORMAT]`` (FORMAT one of ingest's formats, default ``folder``)."""
    from fieldguide.platform.sources import FORMATS

    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise FieldguideError(f"--collection {text!r}: use NAME=PATH[:FORMAT], e.g. mine=/data/birds:folder")
    path, colon, fmt = rest.rpartition(":")
    if not colon or fmt not in FORMATS:  # no format given (or a ':' inside the path)
        path, fmt = rest, "folder"
    if not all(c.isalnum() or c in "_.-" for c in name):
        raise FieldguideError(f"--collection {text!r}: the name may hold letters, digits, '_', '.', '-' only")
    return Collection(name, Path(path).expanduser(), fmt)


def resolve_collections(data: Path, names: str | None, others: list[Collection]) -> list[Collection]:
    """The bundled collections named in ``names`` (comma-separated; all of them when neither names
    nor ``others`` are given), then ``others``."""
    bundled = bundled_collections(data)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else ([] if others else list(bundled))
    unknown = [n for n in wanted if n not in bundled]
    if unknown:
        raise FieldguideError(f"unknown collection(s) {', '.join(unknown)} (bundled: {', '.join(bundled)}; "
                              "another one: --collection NAME=PATH[:FORMAT])")
    return [bundled[n] for n in wanted] + others


# ---- features ------------------------------------------------------------------------------------------
@dataclass
class Features:
    """One collection's embeddings and labels, split into train and test (class indices)."""

    name: str
    classes: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    split: str  # "store" or the suite's split rule
    paths_train: list[str] = field(default_factory=list)  # the images' file paths, in the rows' order
    paths_test: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def suite_split(labels: Iterable[str], paths: Iterable[str], groups: Iterable[str | None] | None = None, *,
                seed: int = SPLIT_SEED, test_share: float = TEST_SHARE) -> np.ndarray:
    """A boolean test mask: per class (in sorted order), its units (samples, or the ``groups`` that
    photos of one observation share) in file path order are shuffled by one ``random.Random(seed)``
    and the first ``round(test_share * n)`` go to test."""
    labels, paths = list(labels), list(paths)
    groups = list(groups) if groups is not None else [None] * len(labels)
    rng = random.Random(seed)
    test = np.zeros(len(labels), dtype=bool)
    for cls in sorted(set(labels)):
        units: dict[str, list[int]] = {}
        for i in sorted((i for i, c in enumerate(labels) if c == cls), key=lambda i: paths[i]):
            units.setdefault(groups[i] if groups[i] is not None else paths[i], []).append(i)
        order = list(units)
        rng.shuffle(order)
        for key in order[:round(test_share * len(order))]:
            test[units[key]] = True
    return test


def table_split(table) -> np.ndarray:
    """:func:`suite_split` of a samples table (columns label, filepath and, when photos share an
    observation, observation_id): the test mask of a store that has no test split."""
    groups = table["observation_id"].tolist() if "observation_id" in table else None
    return suite_split(table["label"], table["filepath"], groups)


def collection_features(collection: Collection, cache: Path, *, backbone: str | None = None,
                        weights: str | None = None) -> Features:
    """Ingest ``collection`` into its project ``cache/<name>`` (nothing twice), embed what is not
    cached yet, and return its labeled samples' embeddings split into train and test."""
    from fieldguide.config import init_project
    from fieldguide.models.embed import embed, embedded_table
    from fieldguide.platform import samples, store
    from fieldguide.platform.ingest import ingest

    if not collection.source.exists():
        raise FieldguideError(f"collection {collection.name}: {collection.source} does not exist")
    project = init_project(Path(cache) / collection.name, collection.name)
    defaults = ModelsSection()  # the code's defaults, not a cached project file's
    project.config.models.backbone = backbone or defaults.backbone
    project.config.models.weights = weights or defaults.weights
    try:
        report = ingest(project, collection.source, fmt=collection.format, **collection.options)
        if report.added:
            log.info("%s: ingested %d images (%d rejected)", collection.name, report.added, len(report.rejects))
        embed(project)
        ds = store.dataset(project, create=False)
        extra = ["observation_id"] if samples.has_field(ds, "observation_id") else []
        ids, X, table = embedded_table(project, None, ds, extra)
    finally:
        store.release_database()
    labeled = table["label"].notna().to_numpy() & table["split"].isin(("train", "val", "test")).to_numpy()
    table, X = table[labeled], X[labeled]
    classes = sorted(table["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in table["label"]], dtype=int)
    test = (table["split"] == "test").to_numpy()
    split = "store"
    if not test.any():
        groups = table["observation_id"].tolist() if extra else None
        test = suite_split(table["label"], table["filepath"], groups)
        split = f"suite: {TEST_SHARE:.0%} of each class to test, random.Random({SPLIT_SEED})"
    if len(classes) < 2 or not (~test).any():
        raise FieldguideError(f"collection {collection.name}: needs labeled images of 2 or more classes "
                              f"(found {len(classes)} classes, {len(y)} labeled)")
    paths = table["filepath"].to_numpy()
    return Features(collection.name, classes, X[~test], y[~test], X[test], y[test], split,
                    paths[~test].tolist(), paths[test].tolist())
