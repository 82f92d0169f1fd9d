"""Out-of-sample predictions: stratified K-fold heads on cached embeddings.

Every labeled training sample is predicted by a head that never saw its label (K-fold); every
other sample (test, unlabeled, val) by a head fit on all labeled training samples. The result
goes to the store as ``prediction`` (a Classification with logits and confidence) in one bulk
write, and to ``runs/<run>/pred_probs.npz`` (sample ids, classes, probabilities, fold) for the
curation step.

With ``metadata="auto"`` and samples that carry a date or a place (``observed_at``, ``location``),
a spatio-temporal prior (:mod:`fieldguide.models.metadata`) is fitted beside the head inside each
fold, on that fold's training part only, and combined with the head's probabilities with a weight
chosen on the out-of-fold rows (0: the head alone). Without metadata, ``auto`` is ``none``.

Beside the prediction (argmax, or the class of least expected cost with ``decision="expected_cost"``
and ``classes.costs``): ``prediction_backoff``, the finest rank of the class tree whose rolled-up
probability reaches ``models.backoff_threshold``; and for the samples outside the fitted ones
(test, unlabeled, val) ``unknown_score``, the open-set score (:mod:`fieldguide.models.open_set`:
the scores of ``DEFAULT_SCORES`` combined by a model fitted on held-out training classes; every
registered score goes to pred_probs.npz for ``evaluate``), with the ``unknown`` saved view of those
most likely unknown.

With several backbones (``backbones``, or ``models.backbones``; by default every backbone embedded
for the samples when there are two or more), the head is
:class:`~fieldguide.models.heads.across_backbones.AcrossBackbonesHead`: a head per backbone,
weighted on inner folds, or one head on the concatenated embeddings, whichever wins on the inner
folds; the choice of the head fit on all training samples (and its weights) is recorded in the
run's config. One backbone (``backbone``, or a single name in ``backbones``) is the plain path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone

from fieldguide.config import Project
from fieldguide.errors import FieldguideError, NotReadyError
from fieldguide.models import open_set
from fieldguide.models.costs import decide, project_costs
from fieldguide.models.crossval import aligned_proba, cross_val_pred_probs
from fieldguide.models.distributed import wants_ray
from fieldguide.models.backbones import DISTILLED
from fieldguide.models.embed import embedded_backbones, embedded_table, joint_embedded_table
from fieldguide.models.heads import make_head
from fieldguide.models.heads.across_backbones import AcrossBackbonesHead
from fieldguide.models import metadata as md
from fieldguide.models.taxonomy import ClassTree, backoff, flat_tree, roll_up, tree_from_taxa
from fieldguide.platform import samples, store
from fieldguide.platform.fields import save_view, write_values
from fieldguide.platform.taxa import read_taxa
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)

FIT_SPLITS = ("train",)
#: the stored fields the metadata prior reads (date, place)
META_FIELDS = ("observed_at", "location")
#: the ``unknown`` view: samples whose open-set score says more likely unknown than known
UNKNOWN_VIEW, UNKNOWN_AT = "unknown", 0.5


@dataclass
class PredictReport:
    run_id: str
    head: str
    folds: int
    n_cross_validated: int
    n_fit_all: int
    n_without_embedding: int
    oof_top1: float
    pred_probs_path: str
    metadata: list[str]
    metadata_weight: float
    decision: str = "argmax"
    n_unknown: int = 0
    backbones: list[str] = field(default_factory=list)
    by_default: bool = False  # several backbones because several are embedded (nobody named them)
    left_out: list[str] = field(default_factory=list)  # embedded, but not for every sample (by default only)
    combination: dict = field(default_factory=dict)  # what the head across backbones chose

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@writes('predict')
def predict(project: Project, *, head: str | None = None, folds: int | None = None,
            backbone: str | None = None, backbones: list[str] | None = None, seed: int | None = None,
            metadata: str | None = None, decision: str | None = None, ray_address: str | None = None) -> PredictReport:
    """Out-of-sample predictions for every sample with an embedding; see the module docstring.
    ``metadata``: auto | none (default: models.metadata); ``decision``: argmax | expected_cost
    (default: predict.decision). ``backbone``: one backbone; ``backbones``: heads across these
    (default: models.backbones, else every embedded one). ``ray_address``: ``auto`` or a Ray
    cluster's address to fit the K-fold heads there, one task per fold (default: models.ray_address)."""
    cfg = project.config.predict
    decision = decision or cfg.decision
    head = head or cfg.head
    folds = folds or cfg.folds
    seed = cfg.seed if seed is None else seed
    metadata = metadata or project.config.models.metadata
    address = ray_address if ray_address is not None else project.config.models.ray_address
    address = address if wants_ray(address) else None
    check_metadata_mode(metadata)
    make_head(head)  # unknown names fail before any work
    names, by_default = _backbones(project, backbone, backbones)
    ds = store.dataset(project, create=False)
    meta_fields = metadata_fields(ds, metadata)
    if len(names) == 1:
        ids, X, table = embedded_table(project, names[0], ds, meta_fields)
        widths = {names[0]: X.shape[1]}
    else:
        ids, X, table, widths = joint_embedded_table(project, names, ds, meta_fields,
                                                     missing="drop" if by_default else "error")
    model = (AcrossBackbonesHead(dims=tuple(widths.values()), head=head, inner_folds=folds, seed=seed)
             if len(widths) > 1 else make_head(head))
    classes = store.classes(ds)
    decide(np.eye(len(classes))[:1], None, decision)  # an unknown rule fails before any work
    # the costs are read only when they decide (a stale cost file is evaluate's concern otherwise)
    cost = (project_costs(project.config.classes.costs, project.config.evaluate.cost_matrix, classes)[0]
            if decision == "expected_cost" else None)
    index = {c: i for i, c in enumerate(classes)}
    fit_mask = table["split"].isin(FIT_SPLITS).to_numpy() & table["label"].notna().to_numpy()
    if fit_mask.sum() < 2:
        raise NotReadyError("no labeled training samples with embeddings (ingest labeled images, then embed)")
    y = np.array([index[label] for label in table["label"][fit_mask]])
    wh = store.warehouse(project)
    M = metadata_matrix(table, meta_fields)
    groups = prior_groups(M[fit_mask])
    used = list(widths)
    config = {"head": head, "folds": folds, "seed": seed, "backbone": used[0],
              "metadata": {"mode": metadata, "groups": groups}, "decision": decision,
              **({"ray": address} if address else {})}
    if len(used) > 1:
        config["backbones"] = {"names": used, "by_default": by_default, "left_out": [n for n in names if n not in widths]}
    with wh.run("predict", config) as run_id:
        probs = np.zeros((len(ids), len(classes)))
        fold = np.full(len(ids), -1, dtype=int)
        oof, fold_fit = cross_val_pred_probs(model, X[fit_mask], y, len(classes), folds=folds, seed=seed,
                                             ray_address=address)
        fold[fit_mask] = fold_fit
        # across backbones the head fit on all training samples is fit anyway: its choice is recorded
        full = clone(model).fit(X[fit_mask], y) if (~fit_mask).any() or len(used) > 1 else None
        rest = aligned_proba(full, X[~fit_mask], len(classes)) if (~fit_mask).any() else None
        combination = {}
        if len(used) > 1:
            combination = full.chosen()
            combination.update({k: dict(zip(used, combination[k])) for k in ("weights", "temperatures") if k in combination})
            wh.update_config(run_id, {"backbones": {**config["backbones"], **combination}})
            log.info("across backbones %s: %s", ", ".join(used), combination)
        w = 0.0
        if groups:
            oof, rest, w, prior_info = with_prior(oof, rest, M, fit_mask, y, fold_fit, len(classes))
            wh.update_config(run_id, {"metadata": {**config["metadata"], "weight": w, **prior_info}})
        probs[fit_mask] = oof
        if rest is not None:
            probs[~fit_mask] = rest
        scores = _open_set_scores(head, X, y, fit_mask, full, seed)
        path = save_pred_probs(project.run_dir(run_id) / "pred_probs.npz", ids, classes, probs, fold,
                               table["label"].fillna("").to_numpy().astype(str),
                               table["split"].fillna("").to_numpy().astype(str), scores)
        top = decide(probs, cost, decision)
        predictions = prediction_values(ids, classes, probs, top)
        tree = project_tree(project, classes)
        unknown = {sid: None if np.isnan(s) else float(s) for sid, s in zip(ids, scores[:, -1])}  # None: clear
        backed = backoff_labels(ids, probs, tree, project.config.models.backoff_threshold)
        write_values(ds, {"prediction": predictions, "unknown_score": unknown, "prediction_backoff": backed})
        save_view(ds, UNKNOWN_VIEW, above=("unknown_score", UNKNOWN_AT), sort_by="unknown_score", reverse=True)
        oof_top1 = float((oof.argmax(axis=1) == y).mean())
        wh.write("metrics", [
            {"run_id": run_id, "split": "train_oof", "name": "top1", "value": oof_top1},
            {"run_id": run_id, "split": "all", "name": "cross_validated", "value": float(fit_mask.sum())},
        ])
        store.snapshot_samples(project, ds)
        n_all = len(ds)
    return PredictReport(run_id=run_id, head=head, folds=int(fold.max() + 1), n_cross_validated=int(fit_mask.sum()),
                         n_fit_all=int((~fit_mask).sum()), n_without_embedding=n_all - len(ids),
                         oof_top1=oof_top1, pred_probs_path=str(path), metadata=groups, metadata_weight=w,
                         decision=decision, n_unknown=sum(v is not None and v >= UNKNOWN_AT for v in unknown.values()),
                         backbones=used, by_default=by_default and len(used) > 1,
                         left_out=[n for n in names if n not in widths], combination=combination)


def save_pred_probs(path: Path, ids: list[str], classes: list[str], probs: np.ndarray, fold: np.ndarray,
                    labels: np.ndarray, splits: np.ndarray, scores: np.ndarray) -> Path:
    """Write ``pred_probs.npz`` as :func:`load_pred_probs` reads it: per sample of ``ids`` its row of
    ``probs`` (n, len(classes)), ``fold`` (-1: not cross-validated), given label, split and open-set
    ``scores`` (n, len(SCORES) + 1; NaN where not scored). Returns ``path``."""
    np.savez_compressed(path, sample_ids=np.array(ids), classes=np.array(classes), pred_probs=probs,
                        fold=fold, labels=labels, splits=splits, open_set=scores,
                        open_set_names=np.array([*open_set.SCORES, "combined"]))
    return path


def prediction_values(ids: list[str], classes: list[str], probs: np.ndarray, top: np.ndarray) -> dict[str, dict]:
    """The stored ``prediction`` of each sample of ``ids``: the class ``top[i]``, its probability
    as confidence, and the log-probabilities as logits."""
    logits = np.log(np.clip(probs, 1e-12, None))
    return {sid: {"label": classes[t], "confidence": float(probs[i, t]), "logits": logits[i].tolist()}
            for i, (sid, t) in enumerate(zip(ids, top))}


def _backbones(project: Project, backbone: str | None, backbones: list[str] | None) -> tuple[list[str], bool]:
    """The backbones predict uses and whether they are the default (nobody named them): ``backbone``,
    ``backbones``, ``models.backbones``, else every embedded backbone when there are 2 or more
    (the configured one first), else the configured one."""
    if backbone and backbones:
        raise FieldguideError("name one backbone (--backbone) or several (--backbones), not both")
    named = [backbone] if backbone else list(backbones or project.config.models.backbones)
    if named:
        if len(set(named)) != len(named):
            raise FieldguideError(f"backbones {', '.join(named)}: a backbone named twice")
        return named, False
    default = project.config.models.backbone
    # by default a distilled student (embedded to be measured, often far weaker) joins only when named
    embedded = [n for n in embedded_backbones(project) if n == default or not n.startswith(DISTILLED)]
    if default in embedded and len(embedded) > 1:
        return [default, *(n for n in embedded if n != default)], True
    return [default], False


def project_tree(project: Project, classes: list[str]) -> ClassTree:
    """The class tree of ``classes`` from the warehouse's ``taxa`` (flat when no class has ranks)."""
    rows = read_taxa(project)
    return tree_from_taxa(classes, rows) if rows else flat_tree(classes)


def backoff_labels(ids: list[str], probs: np.ndarray, tree: ClassTree, threshold: float) -> dict[str, dict | None]:
    """``prediction_backoff`` values: the back-off answer of each sample (label, its rolled-up
    probability as confidence, ``rank``), None when no rank reaches ``threshold``."""
    level, node = backoff(probs, tree, threshold)
    ups = {lv: roll_up(probs, tree, lv) for lv in set(level.tolist()) if lv >= 0}
    return {sid: None if lv < 0 else {"label": tree.level_names(lv)[nd], "confidence": float(ups[lv][i, nd]),
                                      "rank": tree.levels[lv]}
            for i, (sid, lv, nd) in enumerate(zip(ids, level, node))}


def _open_set_scores(head: str, X: np.ndarray, y: np.ndarray, fit_mask: np.ndarray, full, seed: int) -> np.ndarray:
    """(n, len(SCORES) + 1) the open-set scores (:data:`open_set.SCORES`, then ``unknown_score``:
    the combination of :data:`open_set.DEFAULT_SCORES`) of the samples outside ``fit_mask`` under
    the head fit on all of them; NaN for the fitted samples (their label is known) and when there
    are fewer than 3 classes to simulate unknowns with."""
    names = tuple(open_set.SCORES)
    out = np.full((len(X), len(names) + 1), np.nan)
    if full is None or not (~fit_mask).any() or len(np.unique(y)) < 3:
        return out
    if not hasattr(full, "decision_function"):  # across backbones: score with the kind of head the
        full = make_head(head).fit(X[fit_mask], y)  # combiner is fitted on (real logits for energy)
    sim, target = open_set.simulated_unknowns(make_head(head), X[fit_mask], y, scores=open_set.DEFAULT_SCORES,
                                              seed=seed)
    combiner = open_set.fit_combiner(sim, target)
    table = open_set.score_table(full, X[fit_mask], y, X[~fit_mask], scores=names)
    used = table[:, [names.index(s) for s in open_set.DEFAULT_SCORES]]
    out[~fit_mask] = np.column_stack([table, open_set.combined_score(combiner, used)])
    return out


def check_metadata_mode(mode: str) -> None:
    """``mode`` is one of :data:`~fieldguide.models.metadata.MODES` (auto | none), else a one-line error."""
    if mode not in md.MODES:
        raise FieldguideError(f"metadata {mode!r}: use one of {', '.join(md.MODES)}")


def metadata_fields(ds, mode: str) -> list[str]:
    """The stored fields the prior reads under ``mode``: with ``auto`` those of :data:`META_FIELDS`
    the samples have, with ``none`` none."""
    check_metadata_mode(mode)
    return [f for f in META_FIELDS if mode == "auto" and samples.has_field(ds, f)]


def metadata_matrix(table, fields: list[str]) -> np.ndarray:
    """The encoded metadata (:func:`fieldguide.models.metadata.encode`) of a table's rows, from its
    columns ``fields`` (of :data:`META_FIELDS`; a field not named counts as missing)."""
    none = [None] * len(table)
    return md.encode(table["observed_at"].tolist() if "observed_at" in fields else none,
                     [md.location_point(v) for v in table["location"]] if "location" in fields else none)


def prior_groups(M: np.ndarray) -> list[str]:
    """The metadata groups of ``M`` the prior uses (date and place; the hour is not used)."""
    return [g for g in md.groups_present(M) if g != "hour"]


def prior_on_rest(X_fit: np.ndarray, y: np.ndarray, M_fit: np.ndarray, rest: np.ndarray, M_rest: np.ndarray,
                  n_classes: int, *, head: str, folds: int, seed: int) -> tuple[np.ndarray, float, dict]:
    """Probabilities of another model (``train``'s head, ``pseudolabel``'s teacher) on the rows
    ``rest`` combined with the metadata prior as :func:`with_prior` does, the weight chosen on
    out-of-fold probabilities of the ``predict`` head ``head`` on the fitted rows (that model has
    none of its own). Returns ``(rest combined, w, what was chosen)``; ``rest`` itself when no fitted
    row has a date or a place."""
    if not prior_groups(M_fit):
        return rest, 0.0, {}
    oof, fold = cross_val_pred_probs(make_head(head), X_fit, y, n_classes, folds=folds, seed=seed)
    fit_mask = np.r_[np.ones(len(y), dtype=bool), np.zeros(len(rest), dtype=bool)]
    _, combined, w, info = with_prior(oof, rest, np.vstack([M_fit, M_rest]), fit_mask, y, fold, n_classes)
    return combined, w, {**info, "weight_from": f"{head} out-of-fold"}


def with_prior(oof: np.ndarray, rest: np.ndarray | None, M: np.ndarray, fit_mask: np.ndarray, y: np.ndarray,
                fold: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray | None, float, dict]:
    """The head's out-of-fold rows and other rows combined with the metadata prior: fitted per fold
    on that fold's training part (the same folds as the head), ``w`` chosen on the out-of-fold rows,
    then refitted on all training rows for the others. Returns ``(oof, rest, w, what was chosen)``."""
    M_fit = M[fit_mask]
    prior_oof = np.zeros_like(oof)
    for f in np.unique(fold):
        train = fold != f
        prior_oof[~train] = md.aligned_prior(md.KdePrior().fit(M_fit[train], y[train]), M_fit[~train], n_classes)
    w, scores = md.choose_weight(oof, prior_oof, y)
    full = md.KdePrior().fit(M_fit, y)
    info = {"prior": "kde", "day_kappa": full.day_kappa_, "place_kappa": full.place_kappa_,
            "oof_loglik": {str(k): round(v, 4) for k, v in scores.items()}}
    log.info("metadata prior: weight %s (out-of-fold log-likelihood by weight %s)", w, info["oof_loglik"])
    if w == 0:
        return oof, rest, w, info
    rest = md.combine(rest, md.aligned_prior(full, M[~fit_mask], n_classes), w) if rest is not None else None
    return md.combine(oof, prior_oof, w), rest, w, info


@dataclass
class PredProbs:
    run_id: str
    sample_ids: list[str]
    classes: list[str]
    pred_probs: np.ndarray
    fold: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    open_set: dict[str, np.ndarray] | None = None  # score name -> (n,), NaN where not scored


def load_pred_probs(project: Project, run_id: str | None = None) -> PredProbs:
    """The pred_probs of a predict run (default: the latest completed one)."""
    wh = store.warehouse(project)
    run_id = wh.run_or_last(run_id, "predict", missing="no predictions yet (run 'fieldguide predict')")
    path = Path(project.runs_dir) / run_id / "pred_probs.npz"
    if not path.exists():
        raise NotReadyError(f"predictions of run {run_id} are missing ({path}); run 'fieldguide predict'")
    z = np.load(path, allow_pickle=False)
    return PredProbs(run_id=run_id, sample_ids=z["sample_ids"].tolist(), classes=z["classes"].tolist(),
                     pred_probs=z["pred_probs"], fold=z["fold"], labels=z["labels"], splits=z["splits"],
                     open_set=dict(zip(z["open_set_names"].tolist(), z["open_set"].T)) if "open_set" in z else None)
