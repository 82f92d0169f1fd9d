"""The benchmark suite: every learned default of the project against its plain baseline, per collection.

``fieldguide bench suite`` ingests each collection into a project of its own (under
``benchmarks/.cache/<name>``; ingest adds nothing twice and embed embeds only new images, so a
re-run does not re-embed), reads its cached embeddings and labels as arrays, and runs four
families of comparisons on the same features in the same run, each default computed by the
project's own code with the defaults of :mod:`fieldguide.config` and each baseline by plain
scikit-learn, cleanlab or torch:

- ``heads``: the ``[predict] head`` fit on train vs ``LogisticRegression(C=10)`` on L2-normalised
  features; test top-1 and macro-F1.
- ``noise``: the noise score (AUROC) and its ``label_issue`` decision (F1), computed as ``flag``
  does (out-of-fold pred_probs of the predict head, the weighted signals, a two-stage entropy run's
  trajectories) vs cleanlab alone on 5-fold plain LR pred_probs (``get_label_quality_scores``
  AUROC, ``find_label_issues`` F1), at symmetric and confusable-pair noise injected into the train
  labels with a fixed seed.
- ``train``: ``train --mode head`` (the default method, and ``ce``) on noisy train labels vs a
  full-batch weight-decayed linear CE head (Adam 1e-2, weight decay 1e-4, 200 steps); clean test
  top-1 and macro-F1.
- ``pseudolabel``: k labels per class kept, the rest of train unlabeled: ``pseudolabel`` with its
  defaults, every pseudo-label accepted, then ``train`` vs supervised only (``train`` on the k
  labels, and plain LR on them); and ``train`` on the k labels vs plain LR.

Every row is ``collection, setting, method, role (default | baseline), metric, value``; one CSV
per family (``suite_<family>.csv``). :func:`side_by_side` puts each default beside each baseline
of its setting and marks where the default loses.

A collection whose store has no test split gets the suite's split: per class, its samples (or
observations, when photos share one) in file path order, shuffled by one ``random.Random(7)``
taken class after class in class order, 30% of each class to test (the split of the reference
numbers in ``shared/data/README.md``).
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fieldguide.config.sections import (ModelsSection, PredictSection, PseudolabelSection, SignalsSection,
                                        TrainSection)
from fieldguide.errors import FieldguideError

log = logging.getLogger(__name__)

FAMILIES = ("heads", "noise", "train", "pseudolabel")
ROLES = ("default", "baseline")
COLUMNS = ["collection", "setting", "method", "role", "metric", "value"]
SEED = 0
SPLIT_SEED = 7  # random.Random(7): the split of shared/data/README.md's reference numbers
TEST_SHARE = 0.3

# plain baselines
LR_C = 10.0
LR_MAX_ITER = 1000  # converged; sklearn's default 100 stops early on 1280-d features
LR = f"LogisticRegression(C={LR_C:g})"
FULL_BATCH = "full-batch linear CE (Adam 1e-2, wd 1e-4, 200 steps)"
CLEANLAB = "cleanlab (5-fold LR pred_probs)"


@dataclass(frozen=True)
class Plan:
    """What one run measures (``quick``: one rate, one k, fewer steps)."""

    noise_rates: tuple[float, ...] = (0.1, 0.2, 0.4)
    noise_kinds: tuple[str, ...] = ("symmetric", "pairs")
    train_rates: tuple[float, ...] = (0.2, 0.4)
    ks: tuple[int, ...] = (3, 5, 10)
    epochs: int | None = None  # head training epochs; None: the config's train.epochs
    full_batch_steps: int = 200
    seed: int = SEED

    @classmethod
    def quick(cls) -> "Plan":
        return cls(noise_rates=(0.2,), train_rates=(0.4,), ks=(5,), epochs=5, full_batch_steps=50)


# ---- collections ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Collection:
    """A collection of labeled images and how ``ingest`` reads it."""

    name: str
    source: Path
    format: str = "folder"
    options: dict = field(default_factory=dict)  # ingest's keyword options (csv columns, ranks, ...)


def bundled_collections(data: Path) -> dict[str, Collection]:
    """The collections under ``shared/data`` (see its README), each with its matching format.

    inat-plants-dev is a manifest (``metadata.csv``: path, species, scientific_name, family,
    genus, observed_on, inat_id), not an iNaturalist export (no ``id`` column, photos not named
    by observation id): it is read by the ``csv`` format with its ranks; it has no split, so
    the suite makes one.
    """
    data = Path(data)
    return {
        "cub100": Collection("cub100", data / "cub100", "cub"),
        "inat-plants-dev": Collection(
            "inat-plants-dev", data / "inat-plants-dev" / "metadata.csv", "csv",
            {"filepath_column": "path", "label_column": "scientific_name", "ranks": "family,genus"}),
        "flowers12": Collection("flowers12", data / "flowers12", "folder"),
    }


def parse_collection(text: str) -> Collection:
    """``NAME=PATH[:FORMAT]`` (FORMAT one of ingest's formats, default ``folder``)."""
    from fieldguide.platform.sources import FORMATS

    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise FieldguideError(f"--collection {text!r}: use NAME=PATH[:FORMAT], e.g. mine=/data/birds:folder")
    path, colon, fmt = rest.rpartition(":")
    if not colon or fmt not in FORMATS:  # no format given (or a ':' inside the path)
        path, fmt = rest, "folder"
    if not all(c.isalnum() or c in "_.-" for c in name):
        raise FieldguideError(f"--collection {text!r}: the name may hold letters, digits, '_', '.', '-' only")
    return Collection(name, Path(path).expanduser(), fmt)


def resolve_collections(data: Path, names: str | None, others: list[Collection]) -> list[Collection]:
    """The bundled collections named in ``names`` (comma-separated; all of them when neither names
    nor ``others`` are given), then ``others``."""
    bundled = bundled_collections(data)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else ([] if others else list(bundled))
    unknown = [n for n in wanted if n not in bundled]
    if unknown:
        raise FieldguideError(f"unknown collection(s) {', '.join(unknown)} (bundled: {', '.join(bundled)}; "
                              "another one: --collection NAME=PATH[:FORMAT])")
    return [bundled[n] for n in wanted] + others


# ---- features ------------------------------------------------------------------------------------------
@dataclass
class Features:
    """One collection's embeddings and labels, split into train and test (class indices)."""

    name: str
    classes: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    split: str  # "store" or the suite's split rule

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def suite_split(labels: Iterable[str], paths: Iterable[str], groups: Iterable[str | None] | None = None, *,
                seed: int = SPLIT_SEED, test_share: float = TEST_SHARE) -> np.ndarray:
    """A boolean test mask: per class (in sorted order), its units (samples, or the ``groups`` that
    photos of one observation share) in file path order are shuffled by one ``random.Random(seed)``
    and the first ``round(test_share * n)`` go to test."""
    labels, paths = list(labels), list(paths)
    groups = list(groups) if groups is not None else [None] * len(labels)
    rng = random.Random(seed)
    test = np.zeros(len(labels), dtype=bool)
    for cls in sorted(set(labels)):
        units: dict[str, list[int]] = {}
        for i in sorted((i for i, c in enumerate(labels) if c == cls), key=lambda i: paths[i]):
            units.setdefault(groups[i] if groups[i] is not None else paths[i], []).append(i)
        order = list(units)
        rng.shuffle(order)
        for key in order[:round(test_share * len(order))]:
            test[units[key]] = True
    return test


def collection_features(collection: Collection, cache: Path, *, backbone: str | None = None,
                        weights: str | None = None) -> Features:
    """Ingest ``collection`` into its project ``cache/<name>`` (nothing twice), embed what is not
    cached yet, and return its labeled samples' embeddings split into train and test."""
    from fieldguide.config import init_project
    from fieldguide.models.embed import embed, embedded_table
    from fieldguide.platform import samples, store
    from fieldguide.platform.ingest import ingest

    if not collection.source.exists():
        raise FieldguideError(f"collection {collection.name}: {collection.source} does not exist")
    project = init_project(Path(cache) / collection.name, collection.name)
    defaults = ModelsSection()  # the code's defaults, not a cached project file's
    project.config.models.backbone = backbone or defaults.backbone
    project.config.models.weights = weights or defaults.weights
    try:
        report = ingest(project, collection.source, fmt=collection.format, **collection.options)
        if report.added:
            log.info("%s: ingested %d images (%d rejected)", collection.name, report.added, len(report.rejects))
        embed(project)
        ds = store.dataset(project, create=False)
        extra = ["observation_id"] if samples.has_field(ds, "observation_id") else []
        ids, X, table = embedded_table(project, None, ds, extra)
    finally:
        store.release_database()
    labeled = table["label"].notna().to_numpy() & table["split"].isin(("train", "val", "test")).to_numpy()
    table, X = table[labeled], X[labeled]
    classes = sorted(table["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in table["label"]], dtype=int)
    test = (table["split"] == "test").to_numpy()
    split = "store"
    if not test.any():
        groups = table["observation_id"].tolist() if extra else None
        test = suite_split(table["label"], table["filepath"], groups)
        split = f"suite: {TEST_SHARE:.0%} of each class to test, random.Random({SPLIT_SEED})"
    if len(classes) < 2 or not (~test).any():
        raise FieldguideError(f"collection {collection.name}: needs labeled images of 2 or more classes "
                              f"(found {len(classes)} classes, {len(y)} labeled)")
    return Features(collection.name, classes, X[~test], y[~test], X[test], y[test], split)


# ---- metrics and plain baselines ---------------------------------------------------------------------
def top1_macro_f1(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(probs).argmax(axis=1)
    return {"top1": float(accuracy_score(y_true, pred)),
            "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0))}


def detection_scores(truth: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """AUROC of ``score`` (high = noisy) and F1 of the ``flagged`` set against the true flips."""
    from sklearn.metrics import f1_score, roc_auc_score

    truth = np.asarray(truth, dtype=bool)
    auroc = roc_auc_score(truth, score) if 0 < truth.sum() < len(truth) else float("nan")
    return {"auroc": float(auroc), "f1": float(f1_score(truth, np.asarray(flagged, dtype=bool), zero_division=0))}


def plain_lr():
    """The plain baseline head: ``LogisticRegression(C=10)`` (on L2-normalised features)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=LR_C, max_iter=LR_MAX_ITER)


def l2n(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def plain_lr_probs(X_train, y_train, X_test, n_classes: int) -> np.ndarray:
    """Test probabilities (n, n_classes) of :func:`plain_lr` fit on L2-normalised train features."""
    model = plain_lr().fit(l2n(X_train), y_train)
    out = np.zeros((len(X_test), n_classes))
    out[:, model.classes_] = model.predict_proba(l2n(X_test))
    return out


def plain_lr_oof(X, y, n_classes: int, *, folds: int = 5, seed: int = SEED) -> np.ndarray:
    """5-fold out-of-fold probabilities of :func:`plain_lr` (scikit-learn's ``cross_val_predict``)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(y, dtype=int)
    folds = max(2, min(folds, int(np.bincount(y).max())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        probs = cross_val_predict(plain_lr(), l2n(X), y, cv=cv, method="predict_proba")
    out = np.zeros((len(y), n_classes))
    out[:, np.unique(y)] = probs  # cross_val_predict orders columns by the classes present
    return out


def full_batch_linear_ce(X_train, y_train, X_test, n_classes: int, *, lr: float = 1e-2, weight_decay: float = 1e-4,
                         steps: int = 200, seed: int = SEED) -> np.ndarray:
    """The plain training baseline: a linear layer on L2-normalised features, full-batch cross-entropy,
    ``torch.optim.Adam(lr, weight_decay)`` for ``steps`` steps; returns test probabilities."""
    import torch

    torch.manual_seed(seed)
    Xt = torch.as_tensor(l2n(X_train), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    model = torch.nn.Linear(Xt.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        opt.step()
    with torch.inference_mode():
        return torch.softmax(model(torch.as_tensor(l2n(X_test), dtype=torch.float32)), dim=1).numpy()


# ---- the project's defaults, as functions of arrays --------------------------------------------------------
def _rows(setting: str, method: str, role: str, metrics: dict[str, float]) -> list[dict]:
    return [{"setting": setting, "method": method, "role": role, "metric": m, "value": float(v)}
            for m, v in metrics.items()]


def train_settings(cfg: TrainSection, epochs: int | None = None) -> dict:
    """``fit_head``'s keyword arguments from the ``[train]`` section (what ``train --mode head`` passes),
    without the method and seed (each comparison names its own)."""
    from fieldguide.models.train import head_options

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

    When the step abstains (:func:`~fieldguide.curation.pseudolabel.estimate_pseudo_gain` says the
    pseudo-labels would not help), nothing is accepted: the default's cell is ``train`` on the k
    labels, and ``abstained`` is 1."""
    from fieldguide.curation.pseudolabel import estimate_pseudo_gain, fit_semi_supervised, select_pseudo_labels
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


# ---- the run -------------------------------------------------------------------------------------------
@dataclass
class SuiteResult:
    tables: dict[str, pd.DataFrame]  # family -> rows of this run
    paths: dict[str, Path]  # family -> its CSV
    seconds: dict[str, float]  # collection -> seconds (features + comparisons)
    splits: dict[str, str]  # collection -> where its test split came from
    sizes: dict[str, tuple[int, int, int]]  # collection -> (classes, train, test)


def run_suite(collections: list[Collection], *, cache: Path, results: Path, plan: Plan | None = None,
              backbone: str | None = None, weights: str | None = None, progress: bool = True,
              families: Iterable[str] = FAMILIES) -> SuiteResult:
    """Features and comparisons for each collection; each family's rows go to ``results/suite_<family>.csv``
    (rows of other collections already there are kept, this run's collections replaced; a family
    not run leaves its file alone)."""
    from tqdm.auto import tqdm

    plan = plan or Plan()
    names = [c.name for c in collections]
    if len(set(names)) != len(names):
        raise FieldguideError(f"collections named twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    families = list(dict.fromkeys(families))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise FieldguideError(f"families {', '.join(unknown) or '(none)'}: use some of {', '.join(FAMILIES)}")
    frames: dict[str, list[pd.DataFrame]] = {family: [] for family in families}
    seconds, splits, sizes = {}, {}, {}
    bar = tqdm(total=len(collections) * (1 + len(families)), desc="suite", unit="step",
               disable=None if progress else True)
    for c in collections:
        start = time.perf_counter()
        bar.set_postfix_str(f"{c.name}: ingest, embed")
        f = collection_features(c, cache, backbone=backbone, weights=weights)
        splits[c.name], sizes[c.name] = f.split, (f.n_classes, len(f.y_train), len(f.y_test))
        log.info("%s: %d classes, %d train, %d test (split: %s)", c.name, f.n_classes, len(f.y_train),
                 len(f.y_test), f.split)
        bar.update()

        def step(family: str, secs: float, name=c.name) -> None:
            log.info("%s: %s in %.0f s", name, family, secs)
            bar.update()

        bar.set_postfix_str(f"{c.name}: comparisons")
        for family, df in run_comparisons(f, plan, families=families, on_step=step).items():
            frames[family].append(df)
        seconds[c.name] = time.perf_counter() - start
    bar.close()
    tables = {family: pd.concat(dfs, ignore_index=True) for family, dfs in frames.items()}
    paths = {family: write_results(df, Path(results) / f"suite_{family}.csv") for family, df in tables.items()}
    return SuiteResult(tables, paths, seconds, splits, sizes)


def write_results(rows: pd.DataFrame, path: Path) -> Path:
    """Write ``rows`` to ``path``, keeping the rows of other collections that the file holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = pd.read_csv(path)
        rows = pd.concat([old[~old["collection"].isin(rows["collection"].unique())], rows], ignore_index=True)
    rows[COLUMNS].to_csv(path, index=False)  # full precision: a table made from the file marks what the run marked
    return path


# ---- side by side -------------------------------------------------------------------------------------
def side_by_side(rows: pd.DataFrame) -> pd.DataFrame:
    """Each default beside each baseline of its setting, per metric, one column group per collection.

    Returns one row per (setting, metric, default method, baseline method) with, for each
    collection C, ``C`` (the default's value), ``C baseline`` and ``C loses`` (True where the
    default is below the baseline; every metric here is higher-is-better). A default metric that
    no baseline has (e.g. the number of pseudo-labels) gets one row with an empty baseline.
    """
    bad = set(rows["role"]) - set(ROLES)
    if bad:
        raise ValueError(f"roles {sorted(bad)}: use {ROLES}")
    collections = list(dict.fromkeys(rows["collection"]))
    settings = list(dict.fromkeys(rows["setting"]))
    value = rows.set_index(["collection", "setting", "method", "metric"])["value"]
    out = []
    for setting in settings:
        here = rows[rows["setting"] == setting]
        defaults = list(dict.fromkeys(here.loc[here["role"] == "default", "method"]))
        baselines = list(dict.fromkeys(here.loc[here["role"] == "baseline", "method"]))
        for d in defaults:
            for metric in dict.fromkeys(here.loc[here["method"] == d, "metric"]):
                against = [b for b in baselines if ((here["method"] == b) & (here["metric"] == metric)).any()]
                for b in against or [None]:
                    row = {"setting": setting, "metric": metric, "default": d, "baseline": b or ""}
                    for c in collections:
                        dv = value.get((c, setting, d, metric), np.nan)
                        bv = value.get((c, setting, b, metric), np.nan) if b else np.nan
                        row[c] = dv
                        row[f"{c} baseline"] = bv
                        row[f"{c} loses"] = bool(dv < bv)  # NaN compares False: nothing to lose against
                    out.append(row)
    return pd.DataFrame(out)


COUNTS = {"pseudo_labels", "abstained"}  # metrics that count things (shown as whole numbers)


def fmt(v: float, metric: str = "", digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{int(v)}" if metric in COUNTS else f"{v:.{digits}f}"


def fmt_pair(default: float, baseline: float | None, metric: str = "") -> str:
    """``default | baseline``; with 4 decimals where 3 would show a difference as a tie."""
    if baseline is None:
        return fmt(default, metric)
    digits = 3
    if fmt(default, metric) == fmt(baseline, metric) and default != baseline:
        digits = 4
    return f"{fmt(default, metric, digits)} | {fmt(baseline, metric, digits)}"


def render(table: pd.DataFrame, title: str):
    """A rich Table: per collection "default | baseline", a cell where the default loses marked ✗ (red)."""
    from rich.table import Table

    collections = [c[: -len(" loses")] for c in table.columns if c.endswith(" loses")]
    t = Table(title=title, show_lines=False)
    for name in ("setting", "metric", "default", "baseline"):
        t.add_column(name, overflow="fold")
    for c in collections:
        t.add_column(f"{c}\ndefault | baseline", justify="right")
    for _, r in table.iterrows():
        cells = []
        for c in collections:
            text = fmt_pair(r[c], r[f"{c} baseline"] if r["baseline"] else None, r["metric"])
            cells.append(f"[red]{text} ✗[/red]" if r[f"{c} loses"] else text)
        t.add_row(r["setting"], r["metric"], r["default"], r["baseline"] or "–", *cells)
    return t
