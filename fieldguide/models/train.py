"""Noise-tolerant training: ``ce``, ``two-stage-entropy`` or ``grpo``, on embeddings or end to end.

The ``train`` and ``retrain`` steps: they read the current labels from the store and train with
the loop of :mod:`fieldguide.models.fit`.

- ``head`` mode trains a linear (or one-hidden-layer) head on the cached embeddings
  (:func:`~fieldguide.models.fit.fit_head`): seconds on a CPU. ``finetune`` mode trains a timm
  backbone and a linear head end to end on the images (:mod:`fieldguide.models.finetune`).
- Every epoch records each training sample's entropy, the margin of its given label and whether
  the prediction agrees with it. These trajectories are saved with the run
  (``trajectories.npz``) and become the ``entropy`` signal of ``flag``.
- Checkpoints (``PROJECT/checkpoints/<run>/last.pt``) are written every epoch; a run that was
  stopped resumes from its last epoch (``fieldguide train --resume RUN``); see
  :mod:`fieldguide.models.checkpoints`.
- Curves (loss, accuracy, mean entropy, λ) go to the warehouse's ``curves`` and a PNG; with a
  ``test`` split the run is evaluated on it (``metrics``, ``class_metrics``, ``confusions``).
  ``retrain`` compares the run with the one before it (:mod:`fieldguide.models.compare`).
- ``--metadata auto`` (``models.metadata``), head mode: the test probabilities are combined with the
  date/place prior as ``predict`` combines its head's, the weight chosen on out-of-fold
  probabilities of the ``predict`` head; exactly ``none`` when the samples have no date or place.
  Finetune mode does not use the metadata.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from fieldguide import names
from fieldguide.config import Project
from fieldguide.errors import ConfigError, NotReadyError
from fieldguide.models.checkpoints import checkpoint_writer, load_checkpoint, save_trajectories
from fieldguide.models.compare import compare_runs
from fieldguide.models.entropy import METHODS
from fieldguide.models.fit import FitState, fit_head, head_options, predict_head, schedule_from
from fieldguide.models.plots import plot_curves
from fieldguide.models.predict import check_metadata_mode, metadata_fields, metadata_matrix, prior_groups, prior_on_rest
from fieldguide.platform import samples, store
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)

MODES = ("head", "finetune")


# ---- the step -----------------------------------------------------------------------------------------
@dataclass
class TrainReport:
    run_id: str
    method: str
    mode: str
    epochs: int
    n_train: int
    excluded: int = 0
    downweighted: int = 0
    top1: float | None = None
    top5: float | None = None
    macro_f1: float | None = None
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    curves_png: str = ""
    checkpoint: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _training_table(project: Project, ds, ids: list[str], flagged_policy: str):
    """``(table, fit mask, unresolved-flag mask)`` for the samples ``ids``.

    A flagged sample is resolved once its label was set or confirmed (``label_history``) after
    the flag run that flagged it finished, or when its review state holds a decision that the
    last flag run kept (:data:`fieldguide.platform.review.DECIDED`: same evidence since).
    """
    import pandas as pd

    from fieldguide.platform.review import DECIDED, FIELD

    has_flags = samples.has_field(ds, "label_issue")
    has_states = samples.has_field(ds, FIELD)
    fields = (["label_issue", "label_history"] + ([FIELD] if has_states else [])) if has_flags else []
    table = store.samples_table(ds, fields).set_index("id")
    table = table.loc[ids]
    fit_mask = table["split"].isin(("train", "val")).to_numpy() & table["label"].notna().to_numpy()
    flagged = np.zeros(len(table), dtype=bool)
    last = store.warehouse(project).last_run("flag") if has_flags else None
    if has_flags and last is not None:
        since = pd.Timestamp(last["finished"] or last["started"])
        for i, (issue, hist) in enumerate(zip(table["label_issue"], table["label_history"])):
            if issue is True or issue == 1:
                times = [getattr(e, "time", None) for e in (hist or []) if e is not None]
                resolved = any(t is not None and pd.Timestamp(t) > since for t in times)
                decided = has_states and table[FIELD].iloc[i] in DECIDED
                flagged[i] = not (resolved or decided)
    return table, fit_mask, flagged


@writes('train')
def train(project: Project, *, method: str | None = None, mode: str | None = None, epochs: int | None = None,
          backbone: str | None = None, flagged: str | None = None, resume: str | None = None,
          kind: str = "train", metadata: str | None = None, progress: bool = True) -> TrainReport:
    """Train on the current labels of the store; see the module docstring.

    ``flagged`` (retrain): what to do with samples flagged by the last ``flag`` run and not
    resolved since (``keep``, ``downweight`` or ``exclude``; default ``train.flagged``).
    ``metadata`` (auto | none; default ``models.metadata``): in ``head`` mode, ``auto`` combines the
    trained head's test probabilities with the date/place prior as ``predict`` does
    (:func:`~fieldguide.models.predict.prior_on_rest`); without dates or places it is ``none``.
    """
    cfg = project.config.train
    wh = store.warehouse(project)
    resumed = None
    if resume:
        resumed = load_checkpoint(project, resume)
        config = resumed["config"]
        method, mode, epochs, backbone, flagged = (config["method"], config["mode"], config["epochs"],
                                                   config["backbone"], config["flagged"])
        kind = config.get("kind", kind)
        metadata = config.get("metadata", "none")  # a run recorded before the switch used none
    metadata = metadata or project.config.models.metadata
    check_metadata_mode(metadata)
    method = method or cfg.method
    mode = mode or cfg.mode
    if method not in METHODS:
        raise ConfigError(f"training method {method!r}: use one of {', '.join(METHODS)}")
    if mode not in MODES:
        raise ConfigError(f"training mode {mode!r}: use one of {', '.join(MODES)}")
    flagged = flagged or (cfg.flagged if kind == "retrain" else "keep")
    epochs = epochs or (cfg.epochs if mode == "head" else cfg.finetune_epochs)
    backbone = backbone or project.config.models.backbone
    ds = store.dataset(project, create=False)
    classes = store.classes(ds)
    index = {c: i for i, c in enumerate(classes)}
    config = {"method": method, "mode": mode, "epochs": epochs, "backbone": backbone, "flagged": flagged,
              "kind": kind, "lam_max": cfg.lam_max, "lam_min": cfg.lam_min, "switch_at": cfg.switch_at,
              "switch_rule": cfg.switch_rule, "reverse_schedule": cfg.reverse_schedule, "seed": cfg.seed,
              "lr": cfg.lr, "classes": classes, "metadata": metadata}
    run_id = wh.start_run(kind, config, resume, resumed["started"] if resumed else None)
    start = time.perf_counter()
    try:
        if mode == "head":
            report = _train_head(project, ds, run_id, config, classes, index, resumed, progress)
        else:
            report = _train_finetune(project, ds, run_id, config, classes, index, resumed, progress)
    except BaseException as e:
        wh.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
        raise
    report.seconds = time.perf_counter() - start
    wh.write("metrics", [{"run_id": run_id, "split": "all", "name": names.SECONDS, "value": report.seconds},
                         {"run_id": run_id, "split": "train", "name": names.N, "value": float(report.n_train)}])
    wh.finish_run(run_id, "completed")
    return report


def _weights_for(flagged_mask: np.ndarray, policy: str, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """``(keep mask, sample weights)`` for the flagged-sample policy."""
    keep = np.ones(len(flagged_mask), dtype=bool)
    w = np.ones(len(flagged_mask), dtype=np.float32)
    if policy == "exclude":
        keep = ~flagged_mask
    elif policy == "downweight":
        w[flagged_mask] = weight
    return keep, w


def _finish(project: Project, run_id: str, config: dict, classes: list[str], state: FitState,
            train_ids: list[str], probs_test, y_test, report: TrainReport) -> TrainReport:
    from fieldguide.models.costs import project_costs
    from fieldguide.models.evaluate import classification_metrics, record_metrics

    wh = store.warehouse(project)
    run_dir = project.run_dir(run_id)
    save_trajectories(project, run_id, train_ids, state)
    rows = [{"run_id": run_id, "step": c["epoch"], "name": name, "value": float(c[name])}
            for c in state.curves for name in names.CURVES if name in c]
    wh.write("curves", rows)
    title = f"{config['method']} ({config['mode']}), {len(train_ids)} samples"
    if probs_test is not None and len(y_test):
        cost, _ = project_costs(project.config.classes.costs, project.config.evaluate.cost_matrix, classes)
        m = classification_metrics(y_test, probs_test, classes, cost)
        record_metrics(wh, run_id, "test", m, classes)
        report.top1, report.top5, report.macro_f1 = m["top1"], m["top5"], m["macro_f1"]
        title += f": test top-1 {m['top1']:.3f}, macro-F1 {m['macro_f1']:.3f}"
    report.curves_png = str(plot_curves(state.curves, run_dir / "curves.png", title))
    return report


def _train_head(project, ds, run_id, config, classes, index, resumed, progress) -> TrainReport:
    from fieldguide.models.embed import load_embeddings

    cfg = project.config.train
    ids, X = load_embeddings(project, config["backbone"], ds)
    table, fit_mask, flagged_mask = _training_table(project, ds, ids, config["flagged"])
    keep, w = _weights_for(flagged_mask, config["flagged"], cfg.flagged_weight)
    train_mask = fit_mask & keep
    if train_mask.sum() < 2:
        raise NotReadyError("no labeled training samples with embeddings (ingest labeled images, then embed)")
    y = np.array([index[v] for v in table["label"][train_mask]])
    test_mask = (table["split"] == "test").to_numpy() & table["label"].notna().to_numpy()
    y_test = np.array([index[v] for v in table["label"][test_mask]], dtype=int)
    train_ids = [s for s, m in zip(ids, train_mask) if m]
    ckpt = checkpoint_writer(project, run_id, config, resumed)
    state = model_state = optim_state = None
    schedule = schedule_from(cfg)
    if resumed:
        state, model_state, optim_state = resumed["state"], resumed["model"], resumed["optimizer"]
        schedule.load_state_dict(resumed["schedule"])
    aug, pool = _augmentation_pool(ds, ids, X, train_ids)
    report = TrainReport(run_id=run_id, method=config["method"], mode="head", epochs=config["epochs"],
                         n_train=int(train_mask.sum()), excluded=int((fit_mask & ~keep).sum()),
                         downweighted=int((fit_mask & keep & (w < 1)).sum()),
                         resumed_from_epoch=state.epoch if state else 0, checkpoint=str(ckpt.path))
    options = dict(head_options(cfg, config["epochs"]), method=config["method"], schedule=schedule)
    model, state = fit_head(
        X[train_mask], y, len(classes), **options,
        weights=w[train_mask] if config["flagged"] == "downweight" else None,
        X_eval=X[test_mask], y_eval=y_test, state=state, model_state=model_state,
        optim_state=optim_state, checkpoint=ckpt, progress=progress,
        augmentations=aug, pool=pool, alpha=project.config.augment.alpha,
    )
    probs = predict_head(model, X[test_mask]) if test_mask.any() else None
    if probs is not None:
        probs = _with_metadata_prior(project, ds, run_id, config["metadata"], ids, X, train_mask, test_mask, y, probs)
    return _finish(project, run_id, config, classes, state, train_ids, probs, y_test, report)


def _with_metadata_prior(project, ds, run_id, mode, ids, X, train_mask, test_mask, y, probs) -> np.ndarray:
    """The test probabilities combined with the date/place prior under ``mode`` (``probs`` themselves
    when the training samples have no date or place); what was chosen goes to the run's config."""
    fields = metadata_fields(ds, mode)
    M = metadata_matrix(samples.arrays(ds, fields, ids=ids), fields)
    groups = prior_groups(M[train_mask])
    if not groups:
        return probs
    pcfg = project.config.predict
    probs, w, info = prior_on_rest(X[train_mask], y, M[train_mask], probs, M[test_mask], probs.shape[1],
                                   head=pcfg.head, folds=pcfg.folds, seed=pcfg.seed)
    store.warehouse(project).update_config(run_id, {"metadata_prior": {"groups": groups, "weight": w, **info}})
    return probs


def _augmentation_pool(ds, ids: list[str], X: np.ndarray, train_ids: list[str]):
    """``(embeddings of synthetic samples, training row -> their rows)`` for the α-mix."""
    if not samples.has_field(ds, "parent_id"):
        return None, {}
    syn = samples.arrays(ds, ["origin", "parent_id"])
    syn = syn[syn["origin"] == "synthetic"]
    syn_ids, parents = syn["id"].tolist(), syn["parent_id"].tolist()
    if not syn_ids:
        return None, {}
    row_of = {s: i for i, s in enumerate(ids)}
    train_row = {s: i for i, s in enumerate(train_ids)}
    feats, pool = [], {}
    for sid, parent in zip(syn_ids, parents):
        if sid in row_of and parent in train_row:
            pool.setdefault(train_row[parent], []).append(len(feats))
            feats.append(X[row_of[sid]])
    if not feats:
        return None, {}
    return np.stack(feats), {k: np.array(v) for k, v in pool.items()}


def _train_finetune(project, ds, run_id, config, classes, index, resumed, progress) -> TrainReport:
    from fieldguide.models.backbones import load_backbone
    from fieldguide.models.finetune import fit_finetune
    from fieldguide.models.inference import predict_images

    cfg = project.config.train
    mcfg = project.config.models
    bb = load_backbone(config["backbone"], mcfg.weights or None, runs_dir=project.runs_dir)
    table = store.samples_table(ds, ["label_issue"] if samples.has_field(ds, "label_issue") else []).set_index("id")
    ids = table.index.tolist()
    _, fit_mask, flagged_mask = _training_table(project, ds, ids, config["flagged"])
    keep, w = _weights_for(flagged_mask, config["flagged"], cfg.flagged_weight)
    train_mask = fit_mask & keep
    if train_mask.sum() < 2:
        raise NotReadyError("no labeled training samples (ingest labeled images first)")
    paths = table["filepath"].to_numpy()
    y = np.array([index[v] for v in table["label"][train_mask]])
    test_mask = (table["split"] == "test").to_numpy() & table["label"].notna().to_numpy()
    y_test = np.array([index[v] for v in table["label"][test_mask]], dtype=int)
    train_ids = [s for s, m in zip(ids, train_mask) if m]
    schedule = schedule_from(cfg)
    state = model_state = optim_state = None
    if resumed:
        state, model_state, optim_state = resumed["state"], resumed["model"], resumed["optimizer"]
        schedule.load_state_dict(resumed["schedule"])
    ckpt = checkpoint_writer(project, run_id, config, resumed)
    report = TrainReport(run_id=run_id, method=config["method"], mode="finetune", epochs=config["epochs"],
                         n_train=int(train_mask.sum()), excluded=int((fit_mask & ~keep).sum()),
                         downweighted=int((fit_mask & keep & (w < 1)).sum()),
                         resumed_from_epoch=state.epoch if state else 0, checkpoint=str(ckpt.path))
    model, state = fit_finetune(
        bb, list(paths[train_mask]), y, len(classes), method=config["method"], epochs=config["epochs"],
        lr=cfg.finetune_lr, weight_decay=cfg.weight_decay, batch_size=cfg.finetune_batch_size,
        num_workers=mcfg.num_workers, device=mcfg.device, schedule=schedule, k=cfg.grpo_k,
        weights=w[train_mask] if config["flagged"] == "downweight" else None,
        paths_eval=list(paths[test_mask]), y_eval=y_test, seed=cfg.seed, state=state, model_state=model_state,
        optim_state=optim_state, checkpoint=ckpt, progress=progress,
    )
    probs = None
    if test_mask.any():
        probs = predict_images(model, list(paths[test_mask]), bb.transform(), len(classes),
                               batch_size=cfg.finetune_batch_size, num_workers=mcfg.num_workers, device=mcfg.device)
    return _finish(project, run_id, config, classes, state, train_ids, probs, y_test, report)


# ---- retrain -----------------------------------------------------------------------------------------
@writes('retrain')
def retrain(project: Project, *, method: str | None = None, mode: str | None = None, epochs: int | None = None,
            flagged: str | None = None, progress: bool = True) -> tuple[TrainReport, dict]:
    """Train on the current labels (flagged samples kept, down-weighted or excluded as configured),
    evaluate, record the run, and compare it with the previous training run."""
    report = train(project, method=method, mode=mode, epochs=epochs, flagged=flagged, kind="retrain",
                   progress=progress)
    return report, compare_runs(project, report.run_id)
