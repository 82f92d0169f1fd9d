"""The store as arrays aligned with sample ids: the one read the rest of the package uses.

``models/``, ``curation/`` and the loop never call a FiftyOne dataset method: they read
columns here and write them back through :mod:`fieldguide.platform.fields`.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def arrays(samples, fields: Iterable[str] = (), *, tags: str | Iterable[str] | None = None,
           ids: Iterable[str] | None = None, saved_view: str | None = None,
           limit: int | None = None) -> pd.DataFrame:
    """One row per sample: an ``id`` column, then one column per field of ``fields`` (embedded
    ones by path, e.g. ``ground_truth.label``; ``tags`` is a list per sample), one query per field.
    Columns hold the stored values as they are (``object`` dtype: None stays None).

    ``samples`` is a dataset or a view; the rows are the samples of its saved view ``saved_view``,
    or those tagged with any of ``tags``, or those of ``ids`` in that order (ids not in the store
    are left out), at most ``limit`` of them, in the store's order otherwise.
    """
    fields = list(fields)
    view = samples.load_saved_view(saved_view) if saved_view is not None else samples
    if tags is not None:
        view = view.match_tags(tags)
    if ids is not None:
        view = view.select(list(ids), ordered=True)
    if limit is not None:
        view = view.limit(limit)
    columns = view.values(["id", *fields])
    return pd.DataFrame(dict(zip(["id", *fields], columns)), columns=["id", *fields], dtype=object)


def has_field(samples, field: str) -> bool:
    """Whether the samples have the field ``field`` (a step that writes it ran at least once)."""
    return samples.has_sample_field(field)


def reload(ds) -> None:
    """Re-read the dataset's schema (a field another process or step declared since it was loaded)."""
    ds.reload()
