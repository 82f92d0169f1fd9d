"""Out-of-fold probabilities: stratified K-fold over any head with the scikit-learn contract.

Used by ``predict`` (pred_probs for curation), by the ensemble head (inner folds to weigh its
members) and by the noise benchmark.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from fieldguide.errors import NotReadyError


def aligned_proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``model.predict_proba(X)`` spread over all ``n_classes`` (classes the model never saw: 0)."""
    out = np.zeros((len(X), n_classes))
    out[:, np.asarray(model.classes_, dtype=int)] = model.predict_proba(X)
    return out


def n_folds_for(y: np.ndarray, folds: int) -> int:
    """Folds that StratifiedKFold can make: at most the size of the largest class, at least 2."""
    largest = int(np.bincount(y).max()) if len(y) else 0
    return max(2, min(folds, largest, len(y)))


def cross_val_pred_probs(make: Callable[[], object], X: np.ndarray, y: np.ndarray, n_classes: int,
                         *, folds: int = 5, seed: int = 0, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities for labeled samples.

    Args:
        make: builds a fresh, unfitted head.
        X: (n, d) features; y: (n,) class indices in ``[0, n_classes)``.
    Returns:
        ``(pred_probs (n, n_classes), fold (n,))``: row i comes from the head fit without fold[i].
        A class with fewer samples than folds is absent from some training folds; its column is
        0 there (never a crash).
    """
    X = np.asarray(X)
    y = np.asarray(y, dtype=int)
    if len(y) < 2:
        raise NotReadyError(f"need at least 2 labeled samples for cross-validation, got {len(y)}")
    k = n_folds_for(y, folds)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    probs = np.zeros((len(y), n_classes))
    fold = np.full(len(y), -1, dtype=int)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(skf.split(X, y))
    for f, (tr, te) in enumerate(tqdm(splits, desc="k-fold", unit="fold", disable=None if progress else True)):
        model = make().fit(X[tr], y[tr])
        probs[te] = aligned_proba(model, X[te], n_classes)
        fold[te] = f
    return probs, fold
