"""Out-of-fold probabilities: stratified K-fold over any head with the scikit-learn contract.

Used by ``predict`` (pred_probs for curation), by the ensemble head (inner folds to weigh its
members) and by the noise benchmark.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from fieldguide.errors import NotReadyError

log = logging.getLogger(__name__)


def aligned_proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``model.predict_proba(X)`` spread over all ``n_classes`` (classes the model never saw: 0)."""
    out = np.zeros((len(X), n_classes))
    out[:, np.asarray(model.classes_, dtype=int)] = model.predict_proba(X)
    return out


def n_folds_for(y: np.ndarray, folds: int) -> int:
    """Folds that StratifiedKFold can make: at most the size of the largest class, at least 2."""
    largest = int(np.bincount(y).max()) if len(y) else 0
    return max(2, min(folds, largest, len(y)))


def cross_val_pred_probs(head: BaseEstimator, X: np.ndarray, y: np.ndarray, n_classes: int,
                         *, folds: int = 5, seed: int = 0,
                         ray_address: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities for labeled samples: scikit-learn's ``cross_val_predict(...,
    method="predict_proba")`` over a shuffled ``StratifiedKFold``.

    Args:
        head: an unfitted head (cloned for each fold).
        X: (n, d) features; y: (n,) class indices in ``[0, n_classes)``.
        ray_address: ``auto`` or a Ray cluster's address: each fold is a Ray task there
            (:func:`fieldguide.models.distributed.fold_probs`, the same folds and probabilities);
            None: here, by ``cross_val_predict``.
    Returns:
        ``(pred_probs (n, n_classes), fold (n,))``: row i comes from the head fit without fold[i].
        A class with fewer samples than folds is absent from some training folds; its column is
        0 there (``cross_val_predict`` fills it, never a crash). ``cross_val_predict`` only has
        columns for the classes present in ``y``; they are spread over all ``n_classes`` here
        (a class without samples: 0). At most as many folds as the largest class has samples.
    """
    X = np.asarray(X)
    y = np.asarray(y, dtype=int)
    if len(y) < 2:
        raise NotReadyError(f"need at least 2 labeled samples for cross-validation, got {len(y)}")
    k = n_folds_for(y, folds)
    fold = np.full(len(y), -1, dtype=int)
    log.info("k-fold: %d folds over %d samples", k, len(y))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")  # the case above
        warnings.filterwarnings("ignore", message="Number of classes in training fold")
        splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y))
        if ray_address:
            from fieldguide.models.distributed import fold_probs

            present = fold_probs(head, X, y, splits, address=ray_address)
        else:
            present = cross_val_predict(head, X, y, cv=splits, method="predict_proba")
    for f, (_, te) in enumerate(splits):
        fold[te] = f
    probs = np.zeros((len(y), n_classes))
    probs[:, np.unique(y)] = present
    return probs, fold
