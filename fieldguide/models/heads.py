"""Light heads on frozen embeddings, with the scikit-learn estimator contract.

``fit(X, y)`` / ``predict_proba(X)`` / ``predict(X)``, hyper-parameters in ``__init__``, learned
state in attributes ending with ``_`` (``classes_`` among them), so sklearn's and cleanlab's
tools work on them unchanged. Heads register by name (:func:`register_head`); ``make_head``
builds one from its name.

- ``logreg``: multinomial logistic regression (scikit-learn), class-weighted for rare classes;
- ``mlp``: a one-hidden-layer MLP in torch with a focal or class-weighted cross-entropy loss;
- ``knn``: cosine k-nearest neighbours with similarity-weighted votes;
- ``ensemble``: a weighted mean of the members' probabilities (default: logreg + mlp + knn), the
  weights picked on inner out-of-fold predictions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight

from fieldguide.models.crossval import cross_val_pred_probs
from fieldguide.registry import Registry

_HEADS: Registry[Callable[..., BaseEstimator]] = Registry("head")


def register_head(name: str):
    def deco(factory):
        return _HEADS.add(name, factory)

    return deco


def available_heads() -> list[str]:
    return sorted(_HEADS)


def make_head(name: str, **params) -> BaseEstimator:
    from fieldguide.errors import ModelError

    if name not in _HEADS:
        raise ModelError(f"unknown head {name!r} (known: {', '.join(available_heads())})")
    return _HEADS[name](**params)


def l2_normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class _Head(ClassifierMixin, BaseEstimator):
    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


@register_head("logreg")
class LogRegHead(_Head):
    """Multinomial logistic regression on L2-normalised features (``C`` as in scikit-learn)."""

    def __init__(self, C: float = 10.0, class_weight: str | None = "balanced", max_iter: int = 300):
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter

    def fit(self, X, y):
        self.model_ = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter)
        self.model_.fit(l2_normalize(X), y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(l2_normalize(X))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al.): cross-entropy scaled by (1 - p_target)^gamma, mean over the batch."""
    logp = torch.log_softmax(logits, dim=1)
    logp_t = logp.gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp_t.exp()) ** gamma) * logp_t
    if weight is not None:
        loss = loss * weight[target]
    return loss.mean()


@register_head("mlp")
class MLPHead(_Head):
    """One hidden layer (GELU, dropout) trained with AdamW; ``loss`` is ``ce`` or ``focal``."""

    def __init__(self, hidden: int = 512, epochs: int = 60, lr: float = 1e-3, weight_decay: float = 1e-2,
                 dropout: float = 0.2, loss: str = "focal", gamma: float = 2.0,
                 class_weight: str | None = "balanced", batch_size: int = 256, seed: int = 0):
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.loss = loss
        self.gamma = gamma
        self.class_weight = class_weight
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, X, y):
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.classes_, yi = np.unique(y, return_inverse=True)
        X = torch.from_numpy(l2_normalize(X))
        t = torch.from_numpy(yi.astype(np.int64))
        k = len(self.classes_)
        self.net_ = torch.nn.Sequential(
            torch.nn.Linear(X.shape[1], self.hidden), torch.nn.GELU(), torch.nn.Dropout(self.dropout),
            torch.nn.Linear(self.hidden, k),
        )
        weight = None
        if self.class_weight == "balanced":
            weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(k), y=yi), dtype=torch.float32)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps = self.epochs * max(1, int(np.ceil(len(X) / self.batch_size)))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps)
        self.net_.train()
        for _ in range(self.epochs):
            perm = torch.randperm(len(X), generator=g)
            for start in range(0, len(X), self.batch_size):
                idx = perm[start:start + self.batch_size]
                logits = self.net_(X[idx])
                if self.loss == "focal":
                    loss = focal_loss(logits, t[idx], self.gamma, weight)
                else:
                    loss = torch.nn.functional.cross_entropy(logits, t[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        self.net_.eval()
        return self

    def predict_proba(self, X):
        with torch.inference_mode():
            logits = self.net_(torch.from_numpy(l2_normalize(X)))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)


@register_head("knn")
class KNNHead(_Head):
    """Cosine kNN: each of the ``k`` nearest training samples votes with weight exp(sim / T)."""

    def __init__(self, k: int = 10, temperature: float = 0.05):
        self.k = k
        self.temperature = temperature

    def fit(self, X, y):
        self.classes_, self.y_ = np.unique(y, return_inverse=True)
        self.X_ = l2_normalize(X)
        return self

    def predict_proba(self, X):
        Q = l2_normalize(X)
        k = min(self.k, len(self.X_))
        out = np.zeros((len(Q), len(self.classes_)))
        for start in range(0, len(Q), 2048):
            sims = Q[start:start + 2048] @ self.X_.T
            nn_idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            nn_sim = np.take_along_axis(sims, nn_idx, axis=1)
            w = np.exp((nn_sim - nn_sim.max(axis=1, keepdims=True)) / self.temperature)
            rows = np.repeat(np.arange(len(nn_idx)), k)
            np.add.at(out[start:start + 2048], (rows, self.y_[nn_idx].ravel()), w.ravel())
        out += 1e-6  # no class is impossible: keeps log-probabilities finite
        return out / out.sum(axis=1, keepdims=True)


@register_head("ensemble")
class EnsembleHead(_Head):
    """The weighted mean of its members' probabilities, aligned on the union of their classes.

    ``weights=None`` picks them on inner out-of-fold predictions (see ``_search_weights``)."""

    def __init__(self, members: tuple[str, ...] = ("logreg", "mlp", "knn"), weights: tuple[float, ...] | None = None,
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
            self.temperatures_, self.weights_ = self._calibrate(np.asarray(X), yi)
        self.models_ = [clone(make_head(m)).fit(X, y) for m in self.members]
        return self

    def _calibrate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-member temperatures (lowest log-loss) and convex weights (highest accuracy, then
        lowest log-loss, over a grid of the simplex), both on inner out-of-fold probabilities.
        Heads differ in calibration (logistic regression on normalised embeddings is
        under-confident, kNN over-confident), so members are put on one scale before mixing.
        Each member alone is a corner of the grid: on the inner folds the ensemble is never worse
        than its best member."""

        from scipy.optimize import minimize_scalar

        k = len(self.classes_)
        rows = np.arange(len(y))

        def nll(p):
            return float(-np.log(np.clip(p[rows, y], 1e-12, None)).mean())

        raw = [cross_val_pred_probs(lambda m=m: make_head(m), X, y, k, folds=self.inner_folds, seed=self.seed,
                                    progress=False)[0] for m in self.members]
        temps = np.array([minimize_scalar(lambda t, p=p: nll(_tempered(p, t)), bounds=(0.05, 10.0),
                                          method="bounded").x for p in raw])
        oof = [_tempered(p, t) for p, t in zip(raw, temps)]
        return temps, self._search_weights(oof, y, nll)

    def _search_weights(self, oof: list[np.ndarray], y: np.ndarray, nll) -> np.ndarray:
        import itertools

        n = round(1 / self.step)
        best, best_key = None, None
        for combo in itertools.product(range(n + 1), repeat=len(self.members)):
            if sum(combo) != n:
                continue
            w = np.array(combo, dtype=float) / n
            p = sum(wi * pi for wi, pi in zip(w, oof))
            key = (float((p.argmax(axis=1) == y).mean()), -nll(p))
            if best_key is None or key > best_key:
                best, best_key = w, key
        return best

    def member_probas(self, X) -> list[np.ndarray]:
        """Each member's (temperature-scaled) probabilities over the ensemble's classes."""
        out = []
        for m, t in zip(self.models_, self.temperatures_):
            p = np.zeros((len(X), len(self.classes_)))
            p[:, np.searchsorted(self.classes_, m.classes_)] = m.predict_proba(X)
            out.append(_tempered(p, t) if t != 1.0 else p)
        return out

    def predict_proba(self, X):
        w = np.asarray(self.weights_, dtype=float)
        probs = self.member_probas(X)
        return sum(wi * p for wi, p in zip(w / w.sum(), probs))


def _tempered(p: np.ndarray, t: float) -> np.ndarray:
    """``softmax(log p / t)``: t < 1 sharpens, t > 1 flattens; zero columns stay zero."""
    logp = np.log(np.clip(p, 1e-300, None)) / t
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp) * (p > 0)
    return e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
