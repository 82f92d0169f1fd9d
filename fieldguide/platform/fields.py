"""The sample schema, declared once, and the bulk writes of plain values into the store: field
values by sample id, tags, new samples from records, and saved views.

The rest of the package hands these functions Python and NumPy values (sample id -> value);
only here do they become FiftyOne objects. Writing values, tags and views twice does what writing
them once does: on a replica set they are written again when an election interrupts them
(:func:`fieldguide.platform.elections.retrying`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from fieldguide.platform.elections import retrying

#: Every sample field fieldguide's steps write, with its kind (see :func:`_field_type`). Fields a
#: source brings along at ingest (``observation_id``, ``taxonomy``, a csv's extra columns) and
#: the FiftyOne Brain's (``mistakenness``, ``uniqueness``) are not here: they take their type
#: from their values.
SCHEMA: dict[str, str] = {
    # ingest and relabel
    "ground_truth": "classification",
    "votes": "classifications",
    "origin": "string",
    "parent_id": "string",
    "filehash": "string",
    "location": "geolocation",
    "observed_at": "datetime",
    "observer": "string",
    "label_history": "history",
    # predict
    "prediction": "classification",
    "prediction_backoff": "classification",  # the finest rank sure enough (a ``rank`` attribute)
    "unknown_score": "float",  # open-set: how likely the sample is of a class the head never saw
    # flag
    "noise_score": "float",
    "label_issue": "bool",
    "near_duplicate_of": "string",
    "consensus_label": "string",
    "consensus_rank": "string",
    "error_rank": "string",
    "error_severity": "float",
    "error_cost": "float",  # expected cost of keeping the given label (classes.costs)
    "cost_priority": "float",  # noise_score x error_cost: the review queue's cost order
    "label_quality": "float",
    "outlier_score": "float",
    "knn_disagreement": "float",
    "annotator_agreement": "float",
    "entropy_aum": "float",
    # the review state (fieldguide.platform.review)
    "review_state": "string",
    "review_decided_at": "datetime",
    "review_evidence": "string",
    "review_reason": "string",  # why it is queued: label_issue, unknown (or both)
    # pseudolabel
    "pseudo_label": "classification",
    # augment
    "synthetic_label": "classification",
}

#: the fields a new dataset is created with; the others are declared by their first write
CREATED_WITH = ("ground_truth", "votes", "origin", "parent_id", "filehash", "location", "observed_at",
                "observer", "label_history")

#: kinds whose values are written as dicts of a label's attributes (see :func:`classification`)
CLASSIFICATION_KINDS = ("classification",)


def _field_type(kind: str):
    import fiftyone as fo

    types = {
        "float": (fo.FloatField, {}),
        "bool": (fo.BooleanField, {}),
        "string": (fo.StringField, {}),
        "datetime": (fo.DateTimeField, {}),
        "classification": (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification}),
        "classifications": (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classifications}),
        "geolocation": (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.GeoLocation}),
        "history": (fo.ListField, {"subfield": fo.EmbeddedDocumentField,
                                   "embedded_doc_type": fo.DynamicEmbeddedDocument}),
    }
    return types[kind]


def declare_fields(ds, names: Iterable[str]) -> None:
    """Add the fields ``names`` of :data:`SCHEMA` that the dataset lacks, in that order.
    Declared up front, a field gets its type even when every value of a first write is None."""
    for name in names:
        if name not in SCHEMA:
            raise ValueError(f"field {name!r} is not in the sample schema (fieldguide.platform.fields.SCHEMA)")
        if not ds.has_sample_field(name):
            field_type, kwargs = _field_type(SCHEMA[name])
            ds.add_sample_field(name, field_type, **kwargs)


def classification(value: Mapping | None):
    """A FiftyOne Classification from ``{"label": ..., "confidence": ..., "logits": [...], ...}``
    (other keys become attributes of the label); None stays None."""
    import fiftyone as fo

    return None if value is None else fo.Classification(**dict(value))


def _stored(field: str, value):
    return classification(value) if SCHEMA.get(field) in CLASSIFICATION_KINDS else value


#: samples per ``set_values`` call of :func:`write_values`: memory stays flat on large stores
WRITE_BATCH = 20_000

#: the fields saved views filter and sort by (``flag``'s views, the review queue): indexed
INDEXED_FIELDS = ("noise_score", "review_state", "tags")


@retrying
def write_values(ds, columns: Mapping[str, Mapping[str, object]], *, batch_size: int = WRITE_BATCH) -> None:
    """Bulk-write sample fields: ``{field: {sample id: value}}`` (None clears a value), in batches
    of ``batch_size`` samples. A field of :data:`SCHEMA` is declared first when the dataset lacks
    it, and its Classification values are given as dicts (see :func:`classification`); any other
    field is a free field, typed by its values.

    Plain values (numbers, booleans, strings, None) of fields the dataset already has go in one
    update per sample for all such fields together (``$set``, FiftyOne's own bulk write): a flag
    of 100,000 samples writes ~15 fields, one ``set_values`` per field took ~2 minutes of it. Other
    fields (labels, new free fields) go through FiftyOne's ``set_values``, one call per field and
    batch."""
    declare_fields(ds, [f for f, values in columns.items() if values and f in SCHEMA])
    plain = {f: v for f, v in columns.items() if _plain(ds, f, v)}
    if plain:
        _write_plain(ds, plain, batch_size)
    for field, values in columns.items():
        if field in plain:
            continue
        items = list(values.items())
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            ds.set_values(field, {sid: _stored(field, v) for sid, v in chunk}, key_field="id")


_PLAIN_KINDS = {"float": float, "bool": bool, "string": str}


def _plain(ds, field: str, values: Mapping) -> bool:
    """True when ``field`` exists in the dataset as a float, bool or string field (of
    :data:`SCHEMA`) and every value is of that kind or None."""
    kind = _PLAIN_KINDS.get(SCHEMA.get(field, ""))
    if kind is None or not ds.has_sample_field(field):
        return False
    ok = (float, int) if kind is float else kind
    return all(v is None or (isinstance(v, ok) and not (kind is float and isinstance(v, bool))) for v in values.values())


def _write_plain(ds, columns: Mapping[str, Mapping[str, object]], batch_size: int) -> None:
    """One ``$set`` per sample of every column's value for it (floats as floats)."""
    from datetime import datetime, timezone

    from bson import ObjectId
    from pymongo import UpdateOne

    floats = {f for f in columns if SCHEMA.get(f) == "float"}
    ids = list(dict.fromkeys(sid for values in columns.values() for sid in values))
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        ops = []
        for sid in chunk:
            update = {f: (float(values[sid]) if f in floats and values[sid] is not None else values[sid])
                      for f, values in columns.items() if sid in values}
            update["last_modified_at"] = now
            ops.append(UpdateOne({"_id": ObjectId(sid)}, {"$set": update}))
        ds._bulk_write(ops, ids=chunk)  # FiftyOne's own: also reloads the samples loaded in memory


@retrying
def index_fields(ds, fields: Iterable[str] = INDEXED_FIELDS) -> None:
    """Database indexes on those of ``fields`` the dataset has (idempotent): the App's and the
    views' filters and sorts on them stay fast past 100k samples."""
    existing = set(ds.list_indexes())
    for name in fields:
        if name not in existing and ds.has_sample_field(name):
            ds.create_index(name)


@retrying
def set_tags(ds, *, add: Iterable[str] = (), remove: Iterable[str] = (), ids: Iterable[str] | None = None) -> None:
    """Remove the tags ``remove``, then add the tags ``add``, on the samples ``ids`` (default:
    every sample of ``ds``)."""
    samples = ds if ids is None else ds.select(list(ids))
    remove, add = list(remove), list(add)
    if remove:
        samples.untag_samples(remove)
    if add:
        samples.tag_samples(add)


def add_samples(ds, records: Sequence[Mapping]) -> int:
    """Add one sample per record (field -> value; ``filepath`` required, ``tags`` a list);
    Classification fields of :data:`SCHEMA` hold dicts (see :func:`classification`) and are
    declared first. Image metadata is computed for the new samples. Returns how many were added."""
    import fiftyone as fo

    if not records:
        return 0
    declare_fields(ds, sorted({k for r in records for k in r if k in SCHEMA}))
    samples = [fo.Sample(**{k: _stored(k, v) for k, v in r.items()}) for r in records]
    ds.add_samples(samples, progress=False)
    ds.compute_metadata(progress=False)
    return len(samples)


@retrying
def save_view(ds, name: str, *, tag: str | None = None, has_field: str | None = None,
              labels: Iterable[str] | None = None, above: tuple[str, float] | None = None,
              sort_by: str | Sequence[tuple[str, int]] | None = None, reverse: bool = False) -> None:
    """Save (overwrite) the view ``name`` of the dataset: the samples tagged ``tag``, or whose
    ``has_field`` is set, or whose ``ground_truth`` label is in ``labels``, or whose field
    ``above[0]`` is at least ``above[1]`` (the filters given are all applied), sorted by ``sort_by``
    (a field, or ``(field, 1 | -1)`` pairs: ascending, descending; None is the smallest value: last
    when descending)."""
    view = ds.view()
    if tag is not None:
        view = view.match_tags(tag)
    if has_field is not None:
        from fiftyone import ViewField as F

        view = view.match(F(has_field) != None)  # noqa: E711 - a MongoDB expression, not a comparison
    if labels is not None:
        from fiftyone import ViewField as F

        view = view.match(F("ground_truth.label").is_in(sorted(labels)))
    if above is not None:
        from fiftyone import ViewField as F

        view = view.match(F(above[0]) >= above[1])
    if sort_by is not None:
        view = view.sort_by(sort_by, reverse=reverse)
    ds.save_view(name, view, overwrite=True)
