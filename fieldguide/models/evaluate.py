"""Evaluation of out-of-sample predictions: accuracy, F1, calibration, confusions, cost.

The metric functions take arrays (``y`` class indices, ``probs`` (n, C)); :func:`evaluate`
reads a predict run, scores one split, writes ``metrics``, ``class_metrics`` and ``confusions``
to the warehouse under its own run, and saves the confusion matrix as a PNG.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, top_k_accuracy_score

from fieldguide import names
from fieldguide.config import Project
from fieldguide.errors import ConfigError, NotReadyError
from fieldguide.platform import store
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)


def top_k_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of rows whose class is among the ``k`` most probable (1.0 when ``k`` >= the classes)."""
    if k >= probs.shape[1]:
        return 1.0
    return float(top_k_accuracy_score(y, probs, k=k, labels=np.arange(probs.shape[1])))


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: |accuracy - confidence| per confidence bin, weighted by the bin's share."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def load_cost_matrix(path: str | Path, classes: list[str]) -> np.ndarray:
    """A (C, C) cost matrix: 0 on the diagonal, 1 elsewhere, overridden by the CSV's rows.

    The CSV has columns ``true,predicted,cost`` with class names (FungiCLEF: predicting an edible
    species for a poisonous one costs more than the reverse).
    """
    C = len(classes)
    cost = np.ones((C, C)) - np.eye(C)
    if not path:
        return cost
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"evaluate.cost_matrix: {path} does not exist")
    index = {c: i for i, c in enumerate(classes)}
    with path.open(newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):
            try:
                t, p, c = row["true"].strip(), row["predicted"].strip(), float(row["cost"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{path}:{row_no}: expected columns true,predicted,cost") from None
            for name in (t, p):
                if name not in index:
                    raise ConfigError(f"{path}:{row_no}: unknown class {name!r}")
            cost[index[t], index[p]] = c
    return cost


def cost_score(y: np.ndarray, pred: np.ndarray, cost: np.ndarray) -> float:
    """Mean cost per sample of the predictions (lower is better; 0/1 costs give the error rate)."""
    return float(cost[y, pred].mean())


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str],
                           cost: np.ndarray | None = None) -> dict:
    """Top-1/5, macro-F1 (over the classes present in ``y``), ECE, cost, per-class P/R/F1, confusions."""
    y = np.asarray(y, dtype=int)
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=np.arange(len(classes)), zero_division=0
    )
    cm = confusion_matrix(y, pred, labels=np.arange(len(classes)))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = np.argwhere(off > 0)
    pairs = sorted(((int(off[i, j]), classes[i], classes[j]) for i, j in pairs), reverse=True)
    return {
        names.N: int(len(y)),
        names.TOP1: float((pred == y).mean()),
        names.TOP5: top_k_accuracy(y, probs, 5),
        names.MACRO_F1: float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        names.ECE: expected_calibration_error(y, probs),
        names.COST_SCORE: cost_score(y, pred, cost if cost is not None else 1 - np.eye(len(classes))),
        "per_class": [
            {"class": c, "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
             "support": int(support[i])}
            for i, c in enumerate(classes) if support[i] > 0 or cm[:, i].sum() > 0
        ],
        "confusion": cm,
        "most_confused": [{"true": t, "predicted": p, "count": n} for n, t, p in pairs[:10]],
    }


def record_metrics(wh, run_id: str, split: str, m: dict, classes: list[str], *, headline: bool = True) -> None:
    """Write ``classification_metrics`` output to the warehouse: ``metrics`` (with ``headline``),
    ``class_metrics`` and ``confusions`` under ``run_id``."""
    if headline:
        wh.write("metrics", [{"run_id": run_id, "split": split, "name": k, "value": float(m[k])}
                             for k in names.HEADLINE_METRICS])
    wh.write("class_metrics", [dict(run_id=run_id, split=split, **r) for r in m["per_class"]])
    cm = m["confusion"]
    wh.write("confusions", [
        {"run_id": run_id, "split": split, "true_label": classes[i], "predicted_label": classes[j],
         "count": int(cm[i, j])} for i, j in np.argwhere(cm > 0)
    ])


@writes('evaluate')
def evaluate(project: Project, *, split: str = "test", predict_run: str | None = None) -> dict:
    """Score the latest predictions on ``split``; write the warehouse rows and the confusion PNG.
    ``labels_changed`` (and ``labels_changed_ids``) names the split's samples whose label a review
    (a curator, Label Studio) changed: on the test split, a baseline that moved."""
    from fieldguide.models.plots import plot_confusion
    from fieldguide.models.predict import load_pred_probs

    pp = load_pred_probs(project, predict_run)
    labels = pp.labels
    mask = (pp.splits == split) & (labels != "")
    if split == "train":  # out-of-fold predictions: honest on the training split too
        mask &= pp.fold >= 0
    if not mask.any():
        raise NotReadyError(f"no labeled {split!r} samples with predictions (splits present: "
                            f"{', '.join(sorted(set(pp.splits.tolist()) - {''}))})")
    index = {c: i for i, c in enumerate(pp.classes)}
    y = np.array([index[v] for v in labels[mask]])
    cost = load_cost_matrix(project.config.evaluate.cost_matrix, pp.classes)
    m = classification_metrics(y, pp.pred_probs[mask], pp.classes, cost)
    wh = store.warehouse(project)
    changed = _relabeled(wh, {sid: lab for sid, lab, keep in zip(pp.sample_ids, labels, mask) if keep})
    if changed:
        log.warning("%d %s label(s) were changed by review since ingest: this evaluation's baseline moved",
                    len(changed), split)
    with wh.run("evaluate", {"split": split, "predict_run": pp.run_id}) as run_id:
        rows = [{"run_id": run_id, "split": split, "name": k, "value": float(m[k])}
                for k in names.HEADLINE_METRICS]
        rows.append({"run_id": run_id, "split": split, "name": names.LABELS_CHANGED, "value": float(len(changed))})
        cost = _cost(wh, _predict_backbones(wh, pp.run_id) or [project.config.models.backbone])
        rows += [{"run_id": run_id, "split": names.COST_SPLIT, "name": k, "value": v} for k, v in cost.items()]
        wh.write("metrics", rows)
        record_metrics(wh, run_id, split, m, pp.classes, headline=False)
        png = plot_confusion(m["confusion"], pp.classes, project.run_dir(run_id) / "confusion.png",
                             f"{split}: top-1 {m['top1']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    return {
        "run_id": run_id, "predict_run": pp.run_id, "split": split, "n": m["n"], "top1": m["top1"],
        "top5": m["top5"], "macro_f1": m["macro_f1"], "ece": m["ece"], "cost_score": m["cost_score"],
        "most_confused": m["most_confused"], "confusion_png": str(png),
        "labels_changed": len(changed), "labels_changed_ids": changed,
    }


def _relabeled(wh, labels: dict[str, str]) -> list[str]:
    """The samples of ``labels`` (sample id -> current label) whose label a review (a curator or
    Label Studio) changed: the label before the first review event differs from today's."""
    df = wh.query("SELECT sample_id, old, time FROM label_events WHERE source IN ('curator', 'labelstudio') "
                  "ORDER BY time, event_id")
    if df.empty:
        return []
    first = df.drop_duplicates("sample_id").set_index("sample_id")["old"]
    return sorted(sid for sid, old in first.items() if sid in labels and (old or "") != (labels[sid] or ""))


def _predict_backbones(wh, run_id: str) -> list[str]:
    """The backbones whose embeddings a predict run used (several: a head across backbones)."""
    import json

    df = wh.query("SELECT config FROM runs WHERE run_id = ?", [run_id])
    if df.empty:
        return []
    config = json.loads(df.iloc[0, 0])
    return list(config.get("backbones", {}).get("names", [])) or [b for b in [config.get("backbone")] if b]


def _cost(wh, backbones: list[str]) -> dict[str, float]:
    """The cost of embedding an image with every one of ``backbones``: parameters and MACs add up,
    images/s is that of running them one after the other; a cost not known for each is left out."""
    marks = ", ".join("?" * len(backbones))
    costs = wh.query(f"SELECT * FROM backbone_costs WHERE backbone IN ({marks})", backbones)
    if costs.empty or costs["backbone"].nunique() < len(set(backbones)):
        return {}
    out = {}
    for k in names.COST_METRICS:
        v = pd.to_numeric(costs[k], errors="coerce")
        if v.notna().all():
            out[k] = float(1 / (1 / v).sum()) if k == names.IMAGES_PER_S else float(v.sum())
    return out
