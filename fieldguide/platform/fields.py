"""Bulk writes of plain values into the store: declared field types, Classification fields
built from dicts, new samples from records, and saved views.

The rest of the package hands these functions Python and NumPy values (sample id -> value);
only here do they become FiftyOne objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

KINDS = ("float", "bool", "string", "classification")


def _field_type(kind: str):
    import fiftyone as fo

    types = {"float": (fo.FloatField, {}), "bool": (fo.BooleanField, {}), "string": (fo.StringField, {}),
             "classification": (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification})}
    if kind not in types:
        raise ValueError(f"field kind {kind!r}: expected one of {', '.join(KINDS)}")
    return types[kind]


def declare_fields(ds, kinds: Mapping[str, str]) -> None:
    """Add the sample fields of ``kinds`` (name -> one of :data:`KINDS`) that the dataset lacks.
    Declared up front, a field gets its type even when every value of a first write is None."""
    for name, kind in kinds.items():
        if not ds.has_sample_field(name):
            field_type, kwargs = _field_type(kind)
            ds.add_sample_field(name, field_type, **kwargs)


def classification(value: Mapping | None):
    """A FiftyOne Classification from ``{"label": ..., "confidence": ..., "logits": [...], ...}``
    (other keys become attributes of the label); None stays None."""
    import fiftyone as fo

    return None if value is None else fo.Classification(**dict(value))


def set_classifications(ds, field: str, values: Mapping[str, Mapping | None]) -> None:
    """Bulk-write the Classification field ``field``: sample id -> dict of the label (see
    :func:`classification`) or None to clear it."""
    if values:
        ds.set_values(field, {sid: classification(v) for sid, v in values.items()}, key_field="id")


def add_samples(ds, records: Sequence[Mapping], *, classifications: Iterable[str] = ()) -> int:
    """Add one sample per record (field -> value; ``filepath`` required, ``tags`` a list); the
    fields named in ``classifications`` hold dicts turned into Classifications. Image metadata is
    computed for the new samples. Returns how many were added."""
    import fiftyone as fo

    if not records:
        return 0
    wrapped = set(classifications)
    samples = [fo.Sample(**{k: (classification(v) if k in wrapped else v) for k, v in r.items()}) for r in records]
    ds.add_samples(samples, progress=False)
    ds.compute_metadata(progress=False)
    return len(samples)


def save_view(ds, name: str, *, tag: str | None = None, has_field: str | None = None,
              labels: Iterable[str] | None = None, sort_by: str | None = None, reverse: bool = False) -> None:
    """Save (overwrite) the view ``name`` of the dataset: the samples tagged ``tag``, or whose
    ``has_field`` is set, or whose ``ground_truth`` label is in ``labels`` (the filters given are
    all applied), sorted by ``sort_by``."""
    view = ds.view()
    if tag is not None:
        view = view.match_tags(tag)
    if has_field is not None:
        from fiftyone import ViewField as F

        view = view.match(F(has_field) != None)  # noqa: E711 - a MongoDB expression, not a comparison
    if labels is not None:
        from fiftyone import ViewField as F

        view = view.match(F("ground_truth.label").is_in(sorted(labels)))
    if sort_by is not None:
        view = view.sort_by(sort_by, reverse=reverse)
    ds.save_view(name, view, overwrite=True)
