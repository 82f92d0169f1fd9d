"""The FiftyOne store: one persistent dataset per project, in the project's own database.

Only this package talks to FiftyOne. It turns the store into arrays aligned with sample ids
and writes arrays back in bulk (``set_values``), never one ``save()`` per sample.

The embedded MongoDB lives under ``PROJECT/db``; FiftyOne reads its configuration when it is
first imported, so :func:`configure_fiftyone` must run before anything imports ``fiftyone``
(every function here calls it). One process talks to one project's database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fieldguide.config import CONFIG_NAME, Project
from fieldguide.errors import FieldguideError, StoreError
from fieldguide.platform.warehouse import Warehouse, now
from fieldguide.platform.lock import writes

if TYPE_CHECKING:
    import fiftyone as fo

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "unlabeled")
ORIGINS = ("real", "pseudo", "synthetic")
LABEL_SOURCES = ("ingest", "crowd", "curator", "labelstudio", "pseudo", "model")

_configured_for: str | None = None


def configure_fiftyone(project: Project) -> None:
    """Point FiftyOne at the project's database dir and keep it from writing to the home dir."""
    global _configured_for
    db_dir = str(project.database_dir)
    uri = project.config.store.database_uri
    key = uri or db_dir
    if _configured_for == key:
        return
    settings = {
        "FIFTYONE_DATABASE_DIR": db_dir,
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_SHOW_PROGRESS_BARS": os.environ.get("FIFTYONE_SHOW_PROGRESS_BARS", "true"),
        "FIFTYONE_PLUGINS_DIR": str(Path(__file__).resolve().parent.parent / "plugins"),
        "FIFTYONE_MODEL_ZOO_DIR": str(project.root / "models-zoo"),
        "FIFTYONE_DATASET_ZOO_DIR": str(project.root / "datasets-zoo"),
        "FIFTYONE_DEFAULT_DATASET_DIR": str(project.root / "fiftyone-datasets"),
    }
    if uri:
        settings["FIFTYONE_DATABASE_URI"] = uri
    else:
        os.environ.pop("FIFTYONE_DATABASE_URI", None)
    # FiftyOne passes the port of the mongod it started to child processes in this variable;
    # a port inherited from another project's process would point at the wrong database.
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    os.environ.update(settings)
    import sys

    if "fiftyone" in sys.modules:
        import fiftyone as fo

        fo.config.plugins_dir = settings["FIFTYONE_PLUGINS_DIR"]  # read at import: set it again
        _reconnect(project, db_dir, uri)
    _isolate_database_service()
    _connect(project)
    _configured_for = key


def _connect(project: Project) -> None:
    """Connect now, starting the project's mongod when it is down.

    Under the project's service lock: two commands started together on a stopped project start
    one mongod (the second attaches to it). A database that cannot start (a read-only project,
    no mongod, a port or lock held elsewhere) is one clear error, not a traceback.
    """
    import fiftyone.core.odm.database as fod
    import fiftyone.core.service as fos

    from fieldguide.platform.lock import service_lock

    if project.config.store.database_uri:
        try:
            fod._connect()
        except Exception as e:  # noqa: BLE001 - pymongo's many connection errors: one line
            raise StoreError(f"cannot reach the database at store.database_uri ({type(e).__name__}: {e})") from None
        return
    try:
        project.database_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the project's database folder {project.database_dir} ({e.strerror})") from None
    if not os.access(project.database_dir, os.W_OK):
        raise StoreError(
            f"project database {project.database_dir} is read-only: fieldguide's embedded MongoDB "
            "needs to write there (copy the project somewhere writable)"
        )
    with service_lock(project.root):
        try:
            fod._connect()
        except (fos.ServiceException, ConnectionError, OSError) as e:
            _stop_service()
            log_path = project.database_dir / "log" / "mongo.log"
            raise StoreError(
                f"the project's database did not start ({type(e).__name__}); see {log_path}"
            ) from None


# WiredTiger's defaults preallocate three 100 MB journal files per database: 300 MB for a
# project that may hold a few MB of labels (and for every temporary test project). Small,
# unpreallocated journal files keep the same durability (WiredTiger starts a new file when one
# is full and removes old ones after each checkpoint).
MONGOD_EXTRA_ARGS = ["--wiredTigerEngineConfigString=log=(prealloc=false,file_max=16MB)"]


def _isolate_database_service() -> None:
    """Make FiftyOne attach only to a mongod serving *this* database dir.

    FiftyOne's ``DatabaseService`` attaches to any running fieldguide-less FiftyOne database
    service of the same user, whatever its ``--dbpath``: two projects open at once (or a test
    run beside a project) would share one database. This subclass searches for a service whose
    command line also names the same mongod and ``--dbpath``.
    """
    import fiftyone.core.service as fos
    import fiftyone.service.util as fosu

    if getattr(fos.DatabaseService, "_fieldguide_isolated", False):
        return

    class ProjectDatabaseService(fos.DatabaseService):
        _fieldguide_isolated = True

        @property
        def command(self):
            return super().command + MONGOD_EXTRA_ARGS

        def start(self):
            key = self._service_args + self.command[:3]  # ... mongod --dbpath DIR
            for process in fosu.find_processes_by_args(key):
                try:
                    if fosu.send_ipc_message(process, ("register", os.getpid())) is True:
                        self.attached = True
                        self.child = process
                        return
                except IOError:
                    log.warning("database service %s did not respond", process.pid)
            fos.Service.start(self)

    fos.DatabaseService = ProjectDatabaseService


def release_database() -> None:
    """Disconnect and stop the embedded MongoDB this process started (before its folder is
    deleted, e.g. a temporary project); the next store call starts it again."""
    global _configured_for
    import sys

    if "fiftyone" not in sys.modules:
        return
    _stop_service()
    _configured_for = None


def _stop_service() -> None:
    """Disconnect, stop the mongod this process started, and forget its port: the next
    connection starts (or finds) the service of whatever database dir is configured then."""
    import fiftyone.core.odm.database as fod

    fod._disconnect()
    fod._connection_kwargs.pop("port", None)
    fod._connection_kwargs.pop("host", None)
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)  # FiftyOne set it when it started mongod
    service = getattr(fod, "_db_service", None)
    if service is not None:
        try:
            service.stop()
        except Exception:  # noqa: BLE001 - an already-stopped service is fine
            pass
        fod._db_service = None


def _reconnect(project: Project, db_dir: str, uri: str) -> None:
    """FiftyOne was imported for another project in this process: move it to this one."""
    import fiftyone as fo

    if fo.config.database_dir == db_dir and (fo.config.database_uri or "") == uri:
        return
    _stop_service()
    fo.config.database_dir = db_dir
    fo.config.database_uri = uri or None
    fo.config.database_validation = False


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
    ids, paths = ds.values(["id", "filepath"])
    moved = {}
    for sid, path in zip(ids, paths):
        p = Path(path)
        if p.is_relative_to(old_root):
            candidate = new_root / p.relative_to(old_root)
            if candidate.exists():
                moved[sid] = str(candidate)
    if moved:
        ds.set_values("filepath", moved, key_field="id")
        log.info("project moved from %s: %d file paths follow it", old_root, len(moved))
    return len(moved)


def _declare_schema(ds: "fo.Dataset") -> None:
    import fiftyone as fo

    ds.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    ds.add_sample_field("votes", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications)
    ds.add_sample_field("origin", fo.StringField)
    ds.add_sample_field("parent_id", fo.StringField)
    ds.add_sample_field("filehash", fo.StringField)
    ds.add_sample_field("location", fo.EmbeddedDocumentField, embedded_doc_type=fo.GeoLocation)
    ds.add_sample_field("observed_at", fo.DateTimeField)
    ds.add_sample_field("observer", fo.StringField)
    ds.add_sample_field(
        "label_history",
        fo.ListField,
        subfield=fo.EmbeddedDocumentField,
        embedded_doc_type=fo.DynamicEmbeddedDocument,
    )
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

    One query per field (``values``), never a loop over samples.
    """
    import pandas as pd

    fields = list(fields)
    ids, paths, labels, tags, origins, *extra = ds.values(
        ["id", "filepath", "ground_truth.label", "tags", "origin", *fields]
    )
    df = pd.DataFrame(
        {
            "id": ids,
            "filepath": paths,
            "label": labels,
            "split": [split_of(t) for t in tags],
            "origin": origins,
        }
    )
    for name, values in zip(fields, extra):
        df[name] = values
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
) -> int:
    """Set ``ground_truth`` of the samples in ``labels`` (sample id -> label, None removes it).

    Every change appends ``{old, new, source, actor, time, run_id}`` to the sample's
    ``label_history`` and the warehouse's ``label_events``; nothing overwrites a label
    silently. A label equal to the current one is a confirmation: recorded in history, the
    label untouched. Unknown sample ids and unknown classes are errors (nothing is written).
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
    missing = set(ids) - set(found_ids)
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
    if unknown:
        add_classes(ds, unknown)
    when = now()
    new_gt, new_hist, events, changed = [], [], [], 0
    for sid, old, hist in zip(found_ids, old_labels, histories):
        new = labels[sid]
        entry = fo.DynamicEmbeddedDocument(
            old=old, new=new, source=source, actor=actor, time=when, run_id=run_id
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
            }
        )
    # history first: a crash between the two writes leaves a history entry, never a silent change
    view.set_values("label_history", new_hist)
    view.set_values("ground_truth", new_gt)
    warehouse(project).write("label_events", events)
    return changed


def snapshot_samples(project: Project, ds) -> int:
    """Mirror every sample's label, split, origin, prediction, pseudo-label and noise score to
    the warehouse.

    The dashboards read only the warehouse; each step that changes these calls this (one
    bulk query, one bulk write). Samples no longer in the store are removed.
    """
    schema = ds.get_field_schema()
    fields = [f for f in ("noise_score", "label_issue") if f in schema]
    for field in ("prediction", "pseudo_label"):
        if field in schema:
            fields += [f"{field}.label", f"{field}.confidence"]
    df = samples_table(ds, fields)
    df = df.rename(columns={"id": "sample_id", "prediction.label": "predicted_label",
                            "prediction.confidence": "confidence", "pseudo_label.label": "pseudo_label",
                            "pseudo_label.confidence": "pseudo_confidence"})
    for col in ("predicted_label", "confidence", "noise_score", "label_issue", "pseudo_label",
                "pseudo_confidence"):
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
    if values:
        ds.set_values(field, dict(values), key_field="id")


def as_array(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)
