"""Multinomial logistic regression (scikit-learn) on L2-normalised embeddings."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from fieldguide.models.heads.base import Head, register_head


@register_head("logreg")
class LogRegHead(Head):
    """Multinomial logistic regression on L2-normalised features (``C`` as in scikit-learn),
    class-weighted for rare classes."""

    def __init__(self, C: float = 10.0, class_weight: str | None = "balanced", max_iter: int = 300):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter

    def fit(self, X, y):
        self.model_ = make_pipeline(
            Normalizer(), LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter))
        self.model_.fit(np.asarray(X, dtype=np.float32), y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(np.asarray(X, dtype=np.float32))
