"""The warehouse's ``relabel_tasks`` table: which task fieldguide pushed for which sample.

One row per sample, rewritten as the task moves on (:data:`PUSHED`, then :data:`APPLYING` while
an answer is applied, :data:`ANSWERED`, :data:`SKIPPED`, or :data:`DELETED` / :data:`ORPHANED`
when the task or the sample is gone, :data:`CLOSED` when a curator decided in the App or the
CLI and fieldguide closed the task: :mod:`.closing`). Push and pull both read it: only tasks recorded here
are ever applied.
"""

from __future__ import annotations

from fieldguide.config import Project
from fieldguide.platform import store
from fieldguide.platform.warehouse import now

PUSHED, APPLYING, ANSWERED, SKIPPED, DELETED, ORPHANED, CLOSED = (
    "pushed", "applying", "answered", "skipped", "deleted", "orphaned", "closed",
)
SETTLED = (ANSWERED, SKIPPED, ORPHANED)
#: a task that a curator's decision elsewhere can still close
OPEN = (PUSHED, APPLYING, ANSWERED, SKIPPED)


def pushed_record(name: str, sample_id: str, task_id: int, pushed=None) -> dict:
    """The row of a freshly pushed task of project ``name`` (pushed ``now()`` unless given)."""
    return {"project": name, "sample_id": sample_id, "task_id": task_id, "status": PUSHED,
            "pushed": pushed or now(), "answered": None, "answer": None}


def task_records(project: Project, sample_id: str | None = None) -> dict[str, dict]:
    """The ``relabel_tasks`` rows of the project (or of one sample), by sample id."""
    if not project.warehouse_path.exists():
        return {}
    sql, params = "SELECT * FROM relabel_tasks WHERE project = ?", [project.config.project.name]
    if sample_id is not None:
        sql, params = sql + " AND sample_id = ?", params + [sample_id]
    df = store.warehouse(project).query(sql, params)
    rows = {}
    for r in df.to_dict("records"):
        r = {k: (None if _isnull(v) else v) for k, v in r.items()}
        rows[r["sample_id"]] = r
    return rows


def _isnull(v) -> bool:
    try:
        import pandas as pd

        return v is None or (not isinstance(v, (list, dict, str)) and bool(pd.isna(v)))
    except (TypeError, ValueError):
        return False


def py_time(v):
    """A time read from the warehouse (pandas) or the SDK as a plain ``datetime`` (None stays None)."""
    if v is None:
        return None
    if hasattr(v, "to_pydatetime"):
        return v.to_pydatetime()
    return v
