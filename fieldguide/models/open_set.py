"""Unknown species: open-set scores per sample (higher = more likely a class the head never saw).

Three scores from one head (max-softmax, energy of its logits, kNN distance of the embedding to
the training embeddings) and their combination, a logistic regression fitted out of fold: inner
folds hold out some training classes, fit the head on the rest, and learn how the three scores
separate the held-out classes' samples from known ones (:func:`fit_combiner`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

from fieldguide.errors import FieldguideError

#: the scores, in the column order of :func:`score_table`
SCORES = ("max_softmax", "energy", "knn_distance")


def max_softmax_score(probs: np.ndarray) -> np.ndarray:
    """(n,) 1 - the top probability."""
    return 1.0 - probs.max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """(n,) the energy -logsumexp(logits) (Liu et al. 2020): high for inputs far from every class."""
    return -logsumexp(logits, axis=1)


def knn_distance(X_ref: np.ndarray, X: np.ndarray, *, k: int = 1, exclude_self: bool = False) -> np.ndarray:
    """(n,) cosine distance of each row of ``X`` to its ``k``-th nearest row of ``X_ref`` (Sun et al.
    2022); ``exclude_self``: ``X`` is ``X_ref`` and a row is not its own neighbour."""
    ref = normalize(np.asarray(X_ref, dtype=np.float32))
    k = max(1, min(k, len(ref) - int(exclude_self)))
    nn = NearestNeighbors(n_neighbors=k + int(exclude_self)).fit(ref)
    dist, _ = nn.kneighbors(normalize(np.asarray(X, dtype=np.float32)))
    return dist[:, -1] ** 2 / 2  # euclidean on unit vectors -> cosine distance


def head_logits(head: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """The head's logits (``decision_function`` of the head or its inner model), else log-probabilities."""
    X = np.asarray(X, dtype=np.float32)
    for model in (head, getattr(head, "model_", None)):
        if model is not None and hasattr(model, "decision_function"):
            z = np.asarray(model.decision_function(X))
            return z if z.ndim == 2 else np.stack([-z, z], axis=1)
    return np.log(np.clip(head.predict_proba(X), 1e-12, None))


def score_table(head: BaseEstimator, X_train: np.ndarray, X: np.ndarray, *, k: int = 1,
                exclude_self: bool = False) -> np.ndarray:
    """(n, 3) the :data:`SCORES` of rows ``X`` under ``head`` fitted on ``X_train``."""
    probs = head.predict_proba(np.asarray(X, dtype=np.float32))
    return np.column_stack([max_softmax_score(probs), energy_score(head_logits(head, X)),
                            knn_distance(X_train, X, k=k, exclude_self=exclude_self)])


def fit_combiner(head: BaseEstimator, X: np.ndarray, y: np.ndarray, *, rounds: int = 5, held_out: float = 0.2,
                 k: int = 1, seed: int = 0) -> BaseEstimator:
    """A logistic regression over the :data:`SCORES`, fitted on simulated unknowns: each of
    ``rounds`` rounds holds out a ``held_out`` share of the classes (at least one), fits ``head``
    (cloned) on 3/4 of the other classes' samples, and scores the remaining 1/4 (known, 0) and the
    held-out classes' samples (unknown, 1). Needs at least 3 classes."""
    X, y = np.asarray(X, dtype=np.float32), np.asarray(y, dtype=int)
    classes = np.unique(y)
    if len(classes) < 3:
        raise FieldguideError(f"open-set combiner: needs at least 3 classes to hold some out, got {len(classes)}")
    rng = np.random.default_rng(seed)
    feats, target = [], []
    for _ in range(rounds):
        out = rng.choice(classes, size=max(1, round(held_out * len(classes))), replace=False)
        unknown = np.isin(y, out)
        known = np.flatnonzero(~unknown)
        val = np.zeros(len(y), dtype=bool)
        val[rng.choice(known, size=max(1, len(known) // 4), replace=False)] = True
        fit = ~unknown & ~val
        fitted = clone(head).fit(X[fit], y[fit])
        rows = val | unknown
        feats.append(score_table(fitted, X[fit], X[rows], k=k))
        target.append(unknown[rows].astype(int))
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(np.vstack(feats), np.concatenate(target))


def combined_score(combiner: BaseEstimator, table: np.ndarray) -> np.ndarray:
    """(n,) the combiner's probability that a row of :func:`score_table` is an unknown class."""
    return combiner.predict_proba(table)[:, 1]


def open_set_auroc(unknown: np.ndarray, score: np.ndarray) -> float:
    """AUROC of ``score`` separating ``unknown`` rows (True) from known ones; NaN without both."""
    unknown = np.asarray(unknown, dtype=bool)
    if unknown.all() or not unknown.any():
        return float("nan")
    return float(roc_auc_score(unknown, score))
