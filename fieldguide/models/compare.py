"""Run comparison: a training run's test scores against the run before it, overall and per class."""

from __future__ import annotations

from fieldguide.config import Project
from fieldguide.platform import store


def compare_runs(project: Project, run_id: str, previous: str | None = None) -> dict:
    """Test top-1 / macro-F1 of ``run_id`` against ``previous`` (default: the training run before it),
    and the per-class F1 changes (largest first)."""
    wh = store.warehouse(project)
    if previous is None:
        df = wh.query(
            "SELECT r.run_id FROM runs r WHERE r.kind IN ('train', 'retrain') AND r.status = 'completed' "
            "AND r.run_id <> ? AND r.started < (SELECT started FROM runs WHERE run_id = ?) "
            "AND EXISTS (SELECT 1 FROM metrics m WHERE m.run_id = r.run_id AND m.split = 'test') "
            "ORDER BY r.started DESC LIMIT 1", [run_id, run_id])
        previous = None if df.empty else df.iloc[0, 0]
    out: dict = {"run_id": run_id, "previous": previous}

    def headline(rid):
        m = wh.query("SELECT name, value FROM metrics WHERE run_id = ? AND split = 'test'", [rid])
        return dict(zip(m["name"], m["value"])) if not m.empty else {}

    now_m = headline(run_id)
    out.update(top1=now_m.get("top1"), macro_f1=now_m.get("macro_f1"))
    if previous is None:
        return out
    prev_m = headline(previous)
    out.update(previous_top1=prev_m.get("top1"), previous_macro_f1=prev_m.get("macro_f1"))
    if out["top1"] is not None and out["previous_top1"] is not None:
        out["delta_top1"] = out["top1"] - out["previous_top1"]
        out["delta_macro_f1"] = out["macro_f1"] - out["previous_macro_f1"]
    per = wh.query(
        "SELECT a.class, a.f1 AS f1, b.f1 AS previous_f1, a.f1 - b.f1 AS delta FROM class_metrics a "
        "JOIN class_metrics b ON a.class = b.class AND a.split = b.split "
        "WHERE a.run_id = ? AND b.run_id = ? AND a.split = 'test' AND a.f1 <> b.f1 "
        "ORDER BY abs(a.f1 - b.f1) DESC, a.class LIMIT 20", [run_id, previous])
    out["class_changes"] = per.to_dict("records")
    return out
