"""Unknown species: open-set scores per sample (higher = more likely a class the head never saw).

Scores of one fitted head and its training embeddings, registered by name (:data:`SCORES`):

- ``max_softmax``: 1 - the top probability (Hendrycks & Gimpel 2017);
- ``max_logit``: minus the top logit (Vaze et al. 2022);
- ``energy``: minus ``T * logsumexp(logits / T)`` (Liu et al. 2020);
- ``knn_distance``: cosine distance to the ``k``-th nearest training embedding (Sun et al. 2022);
- ``mahalanobis`` / ``rel_mahalanobis``: the smallest Mahalanobis distance to a class mean under
  one shared (Ledoit-Wolf) covariance on PCA-reduced L2-normalised embeddings, the relative one
  minus the distance to the whole training set's Gaussian (Lee et al. 2018; Ren et al. 2021);
- ``vim``: the embedding's residual off the training set's principal subspace, scaled to the
  logits, plus the energy (Wang et al. 2022).

``unknown_score`` is a logistic regression over :data:`DEFAULT_SCORES` (one score: its
calibration), fitted on simulated unknowns: rounds that hold out some training classes, fit the
head on the rest and learn how the scores separate the held-out classes' samples from known ones
(:func:`simulated_unknowns`, :func:`fit_combiner`). Its 0.5 means "more likely unknown than known"
at the simulated share of unknowns. The default was chosen by ``benchmarks/open_set_bench.py``
(mean AUROC over backbones and held-out draws; the README's open-set section).

Why energy does not beat max-softmax on the ``logreg`` head: the head is a multinomial logistic
regression on L2-normalised embeddings; its L2 penalty makes the class weights (and intercepts)
sum to zero, so every row's logits sum to zero and carry no feature-norm signal, which is what
energy adds over max-softmax on a network's own linear layer. Energy then is a softened max-logit
(``T`` -> 0) that ranks samples like max-softmax, worse as ``T`` grows; logits that keep the
norm do not help either (the norm does not tell unknown species here). kNN distance and plain
Mahalanobis lose because an unknown species lies next to its sister species; the relative
Mahalanobis distance removes what every plant image shares and is the best single score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, clone
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

from fieldguide.errors import FieldguideError
from fieldguide.registry import Registry

#: the scores the default ``unknown_score`` combines: the best combination by mean AUROC over
#: inat-plants-dev's Lite0/1/2 embeddings and 10 held-out draws (``benchmarks/open_set_bench.py``)
DEFAULT_SCORES = ("max_softmax", "energy", "knn_distance", "rel_mahalanobis")


@dataclass
class ScoreInputs:
    """What a score reads: a fitted ``head``, its training rows ``X_train`` (``y_train``), the
    rows ``X`` to score, and the scores' hyper-parameters."""

    head: BaseEstimator
    X_train: np.ndarray
    y_train: np.ndarray
    X: np.ndarray
    k: int = 1  # knn_distance's neighbour
    temperature: float = 1.0  # energy's T
    pca_dims: int = 128  # the (rel_)mahalanobis and vim subspace

    @cached_property
    def probs(self) -> np.ndarray:
        return self.head.predict_proba(np.asarray(self.X, dtype=np.float32))

    @cached_property
    def logits(self) -> np.ndarray:
        return head_logits(self.head, self.X)


SCORES: Registry[Callable[[ScoreInputs], np.ndarray]] = Registry("open-set score")


def register_score(name: str):
    def deco(fn):
        return SCORES.add(name, fn)

    return deco


def max_softmax_score(probs: np.ndarray) -> np.ndarray:
    """(n,) 1 - the top probability."""
    return 1.0 - probs.max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n,) the energy ``-T logsumexp(logits / T)`` (Liu et al. 2020): high for inputs far from every class."""
    return -temperature * logsumexp(np.asarray(logits) / temperature, axis=1)


def knn_distance(X_ref: np.ndarray, X: np.ndarray, *, k: int = 1, exclude_self: bool = False) -> np.ndarray:
    """(n,) cosine distance of each row of ``X`` to its ``k``-th nearest row of ``X_ref`` (Sun et al.
    2022); ``exclude_self``: ``X`` is ``X_ref`` and a row is not its own neighbour."""
    ref = normalize(np.asarray(X_ref, dtype=np.float32))
    k = max(1, min(k, len(ref) - int(exclude_self)))
    nn = NearestNeighbors(n_neighbors=k + int(exclude_self)).fit(ref)
    dist, _ = nn.kneighbors(normalize(np.asarray(X, dtype=np.float32)))
    return dist[:, -1] ** 2 / 2  # euclidean on unit vectors -> cosine distance


def mahalanobis_distance(X_train: np.ndarray, y_train: np.ndarray, X: np.ndarray, *, pca_dims: int = 128,
                         relative: bool = False) -> np.ndarray:
    """(n,) the smallest squared Mahalanobis distance of each row of ``X`` to a class mean of
    ``X_train``, under the classes' shared covariance (Ledoit-Wolf shrinkage), on L2-normalised
    rows reduced to ``pca_dims`` principal components; ``relative``: minus the distance to the
    Gaussian of all of ``X_train`` (what any image of the domain shares)."""
    Z_train, Z = normalize(np.asarray(X_train, dtype=np.float64)), normalize(np.asarray(X, dtype=np.float64))
    dims = min(pca_dims, len(Z_train) - 1, Z_train.shape[1])
    pca = PCA(dims, random_state=0).fit(Z_train)
    Z_train, Z = pca.transform(Z_train), pca.transform(Z)
    classes, y = np.unique(y_train, return_inverse=True)
    means = np.stack([Z_train[y == c].mean(axis=0) for c in range(len(classes))])
    precision = LedoitWolf().fit(Z_train - means[y]).precision_

    def dist(mean, prec):
        d = Z - mean
        return ((d @ prec) * d).sum(axis=1)

    out = np.min([dist(m, precision) for m in means], axis=0)
    if relative:
        out = out - dist(Z_train.mean(axis=0), LedoitWolf().fit(Z_train).precision_)
    return out


def vim_score(X_train: np.ndarray, logits_train: np.ndarray, X: np.ndarray, logits: np.ndarray, *,
              pca_dims: int = 128) -> np.ndarray:
    """(n,) ViM (Wang et al. 2022): the norm of each L2-normalised row's residual off the
    ``pca_dims`` principal subspace of ``X_train``, scaled so that its training mean matches the
    mean top logit, plus the energy of ``logits``."""
    Z_train, Z = normalize(np.asarray(X_train, dtype=np.float64)), normalize(np.asarray(X, dtype=np.float64))
    pca = PCA(min(pca_dims, len(Z_train) - 1, Z_train.shape[1]), random_state=0).fit(Z_train)

    def residual(A):
        return np.linalg.norm(A - pca.inverse_transform(pca.transform(A)), axis=1)

    r_train = residual(Z_train)
    alpha = np.abs(logits_train.max(axis=1)).mean() / max(r_train.mean(), 1e-12)
    return alpha * residual(Z) + energy_score(logits)


@register_score("max_softmax")
def _max_softmax(s: ScoreInputs) -> np.ndarray:
    return max_softmax_score(s.probs)


@register_score("max_logit")
def _max_logit(s: ScoreInputs) -> np.ndarray:
    return -s.logits.max(axis=1)


@register_score("energy")
def _energy(s: ScoreInputs) -> np.ndarray:
    return energy_score(s.logits, s.temperature)


@register_score("knn_distance")
def _knn(s: ScoreInputs) -> np.ndarray:
    return knn_distance(s.X_train, s.X, k=s.k)


@register_score("mahalanobis")
def _mahalanobis(s: ScoreInputs) -> np.ndarray:
    return mahalanobis_distance(s.X_train, s.y_train, s.X, pca_dims=s.pca_dims)


@register_score("rel_mahalanobis")
def _rel_mahalanobis(s: ScoreInputs) -> np.ndarray:
    return mahalanobis_distance(s.X_train, s.y_train, s.X, pca_dims=s.pca_dims, relative=True)


@register_score("vim")
def _vim(s: ScoreInputs) -> np.ndarray:
    return vim_score(s.X_train, head_logits(s.head, s.X_train), s.X, s.logits, pca_dims=s.pca_dims)


def head_logits(head: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """The head's logits (``decision_function`` of the head or its inner model), else log-probabilities."""
    X = np.asarray(X, dtype=np.float32)
    for model in (head, getattr(head, "model_", None)):
        if model is not None and hasattr(model, "decision_function"):
            z = np.asarray(model.decision_function(X))
            return z if z.ndim == 2 else np.stack([-z, z], axis=1)
    return np.log(np.clip(head.predict_proba(X), 1e-12, None))


def score_table(head: BaseEstimator, X_train: np.ndarray, y_train: np.ndarray, X: np.ndarray, *,
                scores: tuple[str, ...] = tuple(SCORES), **params) -> np.ndarray:
    """(n, len(scores)) the open-set ``scores`` (names of :data:`SCORES`) of rows ``X`` under
    ``head`` fitted on ``X_train``, ``y_train``; ``params``: those of :class:`ScoreInputs`."""
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise FieldguideError(f"open-set score(s) {', '.join(map(repr, unknown))}: use {', '.join(SCORES)}")
    inputs = ScoreInputs(head, np.asarray(X_train, dtype=np.float32), np.asarray(y_train), np.asarray(X), **params)
    return np.column_stack([SCORES[s](inputs) for s in scores])


def simulated_unknowns(head: BaseEstimator, X: np.ndarray, y: np.ndarray, *, scores: tuple[str, ...] = tuple(SCORES),
                       rounds: int = 5, held_out: float = 0.2, seed: int = 0,
                       **params) -> tuple[np.ndarray, np.ndarray]:
    """``(table, unknown)``: the ``scores`` of simulated unknowns. Each of ``rounds`` rounds holds
    out a ``held_out`` share of the classes (at least one), fits ``head`` (cloned) on 3/4 of the
    other classes' samples, and scores the remaining 1/4 (known, 0) and the held-out classes'
    samples (unknown, 1). Needs at least 3 classes."""
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
        feats.append(score_table(fitted, X[fit], y[fit], X[rows], scores=scores, **params))
        target.append(unknown[rows].astype(int))
    return np.vstack(feats), np.concatenate(target)


def fit_combiner(table: np.ndarray, unknown: np.ndarray) -> BaseEstimator:
    """A logistic regression (on standardised columns) of ``unknown`` (n,) on the score ``table``
    (n, m) of :func:`simulated_unknowns`."""
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(table, unknown)


def combined_score(combiner: BaseEstimator, table: np.ndarray) -> np.ndarray:
    """(n,) the combiner's probability that a row of a score table is an unknown class."""
    return combiner.predict_proba(table)[:, 1]


def open_set_auroc(unknown: np.ndarray, score: np.ndarray) -> float:
    """AUROC of ``score`` separating ``unknown`` rows (True) from known ones; NaN without both."""
    unknown = np.asarray(unknown, dtype=bool)
    if unknown.all() or not unknown.any():
        return float("nan")
    return float(roc_auc_score(unknown, score))
