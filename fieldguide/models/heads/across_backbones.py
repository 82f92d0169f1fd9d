"""Heads across backbones: a head on each backbone's embeddings, combined into one classifier.

The embeddings of several backbones travel as one matrix, each backbone's block of columns beside
the others (``dims``: the blocks' widths, in order), so the combination is an ordinary head and
scikit-learn's cross-validation (``predict``'s outer folds) works on it unchanged. Two ways to combine:

- ``weighted``: :class:`~fieldguide.models.heads.ensemble.EnsembleHead` over one head per block:
  temperature-scaled member probabilities, convex weights fitted on inner out-of-fold predictions
  (``mean``: equal weights, no temperatures, the plain baseline);
- ``concat``: one head on the concatenation of the L2-normalised blocks.

``auto`` fits both on the same inner folds and keeps whichever ranks first there (top-1, then
log-loss; :func:`~fieldguide.models.heads.ensemble.selection_key`).
"""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

from fieldguide.errors import ModelError
from fieldguide.models.crossval import cross_val_pred_probs
from fieldguide.models.heads.base import Head, make_head
from fieldguide.models.heads.ensemble import EnsembleHead, selection_key

COMBINATIONS = ("auto", "weighted", "mean", "concat")


def block(X: np.ndarray, *, start: int, stop: int) -> np.ndarray:
    """Columns ``start:stop`` of ``X``: one backbone's embeddings."""
    return np.asarray(X)[:, start:stop]


def normalized_blocks(X: np.ndarray, *, dims: tuple[int, ...]) -> np.ndarray:
    """``X`` with each block of columns (widths ``dims``) scaled to unit L2 norm, so that every
    backbone weighs the same in a head on the concatenation whatever its feature scale."""
    X = np.asarray(X, dtype=np.float32)
    edges = np.cumsum((0, *dims))
    parts = [X[:, a:b] / np.maximum(np.linalg.norm(X[:, a:b], axis=1, keepdims=True), 1e-12)
             for a, b in zip(edges[:-1], edges[1:])]
    return np.concatenate(parts, axis=1)


def on_block(head: str, dims: tuple[int, ...], i: int) -> Pipeline:
    """Head ``head`` on the ``i``-th block of columns."""
    start = int(sum(dims[:i]))
    return make_pipeline(FunctionTransformer(block, kw_args={"start": start, "stop": start + int(dims[i])}),
                         make_head(head))


def on_concat(head: str, dims: tuple[int, ...]) -> Pipeline:
    """Head ``head`` on the concatenation of the L2-normalised blocks."""
    return make_pipeline(FunctionTransformer(normalized_blocks, kw_args={"dims": tuple(int(d) for d in dims)}),
                         make_head(head))


class AcrossBackbonesHead(Head):
    """Heads ``head`` on each block of columns (widths ``dims``), combined by ``combine`` (one of
    :data:`COMBINATIONS`; see the module docstring).

    Learned: ``combination_`` (what ``auto`` chose), ``inner_`` (each candidate's inner
    out-of-fold top-1 and log-loss, under ``auto``), and for ``weighted``/``mean`` the
    members' ``weights_`` and ``temperatures_``."""

    def __init__(self, dims: tuple[int, ...] = (), head: str = "logreg", combine: str = "auto",
                 inner_folds: int = 5, step: float = 0.1, seed: int = 0):
        self.dims = dims
        self.head = head
        self.combine = combine
        self.inner_folds = inner_folds
        self.step = step
        self.seed = seed

    def _weighted(self, weights=None) -> EnsembleHead:
        return EnsembleHead(members=tuple(on_block(self.head, self.dims, i) for i in range(len(self.dims))),
                            weights=weights, inner_folds=self.inner_folds, step=self.step, seed=self.seed)

    def fit(self, X, y):
        if self.combine not in COMBINATIONS:
            raise ModelError(f"combination {self.combine!r}: use one of {', '.join(COMBINATIONS)}")
        X = np.asarray(X)
        if len(self.dims) < 2 or sum(self.dims) != X.shape[1]:
            raise ModelError(f"heads across backbones need 2 or more blocks whose widths {tuple(self.dims)} "
                             f"add up to the {X.shape[1]} columns")
        self.classes_, yi = np.unique(y, return_inverse=True)
        self.inner_ = {}
        if self.combine == "mean":
            self.model_ = self._weighted(weights=(1.0,) * len(self.dims)).fit(X, y)
        elif self.combine == "concat":
            self.model_ = on_concat(self.head, self.dims).fit(X, y)
        else:
            weighted = self._weighted().fit(X, y)
            self.inner_["weighted"] = selection_key(weighted.inner_probs_, yi)
            if self.combine == "auto":
                concat_oof, _ = cross_val_pred_probs(on_concat(self.head, self.dims), X, yi, len(self.classes_),
                                                     folds=self.inner_folds, seed=self.seed)
                self.inner_["concat"] = selection_key(concat_oof, yi)
            self.model_ = weighted
            if self.inner_.get("concat", (-1.0,)) > self.inner_["weighted"]:
                self.model_ = on_concat(self.head, self.dims).fit(X, y)
        self.combination_ = "concat" if isinstance(self.model_, Pipeline) else (
            "mean" if self.combine == "mean" else "weighted")
        if not isinstance(self.model_, Pipeline):
            self.weights_, self.temperatures_ = self.model_.weights_, self.model_.temperatures_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(np.asarray(X))

    def chosen(self) -> dict:
        """What was chosen, for a run's config: the combination, the members' weights and
        temperatures (weighted/mean), and the inner scores that decided (``auto``)."""
        out: dict = {"combination": self.combination_}
        if self.combination_ != "concat":
            out["weights"] = [round(float(w), 4) for w in self.weights_]
            out["temperatures"] = [round(float(t), 4) for t in self.temperatures_]
        if self.inner_:
            out["inner"] = {name: {"top1": round(k[0], 4), "log_loss": round(-k[1], 4)} for name, k in self.inner_.items()}
        return out
