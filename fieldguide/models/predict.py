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
from fieldguide.models.crossval import aligned_proba, cross_val_pred_probs
from fieldguide.models.embed import embedded_backbones, embedded_table, joint_embedded_table
from fieldguide.models.heads import make_head
from fieldguide.models.heads.across_backbones import AcrossBackbonesHead
from fieldguide.models import metadata as md
from fieldguide.platform import samples, store
from fieldguide.platform.fields import write_values
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)

FIT_SPLITS = ("train",)


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
    backbones: list[str] = field(default_factory=list)
    by_default: bool = False  # several backbones because several are embedded (nobody named them)
    left_out: list[str] = field(default_factory=list)  # embedded, but not for every sample (by default only)
    combination: dict = field(default_factory=dict)  # what the head across backbones chose

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@writes('predict')
def predict(project: Project, *, head: str | None = None, folds: int | None = None,
            backbone: str | None = None, backbones: list[str] | None = None, seed: int | None = None,
            metadata: str | None = None) -> PredictReport:
    """Out-of-sample predictions for every sample with an embedding; see the module docstring.
    ``metadata``: auto | none (default: models.metadata). ``backbone``: one backbone;
    ``backbones``: heads across these (default: models.backbones, else every embedded one)."""
    cfg = project.config.predict
    head = head or cfg.head
    folds = folds or cfg.folds
    seed = cfg.seed if seed is None else seed
    metadata = metadata or project.config.models.metadata
    if metadata not in md.MODES:
        raise FieldguideError(f"metadata {metadata!r}: use one of {', '.join(md.MODES)}")
    make_head(head)  # unknown names fail before any work
    names, by_default = _backbones(project, backbone, backbones)
    ds = store.dataset(project, create=False)
    meta_fields = [f for f in ("observed_at", "location") if metadata == "auto" and samples.has_field(ds, f)]
    if len(names) == 1:
        ids, X, table = embedded_table(project, names[0], ds, meta_fields)
        widths = {names[0]: X.shape[1]}
    else:
        ids, X, table, widths = joint_embedded_table(project, names, ds, meta_fields,
                                                     missing="drop" if by_default else "error")
    model = (AcrossBackbonesHead(dims=tuple(widths.values()), head=head, inner_folds=folds, seed=seed)
             if len(widths) > 1 else make_head(head))
    classes = store.classes(ds)
    index = {c: i for i, c in enumerate(classes)}
    fit_mask = table["split"].isin(FIT_SPLITS).to_numpy() & table["label"].notna().to_numpy()
    if fit_mask.sum() < 2:
        raise NotReadyError("no labeled training samples with embeddings (ingest labeled images, then embed)")
    y = np.array([index[label] for label in table["label"][fit_mask]])
    wh = store.warehouse(project)
    M = md.encode(table["observed_at"].tolist() if "observed_at" in meta_fields else [None] * len(ids),
                  [md.location_point(v) for v in table["location"]] if "location" in meta_fields else [None] * len(ids))
    groups = [g for g in md.groups_present(M[fit_mask]) if g != "hour"]  # the prior uses date and place
    used = list(widths)
    config = {"head": head, "folds": folds, "seed": seed, "backbone": used[0],
              "metadata": {"mode": metadata, "groups": groups}}
    if len(used) > 1:
        config["backbones"] = {"names": used, "by_default": by_default, "left_out": [n for n in names if n not in widths]}
    with wh.run("predict", config) as run_id:
        probs = np.zeros((len(ids), len(classes)))
        fold = np.full(len(ids), -1, dtype=int)
        oof, fold_fit = cross_val_pred_probs(model, X[fit_mask], y, len(classes), folds=folds, seed=seed)
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
            oof, rest, w, prior_info = _with_prior(oof, rest, M, fit_mask, y, fold_fit, len(classes))
            wh.update_config(run_id, {"metadata": {**config["metadata"], "weight": w, **prior_info}})
        probs[fit_mask] = oof
        if rest is not None:
            probs[~fit_mask] = rest
        path = project.run_dir(run_id) / "pred_probs.npz"
        np.savez_compressed(path, sample_ids=np.array(ids), classes=np.array(classes), pred_probs=probs,
                            fold=fold, labels=table["label"].fillna("").to_numpy().astype(str),
                            splits=table["split"].fillna("").to_numpy().astype(str))
        top = probs.argmax(axis=1)
        logits = np.log(np.clip(probs, 1e-12, None))
        predictions = {
            sid: {"label": classes[t], "confidence": float(probs[i, t]), "logits": logits[i].tolist()}
            for i, (sid, t) in enumerate(zip(ids, top))
        }
        write_values(ds, {"prediction": predictions})
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
                         backbones=used, by_default=by_default and len(used) > 1,
                         left_out=[n for n in names if n not in widths], combination=combination)


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
    embedded = embedded_backbones(project)
    if default in embedded and len(embedded) > 1:
        return [default, *(n for n in embedded if n != default)], True
    return [default], False


def _with_prior(oof: np.ndarray, rest: np.ndarray | None, M: np.ndarray, fit_mask: np.ndarray, y: np.ndarray,
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


def load_pred_probs(project: Project, run_id: str | None = None) -> PredProbs:
    """The pred_probs of a predict run (default: the latest completed one)."""
    wh = store.warehouse(project)
    run_id = wh.run_or_last(run_id, "predict", missing="no predictions yet (run 'fieldguide predict')")
    path = Path(project.runs_dir) / run_id / "pred_probs.npz"
    if not path.exists():
        raise NotReadyError(f"predictions of run {run_id} are missing ({path}); run 'fieldguide predict'")
    z = np.load(path, allow_pickle=False)
    return PredProbs(run_id=run_id, sample_ids=z["sample_ids"].tolist(), classes=z["classes"].tolist(),
                     pred_probs=z["pred_probs"], fold=z["fold"], labels=z["labels"], splits=z["splits"])
