"""Push flagged samples to Label Studio: one project per fieldguide project, one task per sample.

:func:`push` makes (or updates) the Label Studio project with the single-choice config of
:mod:`.tasks`, the local-files storages that serve the images (:mod:`.storages`) and a "to
review" tab, and imports one task per sample. The server's task list and the warehouse's
``relabel_tasks`` (:mod:`.records`) make it idempotent: a sample never gets a second task.
Nothing is written to the store or the warehouse before the server has answered; a pushed
sample's review state becomes ``pushed``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import FieldguideError, NotReadyError
from fieldguide.platform import review, samples, store
from fieldguide.platform.labelstudio.client import Client, connection
from fieldguide.platform.labelstudio.records import CLOSED, DELETED, SETTLED, pushed_record, py_time, task_records
from fieldguide.platform.labelstudio.storages import protected_paths, served_folders, storage_problem
from fieldguide.platform.labelstudio.tasks import (
    class_paths, label_config, pre_annotation, preselected, project_title, task_rows,
)
from fieldguide.platform.lock import writes
from fieldguide.platform.warehouse import now

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PushReport:
    pushed: int = 0
    already_pushed: int = 0
    #: samples queued again after a decision whose settled task Label Studio keeps (one per sample)
    decided_before: list[str] = dataclasses.field(default_factory=list)
    config_updated: bool = False
    project_id: int | None = None
    url: str = ""
    run_id: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _storage_folders(ds, pushed_dirs: set[Path], document_root: str, protected: Sequence[Path]) -> list[Path]:
    """The folders Label Studio serves: those of every image of the store that may be served
    (a stable set, push after push), which must include those of the pushed images."""
    servable = {
        d for d in {Path(p).parent for p in ds.values("filepath")}
        if not storage_problem(d, document_root=document_root, protected=protected)
    }
    return served_folders(pushed_dirs | servable, document_root=document_root, protected=protected)


def _waiting(ds, ids: list[str]) -> set[str]:
    """The samples of ``ids`` whose review state is ``to_review`` (queued, not pushed)."""
    if not samples.has_field(ds, review.FIELD):
        return set()
    table = samples.arrays(ds, [review.FIELD], ids=ids)
    return {sid for sid, state in zip(table["id"], table[review.FIELD]) if state == review.TO_REVIEW}


def _model_version(project: Project, ds) -> str:
    last = store.warehouse(project).last_run("predict") if project.warehouse_path.exists() else None
    if last:
        return str(last["run_id"])
    return str(ds.info.get("prediction_model") or "fieldguide")


@writes("relabel push")
def push(project: Project, *, view: str = "to_review", limit: int | None = None,
         sample_ids: Sequence[str] | None = None) -> PushReport:
    """Push the samples of the saved ``view`` (the first ``limit``) to Label Studio.

    ``sample_ids`` pushes those samples instead (a selection in the App). A sample that already
    has a task (on the server, or recorded in ``relabel_tasks``) gets no second one; classes
    added since the last push are added to the labeling config.
    """
    ds = store.dataset(project, create=False)
    if sample_ids is not None:
        samples = ds.select(list(sample_ids), ordered=True)
        if len(samples) != len(set(sample_ids)):
            raise NotReadyError(f"{len(set(sample_ids)) - len(samples)} selected sample(s) are not in the store")
        view = "selection"
    else:
        if not ds.has_saved_view(view):
            names = ", ".join(ds.list_saved_views()) or "none yet"
            raise NotReadyError(f"no saved view {view!r} (saved views: {names}; run 'fieldguide flag' first)")
        samples = ds.load_saved_view(view)
    if limit is not None:
        if limit < 0:
            raise FieldguideError(f"--limit must be 0 or more (got {limit})")
        samples = samples.limit(limit)
    conn = connection(project)
    classes = store.classes(ds)
    rows, image_dirs = task_rows(project, samples, conn.document_root, classes=classes)
    protected = protected_paths(project)
    folders = _storage_folders(ds, image_dirs, conn.document_root, protected)
    config = label_config(classes, class_paths(project))
    client = Client(conn)
    client.check()  # nothing is written before the server has answered
    report = PushReport(url=conn.url)
    wh = store.warehouse(project)
    name = project.config.project.name
    with wh.run("relabel_push", {"view": view, "limit": limit, "url": conn.url}) as run_id:
        report.run_id = run_id
        proj, report.config_updated = client.ensure_project(
            project_title(project), config, f"fieldguide project {name}: relabel flagged samples"
        )
        report.project_id = proj.id
        client.ensure_storages(proj.id, folders, protected)
        client.ensure_review_tab(proj.id)
        on_server = {
            (t.data or {}).get("sample_id"): t for t in client.tasks(proj.id, with_annotations=False)
        }
        known = task_records(project)
        requeued = _waiting(ds, [r["data"]["sample_id"] for r in rows])
        version = _model_version(project, ds)
        class_set = set(store.classes(ds))
        new, recovered = [], []
        for row in rows:
            sid = row["data"]["sample_id"]
            if sid in on_server:
                rec = known.get(sid)
                task = on_server[sid]
                if rec is not None and rec["status"] in (CLOSED, *SETTLED) and sid in requeued:
                    # decided once, queued again (the evidence changed): one task per sample, so
                    # the new decision is the curator's (the App, 'fieldguide review')
                    report.decided_before.append(sid)
                    continue
                report.already_pushed += 1
                if rec is None or rec["task_id"] != task.id or rec["status"] == DELETED:
                    recovered.append(pushed_record(name, sid, task.id, py_time(task.created_at)))
                continue
            task = {"data": row["data"]}
            pred, conf = row["prediction"]
            if pred in class_set and preselected(conf, project.config.labelstudio.preselect_confidence):
                task["predictions"] = [pre_annotation(pred, conf, version)]
            new.append(task)
        if new:
            client.import_tasks(proj.id, new)
            by_sample = {
                (t.data or {}).get("sample_id"): t.id for t in client.tasks(proj.id, with_annotations=False)
            }
            when = now()
            recovered += [
                pushed_record(name, t["data"]["sample_id"], by_sample[t["data"]["sample_id"]], when)
                for t in new if t["data"]["sample_id"] in by_sample
            ]
            report.pushed = len(new)
        if recovered:
            wh.write("relabel_tasks", recovered)
            review.set_states(ds, {r["sample_id"]: review.PUSHED for r in recovered})
            store.snapshot_samples(project, ds)
    log.info("pushed %d, already pushed %d (project %s)", report.pushed, report.already_pushed, proj.id)
    return report
