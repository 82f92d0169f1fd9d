"""Evaluation of out-of-sample predictions: accuracy, F1, calibration, confusions, cost.

The metric functions take arrays (``y`` class indices, ``probs`` (n, C)); :func:`evaluate`
reads a predict run, scores one split, writes ``metrics``, ``class_metrics`` and ``confusions``
to the warehouse under its own run, and saves the confusion matrix as a PNG.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, top_k_accuracy_score

from fieldguide import names
from fieldguide.config import Project
from fieldguide.errors import NotReadyError
from fieldguide.models.costs import (cost_score, expected_cost_decision, fungiclef_track3,  # noqa: F401
                                    load_cost_matrix, project_costs)  # load_cost_matrix: public here before
from fieldguide.models.open_set import open_set_auroc
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
        "most_confused": _top_pairs(cm, classes),
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
    cfg = project.config
    cost, dangerous = project_costs(cfg.classes.costs, cfg.evaluate.cost_matrix, pp.classes)
    m = classification_metrics(y, pp.pred_probs[mask], pp.classes, cost)
    extra = tree_costs_open_set(project, pp, mask, y, cost, dangerous)
    wh = store.warehouse(project)
    changed = _relabeled(wh, {sid: lab for sid, lab, keep in zip(pp.sample_ids, labels, mask) if keep})
    if changed:
        log.warning("%d %s label(s) were changed by review since ingest: this evaluation's baseline moved",
                    len(changed), split)
    with wh.run("evaluate", {"split": split, "predict_run": pp.run_id}) as run_id:
        rows = [{"run_id": run_id, "split": split, "name": k, "value": float(m[k])}
                for k in names.HEADLINE_METRICS]
        rows.append({"run_id": run_id, "split": split, "name": names.LABELS_CHANGED, "value": float(len(changed))})
        rows += [{"run_id": run_id, "split": split, "name": k, "value": float(v)} for k, v in extra.items()
                 if isinstance(v, float)]
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
        "labels_changed": len(changed), "labels_changed_ids": changed, **extra,
    }


def tree_costs_open_set(project: Project, pp, mask: np.ndarray, y: np.ndarray, cost: np.ndarray,
                        dangerous: np.ndarray | None) -> dict:
    """The metrics beyond the class level for the rows ``mask`` of a predict run ``pp`` (true classes
    ``y``): per rank of the class tree (``top1_<rank>``, ``macro_f1_<rank>``, ``rank_confusions``,
    ``mean_taxonomic_distance``), back-off at ``models.backoff_threshold``, the cost of the
    expected-cost rule beside argmax's (and FungiCLEF's track-3 score with dangerous classes), and
    ``open_set_auroc`` (with each single score's) when the rows hold classes absent from training."""
    from fieldguide.models.predict import project_tree
    from fieldguide.models.taxonomy import backoff_metrics, rank_metrics

    probs = pp.pred_probs[mask]
    tree = project_tree(project, pp.classes)
    ranked = rank_metrics(y, probs, tree)
    out: dict = {k: v for k, v in ranked.items() if not k.startswith("confusion_")}
    out["rank_confusions"] = {rank: _top_pairs(ranked[f"confusion_{rank}"], tree.level_names(lv))
                              for lv, rank in enumerate(tree.levels) if lv > 0}
    threshold = project.config.models.backoff_threshold
    out["backoff_threshold"] = float(threshold)
    out.update(backoff_metrics(y, probs, tree, threshold))
    argmax, bayes = probs.argmax(axis=1), expected_cost_decision(probs, cost)
    out["cost_score_expected"] = cost_score(y, bayes, cost)
    if dangerous is not None:
        out.update({k: v for k, v in fungiclef_track3(y, argmax, dangerous).items()})
        out["fungiclef_track3_expected"] = fungiclef_track3(y, bayes, dangerous)["fungiclef_track3"]
    trained = set(pp.labels[(pp.splits == "train") & (pp.labels != "")].tolist())
    unknown = ~np.isin(pp.labels[mask], list(trained))
    if pp.open_set is not None and unknown.any() and not unknown.all():
        for name, score in pp.open_set.items():
            s = score[mask]
            ok = ~np.isnan(s)
            key = "open_set_auroc" if name == "combined" else f"open_set_auroc_{name}"
            out[key] = open_set_auroc(unknown[ok], s[ok]) if ok.any() else float("nan")
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in out.items()}


def _top_pairs(cm: np.ndarray, names_, n: int = 10) -> list[dict]:
    """The ``n`` largest off-diagonal counts of a confusion matrix, as true/predicted/count."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = sorted(((int(off[i, j]), names_[i], names_[j]) for i, j in np.argwhere(off > 0)), reverse=True)
    return [{"true": t, "predicted": p, "count": c} for c, t, p in pairs[:n]]


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
