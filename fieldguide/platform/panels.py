"""What the App's fieldguide panels show, as plain data: a sample's card and the project's counts.

The plugin (``fieldguide/plugins/curator``) renders these; keeping them here makes them testable
without the App and usable from scripts.
"""

from __future__ import annotations

import dataclasses
import logging

from fieldguide.config import Project
from fieldguide.errors import FieldguideError
from fieldguide.platform import review, store
from fieldguide.platform.labelstudio.records import py_time, task_records

log = logging.getLogger(__name__)

SIGNAL_FIELDS = ("noise_score", "label_issue", "label_quality", "knn_disagreement", "outlier_score",
                 "annotator_agreement", "consensus_label", "consensus_rank", "error_rank", "entropy_aum",
                 "mistakenness", "uniqueness", "near_duplicate_of")
#: seconds the panel waits for Label Studio when it looks up the project of a task link
LINK_TIMEOUT_S = 3.0


def _time(v) -> str | None:
    v = py_time(v)
    return v.strftime("%Y-%m-%d %H:%M:%S") if v is not None else None


def labelstudio_url(project: Project) -> str | None:
    """The Label Studio server the project uses, when known: ``labelstudio.url``, else the local
    server's recorded address (None when it never started)."""
    from fieldguide.platform.labelstudio.server import read_state

    if project.config.labelstudio.url:
        return project.config.labelstudio.url.rstrip("/")
    state = read_state(project)
    return state.get("url") if state else None


_PROJECT_IDS: dict[tuple[str, str], int] = {}  # (server, project title) → Label Studio project id


def _labelstudio_project_id(conn, title: str) -> int | None:
    from fieldguide.platform.labelstudio.client import Client

    if (conn.url, title) not in _PROJECT_IDS:
        found = Client(conn).find_project(title)
        if found is None:
            return None
        _PROJECT_IDS[conn.url, title] = int(found.id)
    return _PROJECT_IDS[conn.url, title]


def task_link(project: Project, task_id: int) -> str | None:
    """The task's page in Label Studio's data manager, or None when the server is unknown or does
    not answer within :data:`LINK_TIMEOUT_S` (the lookup of its project is cached per server)."""
    from fieldguide.platform.labelstudio.client import connection
    from fieldguide.platform.labelstudio.tasks import project_title

    try:
        conn = dataclasses.replace(connection(project), timeout_s=LINK_TIMEOUT_S, retries=0)
        pid = _labelstudio_project_id(conn, project_title(project))
    except FieldguideError as e:
        log.info("no link to Label Studio task %s: %s", task_id, e)
        return None
    return f"{conn.url}/projects/{pid}/data?task={task_id}" if pid is not None else None


def sample_card(project: Project, sample_id: str, *, links: bool = True) -> dict:
    """A sample's label, prediction (its back-off answer, its open-set ``unknown_score``), label
    history (old → new, source, actor, time), votes, signals, noise score, review state and Label Studio task (id, status, link; None when never
    pushed). ``links``: look up the task's page on the server (else ``task["url"]`` is None)."""
    ds = store.dataset(project, create=False)
    sample = ds[sample_id]
    schema = ds.get_field_schema()
    pred = sample["prediction"] if "prediction" in schema else None
    backed = sample["prediction_backoff"] if "prediction_backoff" in schema else None
    votes = sample["votes"] if "votes" in schema else None
    record = task_records(project, sample.id).get(sample.id)
    task = None
    if record is not None and record.get("task_id") is not None:
        task = {"task_id": int(record["task_id"]), "status": record.get("status"),
                "pushed": _time(record.get("pushed")), "answered": _time(record.get("answered")),
                "url": task_link(project, int(record["task_id"])) if links else None}
    return {
        "id": sample.id,
        "filepath": sample.filepath,
        "label": sample.ground_truth.label if sample.ground_truth else None,
        "predicted": pred.label if pred is not None else None,
        "confidence": pred.confidence if pred is not None else None,
        "backoff": ({"rank": backed["rank"], "label": backed.label, "confidence": backed.confidence}
                    if backed is not None else None),
        "unknown_score": sample["unknown_score"] if "unknown_score" in schema else None,
        "history": [
            {"old": e.old, "new": e.new, "source": e.source, "actor": e.actor,
             "time": _time(e.time), "run_id": getattr(e, "run_id", None)}
            for e in (sample.label_history or [])
        ],
        "votes": [{"annotator": c.annotator if "annotator" in c else None, "label": c.label}
                  for c in (votes.classifications if votes is not None else [])],
        "signals": {f: sample[f] for f in SIGNAL_FIELDS if f in schema and sample[f] is not None},
        "noise_score": sample["noise_score"] if "noise_score" in schema else None,
        "review_state": sample[review.FIELD] if review.FIELD in schema else None,
        "tags": list(sample.tags),
        "task": task,
        "labelstudio": labelstudio_url(project),
    }


def project_counts(project: Project) -> dict:
    """The review states' counts (``review``: every state, 0 when none), Label Studio tasks by
    status (``tasks``), the samples, and the last training run's test metrics (``last_run``)."""
    ds = store.dataset(project, create=False)
    wh = store.warehouse(project)
    tasks = wh.query("SELECT status, count(*) AS n FROM relabel_tasks WHERE project = ? GROUP BY status "
                     "ORDER BY status", [project.config.project.name])
    out = {"samples": len(ds), "review": review.counts(ds),
           "tasks": {str(s): int(n) for s, n in zip(tasks["status"], tasks["n"])},
           "labelstudio": labelstudio_url(project), "last_run": None}
    run = wh.query("SELECT run_id, kind, finished FROM runs WHERE kind IN ('train', 'retrain', 'evaluate') "
                   "AND status = 'completed' ORDER BY finished DESC LIMIT 1")
    if not run.empty:
        rid = run.iloc[0, 0]
        m = wh.query("SELECT name, value FROM metrics WHERE run_id = ? AND split = 'test' ORDER BY name", [rid])
        out["last_run"] = {"run_id": rid, "kind": run.iloc[0, 1], "finished": _time(run.iloc[0, 2]),
                           "metrics": {str(k): float(v) for k, v in zip(m["name"], m["value"])}}
    return out
