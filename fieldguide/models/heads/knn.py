"""Cosine k-nearest neighbours (scikit-learn) with similarity-weighted votes."""

from __future__ import annotations

from functools import partial

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from fieldguide.models.heads.base import Head, register_head

FLOOR = 1e-6  # a vote every class gets (the nearest neighbour's weighs 1): no class is impossible


def similarity_weights(dist: np.ndarray, temperature: float) -> np.ndarray:
    """exp(sim / T) of each neighbour (sim = 1 - cosine distance), scaled so the nearest weighs 1."""
    return np.exp(-(dist - dist.min(axis=1, keepdims=True)) / temperature)


@register_head("knn")
class KNNHead(Head):
    """Cosine kNN: each of the ``k`` nearest training samples votes with weight exp(sim / T)."""

    def __init__(self, k: int = 10, temperature: float = 0.05):
        self.k = k
        self.temperature = temperature

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float32)
        self.model_ = KNeighborsClassifier(n_neighbors=min(self.k, len(X)), metric="cosine", algorithm="brute",
                                           weights=partial(similarity_weights, temperature=self.temperature))
        self.model_.fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        """scikit-learn's weighted votes, plus ``FLOOR`` votes for every class so that
        log-probabilities stay finite."""
        X = np.asarray(X, dtype=np.float32)
        p = self.model_.predict_proba(X)  # votes / their total W
        dist, _ = self.model_.kneighbors(X)
        total = similarity_weights(dist, self.temperature).sum(axis=1, keepdims=True)  # W
        p = p + FLOOR / total  # (votes + FLOOR) / W
        return p / p.sum(axis=1, keepdims=True)
