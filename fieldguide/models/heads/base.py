"""The head registry and the estimator base every head shares.

A head registers itself by name with :func:`register_head`; :func:`make_head` builds one from
its name. Every head follows the scikit-learn contract: ``fit(X, y)`` / ``predict_proba(X)`` /
``predict(X)``, hyper-parameters in ``__init__``, learned state in attributes ending with ``_``
(``classes_`` among them), so sklearn's and cleanlab's tools work on them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

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


class Head(ClassifierMixin, BaseEstimator):
    """A classifier whose ``predict`` is the most probable of its ``classes_``."""

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
