"""How good an embedding is, apart from any head: kNN accuracy, silhouette, alignment and
uniformity, and the ratio of within- to between-class distance.

Every function takes plain arrays (``X`` (n, d) features, ``y`` (n,) class indices) and
L2-normalises the features first (the hypersphere Wang & Isola's measures are defined on; cosine
geometry, as the heads use). The pairwise measures look at every pair of at most ``max_samples``
rows (a seeded subsample beyond that), so they stay cheap on large test sets.

- :func:`knn_top1`: top-1 of a cosine k-nearest-neighbour classifier (train rows as memory);
- :func:`silhouette`: scikit-learn's ``silhouette_score`` with the cosine metric (-1 to 1, higher better);
- :func:`alignment`: mean squared distance of same-class pairs, ``E ||f(x) - f(y)||^2`` (0 to 4, lower better);
- :func:`uniformity`: ``log E exp(-t ||f(x) - f(y)||^2)`` over all pairs, t = 2 (-4 to 0, lower better);
- :func:`distance_ratio`: mean within-class distance over mean between-class distance (lower better).

Alignment and uniformity: Wang & Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere" (ICML 2020), with a class's members as positive pairs.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise_distances, silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize

from fieldguide import names
from fieldguide.errors import FieldguideError

MAX_SAMPLES = 2000
#: what :func:`embedding_quality` returns, and whether more is better
QUALITY_METRICS = {names.KNN_TOP1: "higher", names.SILHOUETTE: "higher", names.ALIGNMENT: "lower",
                   names.UNIFORMITY: "lower", names.DISTANCE_RATIO: "lower"}


def _check(X: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise FieldguideError(f"{what}: expected X (n, d) and y (n,), got X {X.shape} and y {y.shape}")
    if len(np.unique(y)) < 2:
        raise FieldguideError(f"{what}: needs samples of 2 or more classes (got {len(np.unique(y))})")
    return normalize(X), y


def _subsample(X: np.ndarray, y: np.ndarray, max_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(y) <= max_samples:
        return X, y
    keep = np.sort(np.random.default_rng(seed).choice(len(y), max_samples, replace=False))
    return X[keep], y[keep]


def _pairs(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, same_class)`` of every unordered pair of distinct rows (condensed, i < j)."""
    iu = np.triu_indices(len(y), k=1)
    return pairwise_distances(X)[iu], (y[:, None] == y[None, :])[iu]


def knn_top1(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *,
             k: int = 1) -> float:
    """Top-1 accuracy on the test rows of a cosine ``k``-nearest-neighbour vote over the train rows
    (k = 1: the nearest train row's class, as the reference numbers of shared/data measure it)."""
    Xtr, ytr = _check(X_train, y_train, "knn_top1")
    Xte = normalize(np.asarray(X_test, dtype=np.float64))
    knn = KNeighborsClassifier(n_neighbors=min(k, len(ytr)), metric="cosine").fit(Xtr, ytr)
    return float((knn.predict(Xte) == np.asarray(y_test)).mean())


def silhouette(X: np.ndarray, y: np.ndarray, *, max_samples: int = MAX_SAMPLES, seed: int = 0) -> float:
    """Mean silhouette with cosine distance (classes as clusters); -1 to 1, higher: tighter, apart."""
    X, y = _subsample(*_check(X, y, "silhouette"), max_samples, seed)
    return float(silhouette_score(X, y, metric="cosine"))


def alignment(X: np.ndarray, y: np.ndarray, *, alpha: float = 2.0, max_samples: int = MAX_SAMPLES,
              seed: int = 0) -> float:
    """Wang & Isola's alignment: mean of ``||f(x) - f(y)||^alpha`` over same-class pairs; lower: closer."""
    d, same = _pairs(*_subsample(*_check(X, y, "alignment"), max_samples, seed))
    if not same.any():
        raise FieldguideError("alignment: no class has two samples")
    return float(np.mean(d[same] ** alpha))


def uniformity(X: np.ndarray, y: np.ndarray | None = None, *, t: float = 2.0, max_samples: int = MAX_SAMPLES,
               seed: int = 0) -> float:
    """Wang & Isola's uniformity: ``log`` of the mean of ``exp(-t ||f(x) - f(y)||^2)`` over all pairs;
    lower: spread more evenly over the sphere (``y`` only picks the same subsample as the others)."""
    y = np.zeros(len(X), dtype=int) if y is None else np.asarray(y)
    X, _ = _subsample(normalize(np.asarray(X, dtype=np.float64)), y, max_samples, seed)
    iu = np.triu_indices(len(X), k=1)
    sq = pairwise_distances(X, metric="sqeuclidean")[iu]
    # log-mean-exp, stable
    a = -t * sq
    return float(a.max() + np.log(np.mean(np.exp(a - a.max()))))


def distance_ratio(X: np.ndarray, y: np.ndarray, *, max_samples: int = MAX_SAMPLES, seed: int = 0) -> float:
    """Mean distance of same-class pairs over the mean distance of other-class pairs; below 1: classes
    are tighter than the space between them."""
    d, same = _pairs(*_subsample(*_check(X, y, "distance_ratio"), max_samples, seed))
    if not same.any():
        raise FieldguideError("distance_ratio: no class has two samples")
    return float(d[same].mean() / d[~same].mean())


def embedding_quality(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *,
                      k: int = 1, max_samples: int = MAX_SAMPLES, seed: int = 0) -> dict[str, float]:
    """Every measure of :data:`QUALITY_METRICS`: kNN over the train rows, the rest on the test rows."""
    kw = {"max_samples": max_samples, "seed": seed}
    return {names.KNN_TOP1: knn_top1(X_train, y_train, X_test, y_test, k=k),
            names.SILHOUETTE: silhouette(X_test, y_test, **kw), names.ALIGNMENT: alignment(X_test, y_test, **kw),
            names.UNIFORMITY: uniformity(X_test, y_test, **kw),
            names.DISTANCE_RATIO: distance_ratio(X_test, y_test, **kw)}
