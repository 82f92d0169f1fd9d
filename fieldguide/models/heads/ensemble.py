"""A weighted mean of registered heads' probabilities, weights picked on inner out-of-fold predictions."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, clone

from fieldguide.models.crossval import cross_val_pred_probs
from fieldguide.models.heads.base import Head, make_head, register_head


def tempered(p: np.ndarray, t: float) -> np.ndarray:
    """``softmax(log p / t)`` over the classes ``p`` gives any probability: t < 1 sharpens, t > 1
    flattens; zero columns stay zero."""
    return softmax(np.where(p > 0, np.log(np.clip(p, 1e-300, None)) / t, -np.inf), axis=1)


def mean_nll(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels ``y`` (n,) under probabilities ``p`` (n, k)."""
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def selection_key(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """How out-of-fold probabilities ``p`` are ranked: top-1 first, then the lower log-loss."""
    return float((p.argmax(axis=1) == y).mean()), -mean_nll(p, y)


def _member(m) -> BaseEstimator:
    """An unfitted copy of a member: a registered head by name, or a clone of an estimator."""
    return make_head(m) if isinstance(m, str) else clone(m)


@register_head("ensemble")
class EnsembleHead(Head):
    """The weighted mean of its members' probabilities, aligned on the union of their classes.

    A member is a registered head's name or an unfitted estimator (cloned before fitting: e.g. a
    pipeline that gives a head one backbone's columns, :mod:`.across_backbones`).
    ``weights=None`` picks them on inner out-of-fold predictions (see ``_search_weights``); then
    ``inner_probs_`` holds the mix of those predictions (rows as in ``fit``'s ``X``)."""

    def __init__(self, members: tuple = ("logreg", "mlp", "knn"), weights: tuple[float, ...] | None = None,
                 inner_folds: int = 5, step: float = 0.1, seed: int = 0):
        self.members = members
        self.weights = weights
        self.inner_folds = inner_folds
        self.step = step
        self.seed = seed

    def fit(self, X, y):
        self.classes_, yi = np.unique(y, return_inverse=True)
        if self.weights is not None:
            self.weights_ = np.asarray(self.weights, dtype=float)
            self.temperatures_ = np.ones(len(self.members))
        else:
            self.temperatures_, self.weights_, self.inner_probs_ = self._calibrate(np.asarray(X), yi)
        self.models_ = [_member(m).fit(X, y) for m in self.members]
        return self

    def _calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-member temperatures (lowest log-loss) and convex weights (highest accuracy, then
        lowest log-loss, over a grid of the simplex), both on inner out-of-fold probabilities.
        Heads differ in calibration (logistic regression on normalised embeddings is
        under-confident, kNN over-confident), so members are put on one scale before mixing.
        Each member alone is a corner of the grid: on the inner folds the ensemble is never worse
        than its best member. Returns ``(temperatures, weights, mixed inner probabilities)``."""

        from scipy.optimize import minimize_scalar

        k = len(self.classes_)
        raw = [cross_val_pred_probs(_member(m), X, y, k, folds=self.inner_folds, seed=self.seed)[0]
               for m in self.members]
        temps = np.array([minimize_scalar(lambda t, p=p: mean_nll(tempered(p, t), y), bounds=(0.05, 10.0),
                                          method="bounded").x for p in raw])
        oof = [tempered(p, t) for p, t in zip(raw, temps)]
        weights = self._search_weights(oof, y)
        return temps, weights, sum(w * p for w, p in zip(weights, oof))

    def _search_weights(self, oof: list[np.ndarray], y: np.ndarray) -> np.ndarray:
        n = round(1 / self.step)
        best, best_key = None, None
        for combo in itertools.product(range(n + 1), repeat=len(self.members)):
            if sum(combo) != n:
                continue
            w = np.array(combo, dtype=float) / n
            key = selection_key(sum(wi * pi for wi, pi in zip(w, oof)), y)
            if best_key is None or key > best_key:
                best, best_key = w, key
        return best

    def member_probas(self, X) -> list[np.ndarray]:
        """Each member's (temperature-scaled) probabilities over the ensemble's classes."""
        out = []
        for m, t in zip(self.models_, self.temperatures_):
            p = np.zeros((len(X), len(self.classes_)))
            p[:, np.searchsorted(self.classes_, m.classes_)] = m.predict_proba(X)
            out.append(tempered(p, t) if t != 1.0 else p)
        return out

    def predict_proba(self, X):
        w = np.asarray(self.weights_, dtype=float)
        probs = self.member_probas(X)
        return sum(wi * p for wi, p in zip(w / w.sum(), probs))
