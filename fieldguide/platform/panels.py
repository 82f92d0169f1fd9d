"""What the App's fieldguide panels show, as plain data: a sample's card and the project's counts.

The plugin (``fieldguide/plugins/curator``) renders these; keeping them here makes them testable
without the App and usable from scripts.
"""

from __future__ import annotations

from fieldguide.config import Project
from fieldguide.platform import store

SIGNAL_FIELDS = ("noise_score", "label_issue", "label_quality", "knn_disagreement", "outlier_score",
                 "annotator_agreement", "consensus_label", "entropy_aum", "mistakenness", "uniqueness",
                 "near_duplicate_of")


def sample_card(project: Project, sample_id: str) -> dict:
    """A sample's label, prediction, label history (old → new, source, actor, time), votes and signals."""
    ds = store.dataset(project, create=False)
    sample = ds[sample_id]
    schema = ds.get_field_schema()
    pred = sample["prediction"] if "prediction" in schema else None
    votes = sample["votes"] if "votes" in schema else None
    return {
        "id": sample.id,
        "filepath": sample.filepath,
        "label": sample.ground_truth.label if sample.ground_truth else None,
        "predicted": pred.label if pred is not None else None,
        "confidence": pred.confidence if pred is not None else None,
        "history": [
            {"old": e.old, "new": e.new, "source": e.source, "actor": e.actor,
             "time": str(e.time) if e.time else None, "run_id": getattr(e, "run_id", None)}
            for e in (sample.label_history or [])
        ],
        "votes": [{"annotator": c.annotator if "annotator" in c else None, "label": c.label}
                  for c in (votes.classifications if votes is not None else [])],
        "signals": {f: sample[f] for f in SIGNAL_FIELDS if f in schema and sample[f] is not None},
    }


def project_counts(project: Project) -> dict:
    """Counts to review / pushed / answered and the last training run's test metrics."""
    ds = store.dataset(project, create=False)
    wh = store.warehouse(project)
    tags = ds.count_sample_tags()
    tasks = wh.query("SELECT status, count(*) AS n FROM relabel_tasks GROUP BY status")
    by_status = dict(zip(tasks["status"], tasks["n"])) if not tasks.empty else {}
    out = {"samples": len(ds), "to_review": tags.get("to_review", 0),
           "pushed": int(sum(by_status.values())), "answered": int(by_status.get("answered", 0)),
           "last_run": None}
    run = wh.query("SELECT run_id, kind FROM runs WHERE kind IN ('train', 'retrain', 'evaluate') "
                   "AND status = 'completed' ORDER BY finished DESC LIMIT 1")
    if not run.empty:
        rid = run.iloc[0, 0]
        m = wh.query("SELECT name, value FROM metrics WHERE run_id = ? AND split = 'test'", [rid])
        out["last_run"] = {"run_id": rid, "kind": run.iloc[0, 1], **dict(zip(m["name"], m["value"]))}
    return out
