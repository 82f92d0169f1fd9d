"""What a project holds: samples per split, class and origin, rejects, runs."""

from __future__ import annotations

from pathlib import Path

from fieldguide.config import Project
from fieldguide.platform import store


def project_status(project: Project) -> dict:
    """A JSON-ready summary of the project (the store and the warehouse)."""
    wh = store.warehouse(project)
    out: dict = {
        "project": str(project.root),
        "dataset": project.dataset_name,
        "samples": 0,
        "classes": 0,
        "splits": {},
        "origins": {},
        "per_class": {},
        "rejects": 0,
        "runs": [],
        "app_plugin": str(Path(__file__).resolve().parent.parent / "plugins" / "curator"),
    }
    store.configure_fiftyone(project)
    import fiftyone as fo

    if fo.dataset_exists(project.dataset_name):
        ds = store.dataset(project, create=False)
        out["samples"] = len(ds)
        counts = ds.count_values("ground_truth.label")
        counts.pop(None, None)
        out["per_class"] = dict(sorted(counts.items()))
        out["classes"] = len(counts)
        tags = ds.count_sample_tags()
        out["splits"] = {s: tags[s] for s in store.SPLITS if s in tags}
        out["pseudo_labeled"] = tags.get("pseudo_labeled", 0)  # pseudo-labels waiting for a curator
        origins = ds.count_values("origin")
        out["origins"] = {str(k): v for k, v in origins.items()}
    if project.warehouse_path.exists():
        last = wh.last_run("ingest")
        if last:
            n = wh.query("SELECT count(*) AS n FROM rejects WHERE run_id = ?", [last["run_id"]])
            out["rejects"] = int(n.iloc[0, 0])
        runs = wh.query(
            "SELECT run_id, kind, status, started, finished FROM runs ORDER BY started DESC LIMIT 20"
        )
        out["runs"] = [
            {k: (str(v) if v is not None and k in ("started", "finished") else v) for k, v in r.items()}
            for r in runs.to_dict("records")
        ]
        out["runs_total"] = int(wh.query("SELECT count(*) FROM runs").iloc[0, 0])
    return out
