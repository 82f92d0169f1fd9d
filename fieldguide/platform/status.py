"""What a project holds: samples per split, class and origin, taxonomic ranks, rejects, runs."""

from __future__ import annotations

from pathlib import Path

from fieldguide.config import Project
from fieldguide.platform import store
from fieldguide.platform.sources.taxonomy import rank_order


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
        "ranks": {},
        "rejects": 0,
        "label_changes": 0,
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
        out["label_changes"] = ds.count("label_history")  # entries, over every sample's history
        origins = ds.count_values("origin")
        out["origins"] = {str(k): v for k, v in origins.items()}
        out["ranks"] = _ranks(ds)
    if project.warehouse_path.exists():
        last = wh.last_run("ingest")
        if last:
            n = wh.query("SELECT count(*) AS n FROM rejects WHERE run_id = ? AND coalesce(kind, 'reject') = 'reject'", [last["run_id"]])
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


def _ranks(ds) -> dict[str, int]:
    """Rank -> number of distinct names over the samples' ``taxonomy``, coarse to fine."""
    if "taxonomy" not in ds.get_field_schema():
        return {}
    names: dict[str, set[str]] = {}
    orders = set()
    for taxonomy in ds.exists("taxonomy").values("taxonomy"):
        orders.add(tuple(taxonomy))
        for rank, name in taxonomy.items():
            names.setdefault(rank, set()).add(name)
    return {rank: len(names[rank]) for rank in rank_order(orders)}
