"""The ``flag`` step: signals from the stored embeddings and predictions, one noise score, the review queue.

Reads arrays from the store (labels, votes), the latest pred_probs and the cached embeddings;
computes the registered signals on the assessable samples; writes ``noise_score``,
``label_issue`` and the signal fields to the store in bulk, every signal to the warehouse
``signals`` table under the run, per-annotator quality to ``annotators``, the crowd's consensus
and each label's ``error_rank`` on the class tree (:mod:`fieldguide.curation.error_rank`), ``error_cost`` (the
expected cost of keeping the given label under ``classes.costs``) and ``cost_priority`` (noise score
x error cost); replaces the previous run's review tags, queues the flagged samples for review, and
with ``unknown`` the samples most likely of an unknown species (:func:`fieldguide.platform.review.requeue`:
not those a curator decided unless the evidence changed, not test samples unless
``include_test``; the reason in ``review_reason``) and saves the views ``to_review``, ``outliers``, ``near_duplicates`` and
``scarce_classes``.

A sample is assessable when it has a label, an out-of-sample prediction and an embedding, and
its class has at least ``MIN_CLASS_SAMPLES`` labeled samples; the others get no score (None)
and are counted as not assessable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fieldguide import names
from fieldguide.config import Project
from fieldguide.curation import plausibility, signals as sig  # plausibility registers its signal
from fieldguide.curation.error_rank import CONSENSUS_RANK, ERROR_RANK, ERROR_SEVERITY, taxonomy_evidence
from fieldguide.curation.knn_graph import GraphSettings, uniqueness
from fieldguide.curation.noise_score import flag_top, noise_score
from fieldguide.platform import review, samples, store
from fieldguide.platform.brain import brain_signals
from fieldguide.platform.fields import declare_fields, index_fields, save_view, set_tags, write_values
from fieldguide.platform.lock import writes
from fieldguide.platform.tree import class_tree

log = logging.getLogger(__name__)

MIN_CLASS_SAMPLES = 3
REVIEW_TAGS = ("outlier", "near_duplicate")  # the review queue's tag is review.QUEUE_TAG
#: signal arrays written to the store as sample fields (the rest go to the warehouse only)
STORE_FIELDS = {"label_quality": "label_quality", "outlier_score": "outlier_score",
                "knn_disagreement": "knn_disagreement", "annotator_agreement": "annotator_agreement",
                "entropy_aum": "entropy_aum", ERROR_SEVERITY: ERROR_SEVERITY, names.ERROR_COST: names.ERROR_COST,
                names.COST_PRIORITY: names.COST_PRIORITY}


@dataclass
class FlagReport:
    run_id: str
    assessed: int
    not_assessable: int
    flagged: int
    outliers: int
    near_duplicates: int
    signals: list[str]
    not_assessable_reasons: dict[str, int] = field(default_factory=dict)
    top: list[dict] = field(default_factory=list)
    queued: int = 0  # samples in the review queue after this run
    kept_decided: int = 0  # flagged again, left out: a curator decided and the evidence is the same
    test_left_out: int = 0  # flagged test samples left out of the queue (``include_test`` queues them)
    unknown_queued: int = 0  # samples queued as likely unknown species (``unknown``)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _votes_frame(votes_values, class_index: dict[str, int]) -> pd.DataFrame | None:
    rows, any_vote = [], False
    for v in votes_values:
        row = {}
        for c in (v.classifications if v is not None else []):
            if c.label in class_index:
                row[str(c["annotator"] if "annotator" in c else "unknown")] = class_index[c.label]
                any_vote = True
        rows.append(row)
    return pd.DataFrame(rows, dtype=float) if any_vote else None


@writes('flag')
def flag(project: Project, *, backbone: str | None = None, include_test: bool = False, unknown: int = 0) -> FlagReport:
    """Compute the signals and the review queue; see the module docstring. ``unknown``: also queue
    the ``unknown`` samples of highest ``unknown_score`` (likely a species no class covers)."""
    from fieldguide.models.costs import keep_label_cost, project_costs
    from fieldguide.models.embed import load_embeddings
    from fieldguide.models.predict import load_pred_probs

    weights = sig.check_weights(project.config.signals.weights)
    ds = store.dataset(project, create=False)
    pp = load_pred_probs(project)
    table = store.samples_table(ds, ["votes"]).set_index("id")
    try:
        emb_ids, X = load_embeddings(project, backbone, ds)
        emb_row = {s: i for i, s in enumerate(emb_ids)}
    except Exception as e:  # noqa: BLE001 - the label signals run without embeddings
        log.warning("no embeddings (%s): kNN and Datalab signals are left out", e)
        X, emb_row = None, {}
    pred_row = {s: i for i, s in enumerate(pp.sample_ids)}
    classes = pp.classes
    cost, _ = project_costs(project.config.classes.costs, project.config.evaluate.cost_matrix, classes)
    class_index = {c: i for i, c in enumerate(classes)}
    labeled = table[table["label"].notna()]
    counts = labeled["label"].value_counts()

    reasons: dict[str, int] = {}
    assess: list[str] = []
    for sid, row in table.iterrows():
        reason = None
        if row["label"] is None or pd.isna(row["label"]):
            reason = "no label"
        elif sid not in pred_row:
            reason = "no prediction"
        elif X is not None and sid not in emb_row:
            reason = "no embedding"
        elif row["label"] not in class_index:
            reason = "class unknown to the predictions"
        elif counts.get(row["label"], 0) < MIN_CLASS_SAMPLES:
            reason = f"class with fewer than {MIN_CLASS_SAMPLES} labeled samples"
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            assess.append(sid)

    wh = store.warehouse(project)
    with wh.run("flag", {"predict_run": pp.run_id, "backbone": backbone or project.config.models.backbone}) as run_id:
        values: dict[str, np.ndarray] = {}
        stats = None
        if len(assess) >= 2:
            sub = table.loc[assess]
            labels = np.array([class_index[v] for v in sub["label"]])
            probs = pp.pred_probs[[pred_row[s] for s in assess]]
            # cleanlab wants classes 0..K-1 that all occur: compact to the classes in use
            used = np.unique(labels)
            remap = {c: i for i, c in enumerate(used)}
            probs_c = probs[:, used]
            probs_c = probs_c / np.maximum(probs_c.sum(axis=1, keepdims=True), 1e-12)
            labels_c = np.array([remap[v] for v in labels])
            votes = _votes_frame(sub["votes"].tolist(), class_index)
            cur = project.config.curation
            if votes is not None:  # votes for classes outside the compacted set are dropped
                votes = votes.apply(lambda col: col.map(lambda v: remap.get(int(v), np.nan) if pd.notna(v) else np.nan))
            inputs = sig.SignalInputs(labels=labels_c, pred_probs=probs_c,
                                      features=X[[emb_row[s] for s in assess]] if X is not None else None,
                                      votes=votes, knn_k=cur.knn_k, graph=graph_settings(cur),
                                      pred_probs_budget_mb=cur.pred_probs_budget_mb,
                                      extra={**_trajectory_inputs(project, assess),
                                             **plausibility.metadata_inputs(ds, assess, project.config.models.metadata)})
            values = sig.compute_signals(inputs)
            uniq = uniqueness(inputs.knn_graph) if inputs.knn_graph is not None and len(assess) > 3 else None
            used_names = [classes[i] for i in used]
            stats = inputs.extra.get("annotator_stats")
            score = noise_score(values, weights, sig.directions())
            n_issues = int(values.get("cl_issue", np.zeros(len(assess))).sum())
            flagged = flag_top(score, n_issues)
            values[names.NOISE_SCORE] = score
            values[names.ERROR_COST] = keep_label_cost(probs, labels, cost)
            values[names.COST_PRIORITY] = score * values[names.ERROR_COST]
            values[names.LABEL_ISSUE] = flagged.astype(float)
            if "near_duplicate_of" in values:
                dup = values.pop("near_duplicate_of")
                near_dup_of = {assess[i]: assess[int(j)] for i, j in enumerate(dup) if not np.isnan(j)}
            else:
                near_dup_of = {}
            consensus = values.pop("consensus_label", None)
            crowd = [None] * len(assess) if consensus is None else [
                None if np.isnan(c) else used_names[int(c)] for c in consensus]
            vote_names = [[c.label for c in v.classifications] if v is not None else [] for v in sub["votes"]]
            taxa = taxonomy_evidence(class_tree(project), sub["label"].tolist(),
                                     [classes[i] for i in probs.argmax(axis=1)], vote_names, crowd)
            values[ERROR_SEVERITY] = taxa.error_severity
        else:
            near_dup_of, taxa, flagged, uniq = {}, None, np.zeros(0, dtype=bool), None

        flagged_ids = _write_store(ds, table.index.tolist(), assess, values, near_dup_of, taxa)
        unknown_ids = review.most_unknown(ds, unknown, include_test=include_test)
        requeued = review.requeue(ds, flagged_ids, unknown=unknown_ids, include_test=include_test)
        index_fields(ds)  # after requeue: review_state exists once a sample was queued
        if len(assess) >= 2:
            values.update(brain_signals(ds, assess, uniq,
                                        mistakenness=len(assess) <= project.config.curation.brain_mistakenness_max))
        _write_warehouse(wh, run_id, assess, values, stats)
        _save_views(ds, project.config.curation.scarce_class_count, counts, project.config.curation.review_order)
        store.snapshot_samples(project, ds)

        top = []
        if len(assess):
            queue = samples.arrays(ds, ["filepath", "ground_truth.label", "prediction.label", "noise_score"],
                                   saved_view="to_review", limit=10)
            for sid, path, label, pred, score in queue.itertuples(index=False):
                top.append({"id": sid, "filepath": path, "label": label, "predicted": pred, "noise_score": score})
        report = FlagReport(
            run_id=run_id, assessed=len(assess), not_assessable=len(table) - len(assess),
            flagged=int(flagged.sum()),
            outliers=int(np.nansum(values.get(names.IS_OUTLIER, np.zeros(0)))),
            near_duplicates=len(near_dup_of), signals=sorted(values), not_assessable_reasons=reasons, top=top,
            queued=requeued.queued, kept_decided=requeued.kept_decided, test_left_out=requeued.test_left_out,
            unknown_queued=requeued.unknown,
        )
        wh.write("metrics", [{"run_id": run_id, "split": "all", "name": k, "value": float(v)} for k, v in (
            (names.ASSESSED, report.assessed), (names.NOT_ASSESSABLE, report.not_assessable), (names.FLAGGED, report.flagged),
            (names.OUTLIERS, report.outliers), (names.NEAR_DUPLICATES, report.near_duplicates),
            (names.QUEUED, report.queued), (names.KEPT_DECIDED, report.kept_decided),
            (names.TEST_LEFT_OUT, report.test_left_out))])
    return report


def graph_settings(curation) -> GraphSettings:
    """The kNN graph settings of the ``[curation]`` section of fieldguide.toml."""
    return GraphSettings(method=curation.knn_method, exact_below=curation.knn_exact_below,
                         pca_dim=curation.knn_pca_dim, refine=curation.knn_refine,
                         ef_search=curation.knn_ef_search)


def _trajectory_inputs(project: Project, assess: list[str]) -> dict[str, np.ndarray]:
    """The latest training run's trajectory summaries, aligned with ``assess`` (NaN where unseen)."""
    from fieldguide.errors import NotReadyError
    from fieldguide.models.checkpoints import load_trajectories
    from fieldguide.models.fit import trajectory_signals

    try:
        run_id, ids, traj = load_trajectories(project)
    except NotReadyError:
        return {}
    summary = trajectory_signals(traj)
    row = {s: i for i, s in enumerate(ids)}
    out = {}
    for name, arr in summary.items():
        out[name] = np.array([arr[row[s]] if s in row else np.nan for s in assess], dtype=float)
    log.info("entropy signal from training run %s (%d of %d samples)", run_id, sum(s in row for s in assess),
             len(assess))
    return out


def _write_store(ds, all_ids, assess, values, near_dup_of, taxa) -> list[str]:
    """Every sample gets fresh values (None where not assessed): no stale flags from a past run.
    Returns the flagged samples' ids."""
    pos = {s: i for i, s in enumerate(assess)}

    def column(arr, cast=float):
        return {sid: (cast(arr[pos[sid]]) if sid in pos and not np.isnan(arr[pos[sid]]) else None) for sid in all_ids}

    n = len(assess)
    # declared up front: a first run where every value is None cannot infer a field's type
    declare_fields(ds, ["noise_score", "label_issue", "near_duplicate_of", "consensus_label", CONSENSUS_RANK,
                        ERROR_RANK, *STORE_FIELDS.values()])
    set_tags(ds, remove=REVIEW_TAGS)
    columns = {"noise_score": column(values.get("noise_score", np.full(n, np.nan))),
               "label_issue": column(values.get("label_issue", np.full(n, np.nan)), bool)}
    for key, fld in STORE_FIELDS.items():  # every one declared above: written each run
        columns[fld] = column(values.get(key, np.full(n, np.nan)))
    columns["near_duplicate_of"] = {sid: near_dup_of.get(sid) for sid in all_ids}
    text = {"consensus_label": taxa.consensus, CONSENSUS_RANK: taxa.consensus_rank,
            ERROR_RANK: taxa.error_rank} if taxa is not None else {}
    for fld in ("consensus_label", CONSENSUS_RANK, ERROR_RANK):
        columns[fld] = {sid: (text[fld][pos[sid]] if fld in text and sid in pos else None) for sid in all_ids}
    write_values(ds, columns)
    flagged = [assess[i] for i in np.where(values.get("label_issue", np.zeros(n)) > 0)[0]]
    outliers = [assess[i] for i in np.where(np.nan_to_num(values.get(names.IS_OUTLIER, np.zeros(n))) > 0)[0]]
    set_tags(ds, add=["outlier"], ids=outliers)
    set_tags(ds, add=["near_duplicate"], ids=list(near_dup_of))
    return flagged


def _write_warehouse(wh, run_id: str, assess: list[str], values: dict[str, np.ndarray], stats) -> None:
    frames = []
    for name, arr in values.items():
        ok = ~np.isnan(arr)
        if ok.any():
            frames.append(pd.DataFrame({"run_id": run_id, "sample_id": np.array(assess)[ok],
                                        "signal": name, "value": arr[ok]}))
    if frames:
        wh.write("signals", pd.concat(frames, ignore_index=True))
    if stats is not None:
        wh.write("annotators", pd.DataFrame({
            "run_id": run_id, "annotator": stats.index.astype(str),
            "quality": stats["annotator_quality"].astype(float),
            "agreement": stats["agreement_with_consensus"].astype(float),
            "num_labels": stats["num_examples_labeled"].astype(int),
        }))


def _save_views(ds, scarce_count: int, counts: pd.Series, review_order: str) -> None:
    scarce = sorted(c for c, n in counts.items() if n < scarce_count)
    save_view(ds, "to_review", tag=review.QUEUE_TAG, sort_by=review.QUEUE_ORDERS[review_order])
    save_view(ds, "outliers", tag="outlier", sort_by="outlier_score")
    save_view(ds, "near_duplicates", has_field="near_duplicate_of", sort_by="near_duplicate_of")
    save_view(ds, "scarce_classes", labels=scarce)
