"""The ``pseudolabel`` step: semi-supervised pseudo-labels (after Semi-ViT; the learning itself is in
:mod:`fieldguide.curation.semi`) for the ``unlabeled`` split, or an abstention when held-out
labeled folds say they would not help.

The teacher's confident predictions on the ``unlabeled`` split become the ``pseudo_label`` field
(a Classification with its confidence and ``origin = "pseudo"``), tagged ``pseudo_labeled``,
class-balanced so that common classes do not drown rare ones. They never become
``ground_truth`` unless a curator accepts them (:func:`accept_pseudo_labels`, through the one
label-changing function, so ``label_history`` records it).

With ``metadata="auto"`` (``models.metadata``) and samples that carry a date or a place, the
teacher's probabilities are combined with the date/place prior before the selection, as
``predict`` combines its head's (:func:`fieldguide.models.predict.prior_on_rest`); without dates or
places ``auto`` is exactly ``none``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fieldguide.config import Project
from fieldguide.errors import ConfigError, FieldguideError, NotReadyError
from fieldguide.platform import samples, store
from fieldguide.platform.fields import save_view, set_tags, write_values
from fieldguide.platform.lock import writes
from fieldguide.curation.semi import (PseudoEstimate, estimate_pseudo_gain, fit_semi_supervised,
                                     fit_semi_supervised_images, select_pseudo_labels)
from fieldguide.registry import Registry

log = logging.getLogger(__name__)

PSEUDO_FIELD = "pseudo_label"
PSEUDO_TAG = "pseudo_labeled"


# ---- the step -----------------------------------------------------------------------------------------
@dataclass
class PseudoReport:
    run_id: str
    labeled: int
    unlabeled: int
    selected: int
    per_class: dict[str, int]
    threshold: float  # the confidence threshold used
    abstained: bool = False  # True: nothing written, ``reason`` says why
    reason: str = ""
    estimate: dict | None = None  # PseudoEstimate.as_dict() when the abstention rule ran

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PseudoInputs:
    """What a mode trains on: every sample with an embedding, and which are labeled / unlabeled."""

    X: np.ndarray  # (n, d) cached embeddings
    paths: np.ndarray  # (n,) image paths
    labeled: np.ndarray  # (n,) bool: labeled train/val samples
    unlabeled: np.ndarray  # (n,) bool: the unlabeled split
    y: np.ndarray  # class indices of the labeled rows
    n_classes: int
    metadata: np.ndarray | None = None  # (n, len(COLUMNS)) encoded dates and places, None: not used


# (project, inputs, hyper-parameters, backbone) -> the teacher's probabilities on the unlabeled rows
PseudoMode = Callable[[Project, PseudoInputs, dict, str | None], np.ndarray]
MODES: Registry[PseudoMode] = Registry("pseudo-labeling mode")


def register_mode(name: str) -> Callable[[PseudoMode], PseudoMode]:
    """Register a pseudo-labeling mode (``pseudolabel.mode``, ``--mode``); a name taken raises."""
    return lambda fn: MODES.add(name, fn)


def _semi_options(hp: dict) -> dict:
    return {k: hp[k] for k in ("threshold", "ema_decay", "mu", "lambda_u", "epochs")}


@register_mode("head")
def head_mode(project: Project, data: PseudoInputs, hp: dict, backbone: str | None) -> np.ndarray:
    """A head on the cached embeddings."""
    from fieldguide.models.fit import predict_head

    lab, unl = data.labeled, data.unlabeled
    result = fit_semi_supervised(data.X[lab], data.y, data.X[unl], data.n_classes, **_semi_options(hp),
                                 seed=project.config.train.seed)
    return predict_head(result.teacher, data.X[unl])


@register_mode("finetune")
def finetune_mode(project: Project, data: PseudoInputs, hp: dict, backbone: str | None) -> np.ndarray:
    """The backbone end to end, weak / strong views of the images."""
    from fieldguide.models.backbones import load_backbone
    from fieldguide.models.inference import predict_images

    mcfg, tcfg = project.config.models, project.config.train
    bb = load_backbone(backbone or mcfg.backbone, mcfg.weights or None, runs_dir=project.runs_dir)
    lab, unl = list(data.paths[data.labeled]), list(data.paths[data.unlabeled])
    result = fit_semi_supervised_images(
        bb, lab, data.y, unl, data.n_classes, **_semi_options(hp), lr=tcfg.finetune_lr,
        batch_size=tcfg.finetune_batch_size, num_workers=mcfg.num_workers, device=mcfg.device, seed=tcfg.seed)
    return predict_images(result.teacher, unl, bb.transform(), data.n_classes, device=mcfg.device)


@writes('pseudolabel')
def pseudolabel(project: Project, *, threshold: float | None = None, ema_decay: float | None = None,
                mu: int | None = None, lambda_u: float | None = None, epochs: int | None = None,
                balance: bool | None = None, mode: str | None = None, backbone: str | None = None,
                abstain: bool | None = None, metadata: str | None = None) -> PseudoReport:
    """Pseudo-labels for the ``unlabeled`` split; see the module docstring. Re-running replaces them.

    With ``abstain`` the step first estimates, on the labeled samples only
    (:func:`estimate_pseudo_gain`: a head-mode teacher on the cached embeddings, whichever the
    mode, and the ``[train]`` student), whether accepting its pseudo-labels would help; when it
    would not, it writes no pseudo-labels, tags nothing, leaves earlier ones as they are and
    records the run with its reason (``abstained`` and ``reason`` in the report).
    Each hyper-parameter left None comes from the ``[pseudolabel]`` section of fieldguide.toml;
    ``metadata`` (auto | none) from ``models.metadata``.
    """
    from fieldguide.models.embed import load_embeddings
    from fieldguide.models.predict import metadata_fields, metadata_matrix, prior_groups

    given = {"threshold": threshold, "ema_decay": ema_decay, "mu": mu, "lambda_u": lambda_u, "epochs": epochs,
             "balance": balance, "mode": mode, "abstain": abstain}
    hp = {k: getattr(project.config.pseudolabel, k) if v is None else v for k, v in given.items()}
    if hp["mode"] not in MODES:
        raise ConfigError(f"pseudo-labeling mode {hp['mode']!r}: use one of {', '.join(MODES)} "
                          "(--mode, or pseudolabel.mode in fieldguide.toml)")
    metadata = metadata or project.config.models.metadata
    ds = store.dataset(project, create=False)
    fields = metadata_fields(ds, metadata)
    ids, X = load_embeddings(project, backbone, ds)
    table = store.samples_table(ds).set_index("id").loc[ids]
    classes = store.classes(ds)
    index = {c: i for i, c in enumerate(classes)}
    lab = ((table["split"].isin(("train", "val"))) & table["label"].notna()).to_numpy()
    unl = (table["split"] == "unlabeled").to_numpy() & table["label"].isna().to_numpy()
    if lab.sum() < 2:
        raise NotReadyError("no labeled training samples with embeddings (ingest and embed first)")
    if not unl.any():
        raise NotReadyError("no unlabeled samples with embeddings (ingest images without labels, then embed)")
    y = np.array([index[v] for v in table["label"][lab]])
    wh = store.warehouse(project)
    M = metadata_matrix(samples.arrays(ds, fields, ids=ids), fields)
    groups = prior_groups(M[lab])
    config = {**hp, "backbone": backbone or project.config.models.backbone,
              "metadata": {"mode": metadata, "groups": groups}}
    threshold = hp["threshold"]
    data = PseudoInputs(X, table["filepath"].to_numpy(), lab, unl, y, len(classes), M if groups else None)
    estimate = None
    with wh.run("pseudolabel", config) as run_id:
        if hp["abstain"]:
            estimate = _estimate(project, hp, X[lab], y, X[unl], len(classes), run_id)
        if estimate is None or estimate.helps:
            rows, per_class = _write_pseudo_labels(project, ds, hp, backbone, run_id, ids, data, classes)
    report = PseudoReport(run_id=run_id, labeled=int(lab.sum()), unlabeled=int(unl.sum()), selected=0, per_class={},
                          threshold=threshold, estimate=estimate.as_dict() if estimate is not None else None)
    if estimate is not None and not estimate.helps:
        report.abstained, report.reason = True, estimate.reason()
        wh.finish_run(run_id, "completed", f"abstained: {report.reason}")
        return report
    report.selected, report.per_class = rows, per_class
    if estimate is not None:
        report.reason = estimate.reason()
    return report


def _estimate(project: Project, hp: dict, X_l, y_l, X_u, n_classes: int, run_id: str) -> PseudoEstimate:
    """:func:`estimate_pseudo_gain` with the step's settings, recorded in the warehouse's metrics."""
    semi = {k: hp[k] for k in ("ema_decay", "mu", "lambda_u", "epochs")}
    estimate = estimate_pseudo_gain(X_l, y_l, X_u, n_classes, student=project.config.train, semi=semi,
                                    threshold=hp["threshold"], balance=hp["balance"], seed=project.config.train.seed)
    log.info("pseudolabel: %s", estimate.reason())
    store.warehouse(project).write("metrics", [
        {"run_id": run_id, "split": "labeled", "name": name, "value": float(value)}
        for name, value in (("estimate_with", estimate.accuracy_with), ("estimate_without", estimate.accuracy_without),
                            ("estimate_folds", estimate.folds), ("abstained", not estimate.helps))])
    return estimate


def _write_pseudo_labels(project: Project, ds, hp: dict, backbone: str | None, run_id: str, ids: list[str],
                         data: PseudoInputs, classes: list[str]) -> tuple[int, dict[str, int]]:
    """The teacher's pseudo-labels on the unlabeled samples, written to the store; (count, per class)."""
    unl = data.unlabeled
    probs = MODES[hp["mode"]](project, data, hp, backbone)
    if data.metadata is not None:
        probs = _with_metadata_prior(project, run_id, data, probs)
    rows, labels, conf = select_pseudo_labels(probs, hp["threshold"], balance=hp["balance"])
    unl_ids = [s for s, m in zip(ids, unl) if m]
    # cleared on every unlabeled sample; accepted ones (now train) keep where their label came from
    values = {sid: None for sid in samples.arrays(ds, tags="unlabeled")["id"]}
    for r, c, p in zip(rows, labels, conf):
        values[unl_ids[r]] = {"label": classes[c], "confidence": float(p), "origin": "pseudo", "run_id": run_id}
    set_tags(ds, remove=[PSEUDO_TAG])
    write_values(ds, {PSEUDO_FIELD: values})
    set_tags(ds, add=[PSEUDO_TAG], ids=[unl_ids[r] for r in rows])
    save_view(ds, "pseudo_labeled", tag=PSEUDO_TAG, sort_by=f"{PSEUDO_FIELD}.confidence", reverse=True)
    store.snapshot_samples(project, ds)
    store.warehouse(project).write("metrics", [
        {"run_id": run_id, "split": "unlabeled", "name": "pseudo_labels", "value": float(len(rows))},
        {"run_id": run_id, "split": "unlabeled", "name": "candidates", "value": float(unl.sum())}])
    return len(rows), {classes[c]: int(n) for c, n in zip(*np.unique(labels, return_counts=True))}


def _with_metadata_prior(project: Project, run_id: str, data: PseudoInputs, probs: np.ndarray) -> np.ndarray:
    """The teacher's probabilities on the unlabeled rows combined with the date/place prior; what was
    chosen goes to the run's config."""
    from fieldguide.models.predict import prior_on_rest

    lab, unl, pcfg = data.labeled, data.unlabeled, project.config.predict
    probs, w, info = prior_on_rest(data.X[lab], data.y, data.metadata[lab], probs, data.metadata[unl], data.n_classes,
                                   head=pcfg.head, folds=pcfg.folds, seed=pcfg.seed)
    store.warehouse(project).update_config(run_id, {"metadata_prior": {"weight": w, **info}})
    return probs


@writes('pseudolabel --accept')
def accept_pseudo_labels(project: Project, sample_ids: list[str] | None = None, *, actor: str | None = None) -> int:
    """A curator accepts pseudo-labels (default: every pseudo-labeled sample): each becomes
    ``ground_truth`` through ``store.set_labels`` (source ``pseudo``, the curator as actor) and
    the sample moves from ``unlabeled`` to ``train``. Returns how many were accepted."""
    ds = store.dataset(project, create=False)
    if not samples.has_field(ds, PSEUDO_FIELD):
        raise NotReadyError("no pseudo-labels yet (run 'fieldguide pseudolabel')")
    fields = [f"{PSEUDO_FIELD}.label", f"{PSEUDO_FIELD}.run_id"]
    table = samples.arrays(ds, fields, tags=PSEUDO_TAG if sample_ids is None else None, ids=sample_ids)
    ids, labels, runs = (table[c].tolist() for c in ["id", *fields])
    missing = [s for s, lab in zip(ids, labels) if lab is None]
    if missing:
        raise FieldguideError(f"{len(missing)} sample(s) have no pseudo-label (e.g. {missing[0]}); nothing accepted")
    if not ids:
        return 0
    store.set_labels(project, ds, dict(zip(ids, labels)), source="pseudo",
                     actor=actor or project.config.project.curator, run_id=runs[0])
    set_tags(ds, remove=["unlabeled", PSEUDO_TAG], add=["train"], ids=ids)
    store.snapshot_samples(project, ds)
    return len(ids)
