"""The FiftyOne store: one persistent dataset per project, in the project's own database.

Only this package talks to FiftyOne. :mod:`fieldguide.platform.samples` turns the store into
arrays aligned with sample ids and :mod:`fieldguide.platform.fields` writes arrays back in bulk
(``set_values``), never one ``save()`` per sample; this module holds the dataset itself, its
labels (:func:`set_labels`, the one function that changes one) and their mirror in the
warehouse. The project's database, and the patches of FiftyOne's internals that keep it to the
project, live in :mod:`fieldguide.platform.database`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fieldguide.config import CONFIG_NAME, Project
from fieldguide.errors import FieldguideError, StoreError
from fieldguide.platform import samples
from fieldguide.platform.elections import retrying
from fieldguide.platform.database import configure_fiftyone, release_database  # noqa: F401 - public here too
from fieldguide.platform.fields import CREATED_WITH, declare_fields, write_values
from fieldguide.platform.lock import writes
from fieldguide.platform.warehouse import Warehouse, now

if TYPE_CHECKING:
    import fiftyone as fo

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "unlabeled")
ORIGINS = ("real", "pseudo", "synthetic")
LABEL_SOURCES = ("ingest", "crowd", "curator", "labelstudio", "pseudo", "model")

def dataset(project: Project, *, create: bool = True) -> "fo.Dataset":
    """The project's dataset, created (persistent, with the fieldguide schema) when missing."""
    configure_fiftyone(project)
    import fiftyone as fo

    name = project.dataset_name
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        previous = ds.info.get("fieldguide_project")
        if previous != str(project.root):
            if previous and Path(previous, CONFIG_NAME).exists() and project.config.store.database_uri:
                raise StoreError(
                    f"the dataset {name} in the shared database belongs to the project at {previous}: "
                    f"this one is a copy of it (run 'fieldguide init {project.root} --new-id')"
                )
            if previous and not Path(previous).exists():  # the project moved: its own files moved with it
                _rebase_project_files(ds, Path(previous), project.root)
            ds.info["fieldguide_project"] = str(project.root)  # the App plugin finds the project here
            ds.save()
        return ds
    if not create:
        raise StoreError(
            f"project {project.root} has no dataset yet (run 'fieldguide ingest SOURCE' first)"
        )
    ds = fo.Dataset(name)
    ds.persistent = True
    ds.info["fieldguide_project"] = str(project.root)
    _declare_schema(ds)
    return ds


@writes("init --new-id")
def renew_identity(project: Project) -> tuple[str, str]:
    """Give a copied project an id of its own; its dataset (labels, history) follows the new name.

    With an external ``database_uri`` the copy's dataset is cloned under the new name (the
    original stays with the original project); in the copy's own embedded database it is renamed.
    """
    from fieldguide.config import new_id, set_project_key

    if project.config.store.dataset_name:
        raise FieldguideError("store.dataset_name is set in fieldguide.toml: change that name instead of the id")
    configure_fiftyone(project)
    import fiftyone as fo

    old_id, old_name = project.config.project.id, project.dataset_name
    project.config.project.id = new_id()
    if fo.dataset_exists(old_name):
        ds = fo.load_dataset(old_name)
        if project.config.store.database_uri:
            copy = ds.clone(project.dataset_name, persistent=True)
            copy.info["fieldguide_project"] = str(project.root)
            copy.save()
        else:
            ds.name = project.dataset_name
    set_project_key(project.config_path, "id", project.config.project.id)
    return old_id, project.config.project.id


def _rebase_project_files(ds: "fo.Dataset", old_root: Path, new_root: Path) -> int:
    """The project folder moved: files it owns (synthetic images, ...) move with it.

    Paths under the old folder that exist under the new one are rewritten; images that live
    outside the project keep their paths. Returns how many paths changed.
    """
    table = samples.arrays(ds, ["filepath"])
    moved = {}
    for sid, path in zip(table["id"], table["filepath"]):
        p = Path(path)
        if p.is_relative_to(old_root):
            candidate = new_root / p.relative_to(old_root)
            if candidate.exists():
                moved[sid] = str(candidate)
    if moved:
        write_values(ds, {"filepath": moved})
        log.info("project moved from %s: %d file paths follow it", old_root, len(moved))
    return len(moved)


def _declare_schema(ds: "fo.Dataset") -> None:
    declare_fields(ds, CREATED_WITH)
    ds.info["fieldguide_schema"] = 1
    ds.save()


def warehouse(project: Project) -> Warehouse:
    return Warehouse(project.warehouse_path)


# ---- reading arrays ---------------------------------------------------------------------
def split_of(tags: Iterable[str]) -> str | None:
    for split in SPLITS:
        if split in tags:
            return split
    return None


def samples_table(ds, fields: Iterable[str] = ()):
    """A DataFrame with ``id``, ``filepath``, ``label``, ``split``, ``origin`` and ``fields``.

    One query per field (:func:`fieldguide.platform.samples.arrays`), never a loop over samples.
    """
    import pandas as pd

    fields = list(dict.fromkeys(fields))
    base = ["filepath", "ground_truth.label", "tags", "origin"]
    table = samples.arrays(ds, [*base, *(f for f in fields if f not in base)])
    df = pd.DataFrame({"id": table["id"].tolist(), "filepath": table["filepath"].tolist(),
                       "label": table["ground_truth.label"].tolist(),
                       "split": [split_of(t) for t in table["tags"]], "origin": table["origin"].tolist()})
    for name in fields:
        df[name] = table[name].tolist()
    return df


def classes(ds) -> list[str]:
    """The project's class list: the dataset's default classes plus any label in use."""
    in_use = set(ds.distinct("ground_truth.label"))
    known = list(ds.default_classes or [])
    return known + sorted(in_use - set(known))


def add_classes(ds, new: Iterable[str]) -> list[str]:
    known = list(ds.default_classes or [])
    added = sorted(set(new) - set(known) - {None, ""})
    if added:
        ds.default_classes = known + added
        ds.save()
    return added


# ---- the one function that changes a label ------------------------------------------------
def check_labels(ds, labels: Mapping[str, str | None], found_ids: Iterable[str] | None = None, *,
                 allow_new_classes: bool = False) -> set[str]:
    """Raise (one line, nothing written) when a sample id of ``labels`` is not in the store or a
    label is not a class of the project (unless ``allow_new_classes``); returns the new classes."""
    found = set(ds.select(list(labels)).values("id") if found_ids is None else found_ids)
    missing = set(labels) - found
    if missing:
        raise FieldguideError(
            f"{len(missing)} sample(s) are not in the store (e.g. {sorted(missing)[0]}); nothing changed"
        )
    known = set(classes(ds))
    unknown = {v for v in labels.values() if v is not None and v not in known}
    if unknown and not allow_new_classes:
        raise FieldguideError(
            f"unknown class(es) {', '.join(sorted(unknown))}: not in the project's class list; nothing changed"
        )
    return unknown



@writes('set labels')
def set_labels(
    project: Project,
    ds,
    labels: Mapping[str, str | None],
    *,
    source: str,
    actor: str,
    run_id: str | None = None,
    allow_new_classes: bool = False,
    answers: Mapping[str, tuple[str, str]] | None = None,
) -> int:
    """Set ``ground_truth`` of the samples in ``labels`` (sample id -> label, None removes it).

    Every change appends ``{old, new, source, actor, time, run_id}`` to the sample's
    ``label_history`` and the warehouse's ``label_events``; nothing overwrites a label
    silently. A label equal to the current one is a confirmation: recorded in history, the
    label untouched. ``answers`` (sample id -> (name, rank)) records an answer above the classes'
    rank (a genus) on the entry as ``answer`` and ``answer_rank``: give such a sample its current
    label. Unknown sample ids and unknown classes are errors (nothing is written).
    Returns how many samples had their label changed.
    """
    import fiftyone as fo

    if source not in LABEL_SOURCES:
        raise FieldguideError(f"label source {source!r} is not one of {', '.join(LABEL_SOURCES)}")
    if not labels:
        return 0
    ids = list(labels)
    view = ds.select(ids, ordered=True)
    found_ids, old_labels, histories = view.values(["id", "ground_truth.label", "label_history"])
    unknown = check_labels(ds, labels, found_ids, allow_new_classes=allow_new_classes)
    if unknown:
        add_classes(ds, unknown)
    when = now()
    new_gt, new_hist, events, changed = [], [], [], 0
    for sid, old, hist in zip(found_ids, old_labels, histories):
        new = labels[sid]
        answer = dict(zip(("answer", "answer_rank"), answers[sid])) if answers and sid in answers else {}
        entry = fo.DynamicEmbeddedDocument(
            old=old, new=new, source=source, actor=actor, time=when, run_id=run_id, **answer
        )
        new_hist.append(list(hist or []) + [entry])
        new_gt.append(fo.Classification(label=new) if new is not None else None)
        changed += int(new != old)
        events.append(
            {
                "event_id": f"{sid}-{len(hist or [])}",
                "sample_id": sid,
                "old": old,
                "new": new,
                "source": source,
                "actor": actor,
                "time": when,
                "run_id": run_id,
                "answer": answer.get("answer"),
                "answer_rank": answer.get("answer_rank"),
            }
        )
    # history first: a crash between the two writes leaves a history entry, never a silent change
    retrying(view.set_values)("label_history", new_hist)
    retrying(view.set_values)("ground_truth", new_gt)
    warehouse(project).write("label_events", events)
    return changed


def snapshot_samples(project: Project, ds) -> int:
    """Mirror every sample's label, split, origin, prediction, pseudo-label, noise score, review
    state, date (``observed_at``), place (``location`` as latitude and longitude) and error rank to the
    warehouse.

    The dashboards read only the warehouse; each step that changes these calls this (one
    bulk query, one bulk write). Samples no longer in the store are removed.
    """
    schema = ds.get_field_schema()
    fields = [f for f in ("noise_score", "label_issue", "review_state", "observed_at", "error_rank",
                          "error_severity") if f in schema]
    for field in ("prediction", "pseudo_label"):
        if field in schema:
            fields += [f"{field}.label", f"{field}.confidence"]
    if "location" in schema:
        fields.append("location.point")
    df = samples_table(ds, fields)
    df = df.rename(columns={"id": "sample_id", "prediction.label": "predicted_label",
                            "prediction.confidence": "confidence", "pseudo_label.label": "pseudo_label",
                            "pseudo_label.confidence": "pseudo_confidence"})
    if "location.point" in df:  # GeoJSON order: [longitude, latitude]
        points = df.pop("location.point")
        df["longitude"] = [p[0] if p else None for p in points]
        df["latitude"] = [p[1] if p else None for p in points]
    for col in ("predicted_label", "confidence", "noise_score", "label_issue", "pseudo_label",
                "pseudo_confidence", "review_state", "observed_at", "latitude", "longitude", "error_rank",
                "error_severity"):
        if col not in df:
            df[col] = None
    df["updated"] = now()
    wh = warehouse(project)
    with wh.connect() as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM samples")
        if len(df):
            con.register("_rows", df)
            con.execute("INSERT INTO samples BY NAME SELECT * FROM _rows")
        con.execute("COMMIT")
    return len(df)


def label_history(ds, sample_id: str) -> list[dict]:
    sample = ds[sample_id]
    return [dict(e.to_dict(), **{}) for e in (sample.label_history or [])]


def set_field(ds, field: str, values: Mapping[str, object]) -> None:
    """Bulk-write ``field`` for the samples in ``values`` (sample id -> value)."""
    write_values(ds, {field: values})
