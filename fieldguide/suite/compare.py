"""The four comparison families: each default of the project (its own code) beside its plain baseline."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from fieldguide.config.sections import PredictSection, PseudolabelSection, SignalsSection, TrainSection
from fieldguide.suite.plan import FAMILIES, COLUMNS, SEED, LR, FULL_BATCH, CLEANLAB, Plan
from fieldguide.suite.collections import Features
from fieldguide.suite.baselines import top1_macro_f1, detection_scores, plain_lr_probs, plain_lr_oof, full_batch_linear_ce


# ---- the project's defaults, as functions of arrays --------------------------------------------------------
def _rows(setting: str, method: str, role: str, metrics: dict[str, float]) -> list[dict]:
    return [{"setting": setting, "method": method, "role": role, "metric": m, "value": float(v)}
            for m, v in metrics.items()]


def train_settings(cfg: TrainSection, epochs: int | None = None) -> dict:
    """``fit_head``'s keyword arguments from the ``[train]`` section (what ``train --mode head`` passes),
    without the method and seed (each comparison names its own)."""
    from fieldguide.models.fit import head_options

    options = head_options(cfg, epochs)
    del options["method"], options["seed"]
    return options


def project_train_probs(X_train, y_train, X_test, n_classes: int, *, cfg: TrainSection, method: str | None = None,
                        epochs: int | None = None) -> np.ndarray:
    """Test probabilities of the head ``train --mode head`` trains (its loop, the config's recipe)."""
    from fieldguide.models.train import fit_head, predict_head

    model, _ = fit_head(np.asarray(X_train, dtype=np.float32), y_train, n_classes, method=method or cfg.method,
                        seed=cfg.seed, progress=False, **train_settings(cfg, epochs))
    return predict_head(model, np.asarray(X_test, dtype=np.float32))


def pseudolabel_defaults() -> dict:
    """The defaults of the ``pseudolabel`` step (``[pseudolabel]``: threshold, EMA decay, mu, ...)."""
    return PseudolabelSection().model_dump(exclude={"mode"})


def compare_heads(f: Features, *, predict: PredictSection) -> list[dict]:
    """The ``[predict] head`` (fit on train, as ``predict`` fits it for test samples) vs plain LR."""
    from sklearn.base import clone

    from fieldguide.models.crossval import aligned_proba
    from fieldguide.models.heads import make_head

    head = clone(make_head(predict.head)).fit(f.X_train, f.y_train)
    default = top1_macro_f1(f.y_test, aligned_proba(head, f.X_test, f.n_classes))
    baseline = top1_macro_f1(f.y_test, plain_lr_probs(f.X_train, f.y_train, f.X_test, f.n_classes))
    return (_rows("test", f"{predict.head} (predict.head)", "default", default)
            + _rows("test", LR, "baseline", baseline))


def compare_noise(f: Features, *, plan: Plan, predict: PredictSection, train: TrainSection) -> list[dict]:
    """The noise score and ``label_issue`` (as ``flag`` computes them) vs cleanlab on plain LR, per
    noise kind and rate injected into the train labels."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from fieldguide.curation.noise_bench import inject_noise, run_noise_benchmark
    from fieldguide.curation.signals import registered_signals

    weights = SignalsSection().weights  # the code's default weights, not a cached project file's
    combined = [name for name, spec in registered_signals().items()
                if any(weights.get(out, 0) > 0 for out in spec.noisy_when)]
    rows = []
    for kind in plan.noise_kinds:
        for rate in plan.noise_rates:
            setting = f"{kind} {rate:.0%}"
            # the entropy signal reads the trajectories of the latest ``train`` run: the default method
            settings = dict(train_settings(train, plan.epochs), method=train.method)
            noisy = inject_noise(f.y_train, f.n_classes, rate, kind, seed=plan.seed, features=f.X_train)
            truth = noisy != f.y_train
            table = run_noise_benchmark(f.X_train, f.y_train, f.n_classes, rates=(rate,), kinds=(kind,),
                                        seed=plan.seed, head=predict.head, folds=predict.folds, signals=combined,
                                        entropy=True, train_settings=settings, progress=False)
            ns = table.set_index("signal").loc["noise_score"]
            rows += _rows(setting, "noise_score / label_issue (flag)", "default",
                          {"auroc": ns["auroc"], "f1": ns["f1"]})
            probs = plain_lr_oof(f.X_train, noisy, f.n_classes, folds=5, seed=plan.seed)
            quality = get_label_quality_scores(noisy, probs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                issues = find_label_issues(noisy, probs)
            rows += _rows(setting, CLEANLAB, "baseline", detection_scores(truth, 1 - quality, issues))
    return rows


def compare_training(f: Features, *, plan: Plan, train: TrainSection) -> list[dict]:
    """``train --mode head`` (default method, and ce) vs the full-batch linear CE head, on train labels
    with symmetric noise; scored on the clean test labels."""
    from fieldguide.curation.noise_bench import inject_noise

    rows = []
    for rate in plan.train_rates:
        setting = f"symmetric {rate:.0%}"
        noisy = inject_noise(f.y_train, f.n_classes, rate, "symmetric", seed=plan.seed)
        for method in dict.fromkeys((train.method, "ce")):
            probs = project_train_probs(f.X_train, noisy, f.X_test, f.n_classes, cfg=train, method=method,
                                        epochs=plan.epochs)
            rows += _rows(setting, f"{method} (train)", "default" if method == train.method else "baseline",
                          top1_macro_f1(f.y_test, probs))
        probs = full_batch_linear_ce(f.X_train, noisy, f.X_test, f.n_classes, steps=plan.full_batch_steps,
                                     seed=plan.seed)
        rows += _rows(setting, FULL_BATCH, "baseline", top1_macro_f1(f.y_test, probs))
    return rows


def labeled_subset(y: np.ndarray, k: int, seed: int = SEED) -> np.ndarray:
    """A boolean mask keeping ``k`` samples of each class (all of a smaller one), chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.where(y == c)[0]
        keep[rng.choice(members, size=min(k, len(members)), replace=False)] = True
    return keep


def compare_pseudolabel(f: Features, *, plan: Plan, train: TrainSection) -> list[dict]:
    """k labels per class: ``pseudolabel`` (its defaults, its abstention rule), accept every pseudo-label,
    ``train`` vs ``train`` on the k labels and plain LR on them; and ``train`` on the k labels vs plain LR.

    When the step abstains (:func:`~fieldguide.curation.semi.estimate_pseudo_gain` says the
    pseudo-labels would not help), nothing is accepted: the default's cell is ``train`` on the k
    labels, and ``abstained`` is 1."""
    from fieldguide.curation.semi import estimate_pseudo_gain, fit_semi_supervised, select_pseudo_labels
    from fieldguide.models.train import predict_head

    d = pseudolabel_defaults()
    semi = {k: d[k] for k in ("ema_decay", "mu", "lambda_u", "epochs")}
    rows = []
    for k in plan.ks:
        lab = labeled_subset(f.y_train, k, plan.seed)
        X_l, y_l = f.X_train[lab].astype(np.float32), f.y_train[lab]
        X_u, y_u = f.X_train[~lab].astype(np.float32), f.y_train[~lab]
        supervised = top1_macro_f1(f.y_test, project_train_probs(X_l, y_l, f.X_test, f.n_classes, cfg=train,
                                                                 epochs=plan.epochs))
        lr = top1_macro_f1(f.y_test, plain_lr_probs(X_l, y_l, f.X_test, f.n_classes))
        semi_fit = fit_semi_supervised(X_l, y_l, X_u, f.n_classes, threshold=d["threshold"], seed=train.seed, **semi)
        rows_u, pseudo, _ = select_pseudo_labels(predict_head(semi_fit.teacher, X_u), d["threshold"],
                                                 balance=d["balance"])
        precision = float((pseudo == y_u[rows_u]).mean()) if len(rows_u) else float("nan")
        student = train if plan.epochs is None else train.model_copy(update={"epochs": plan.epochs})
        estimate = (estimate_pseudo_gain(X_l, y_l, X_u, f.n_classes, student=student, semi=semi,
                                         threshold=d["threshold"], balance=d["balance"], seed=train.seed)
                    if d["abstain"] else None)
        abstained = estimate is not None and not estimate.helps
        if abstained:
            accepted = supervised  # nothing accepted: train on the k labels
        else:
            X_a, y_a = np.concatenate([X_l, X_u[rows_u]]), np.concatenate([y_l, pseudo])
            accepted = top1_macro_f1(f.y_test, project_train_probs(X_a, y_a, f.X_test, f.n_classes, cfg=train,
                                                                   epochs=plan.epochs))
        s, sup = f"{k}/class", f"{k}/class, supervised"
        extra = {"pseudo_labels": 0 if abstained else len(rows_u), "pseudo_precision": precision,
                 "abstained": int(abstained)}
        if estimate is not None:
            extra |= {"estimated_gain": estimate.gain}
        rows += _rows(s, "pseudolabel, accept, train", "default", {**accepted, **extra})
        rows += _rows(s, "train on the k labels", "baseline", supervised)
        rows += _rows(s, f"{LR} on the k labels", "baseline", lr)
        rows += _rows(sup, "train on the k labels", "default", supervised)
        rows += _rows(sup, f"{LR} on the k labels", "baseline", lr)
    return rows


COMPARISONS: dict[str, Callable[..., list[dict]]] = {
    "heads": lambda f, plan, cfg: compare_heads(f, predict=cfg["predict"]),
    "noise": lambda f, plan, cfg: compare_noise(f, plan=plan, predict=cfg["predict"], train=cfg["train"]),
    "train": lambda f, plan, cfg: compare_training(f, plan=plan, train=cfg["train"]),
    "pseudolabel": lambda f, plan, cfg: compare_pseudolabel(f, plan=plan, train=cfg["train"]),
}


def run_comparisons(f: Features, plan: Plan, *, families: Iterable[str] = FAMILIES,
                    on_step: Callable[[str, float], None] | None = None) -> dict[str, pd.DataFrame]:
    """Every family of comparisons on one collection's features; family -> rows (:data:`COLUMNS`)."""
    cfg = {"predict": PredictSection(), "train": TrainSection()}  # the code's defaults
    out = {}
    for family in families:
        start = time.perf_counter()
        rows = COMPARISONS[family](f, plan, cfg)
        out[family] = pd.DataFrame([{"collection": f.name, **r} for r in rows], columns=COLUMNS)
        if on_step is not None:
            on_step(family, time.perf_counter() - start)
    return out
