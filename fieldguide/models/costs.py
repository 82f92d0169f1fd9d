"""Costly mistakes: the cost matrix, the expected-cost decision rule, FungiCLEF's track-3 score.

``cost[i, j]`` is the cost of predicting class ``j`` for a sample of class ``i`` (0 on the
diagonal). It comes from ``classes.costs`` in fieldguide.toml: a CSV file (``true,predicted,cost``),
or a list of dangerous classes with FungiCLEF's costs (a dangerous class predicted as a harmless
one costs 100, the reverse 1, any other error 1); else from ``evaluate.cost_matrix`` (a CSV);
else 0/1.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fieldguide.errors import ConfigError, FieldguideError

#: FungiCLEF's costs: a poisonous species called edible, an edible one called poisonous
DANGEROUS_AS_HARMLESS, HARMLESS_AS_DANGEROUS = 100.0, 1.0


def load_cost_matrix(path: str | Path, classes: list[str], *, key: str = "evaluate.cost_matrix") -> np.ndarray:
    """A (C, C) cost matrix: 0 on the diagonal, 1 elsewhere, overridden by the CSV's rows.

    The CSV has columns ``true,predicted,cost`` with class names (FungiCLEF: predicting an edible
    species for a poisonous one costs more than the reverse). ``key`` names the setting in errors.
    """
    C = len(classes)
    cost = np.ones((C, C)) - np.eye(C)
    if not path:
        return cost
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    index = {c: i for i, c in enumerate(classes)}
    with path.open(newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):
            try:
                t, p, c = row["true"].strip(), row["predicted"].strip(), float(row["cost"])
            except (KeyError, TypeError, ValueError, AttributeError):
                raise ConfigError(f"{path}:{row_no}: expected columns true,predicted,cost") from None
            for name in (t, p):
                if name not in index:
                    raise ConfigError(f"{path}:{row_no}: unknown class {name!r}")
            cost[index[t], index[p]] = c
    return cost


def dangerous_cost_matrix(dangerous: np.ndarray) -> np.ndarray:
    """FungiCLEF's (C, C) costs for a (C,) bool mask of dangerous (poisonous) classes."""
    d = np.asarray(dangerous, dtype=bool)
    cost = np.ones((len(d), len(d))) - np.eye(len(d))
    cost[np.ix_(d, ~d)] = DANGEROUS_AS_HARMLESS
    cost[np.ix_(~d, d)] = HARMLESS_AS_DANGEROUS
    return cost


def project_costs(costs: str | list[str], cost_matrix: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The cost matrix of a project, and its dangerous-class mask (None unless ``costs`` lists them).
    ``costs``: ``classes.costs`` (a CSV path, or dangerous class names); ``cost_matrix``:
    ``evaluate.cost_matrix``, used when ``costs`` is empty."""
    if isinstance(costs, list) and costs:
        unknown = sorted(set(costs) - set(classes))
        if unknown:
            raise ConfigError(f"classes.costs: unknown class(es) {', '.join(map(repr, unknown))} "
                              f"(list dangerous classes by their label)")
        dangerous = np.isin(np.asarray(classes, dtype=object), costs)
        return dangerous_cost_matrix(dangerous), dangerous
    if isinstance(costs, str) and costs:
        return load_cost_matrix(costs, classes, key="classes.costs"), None
    return load_cost_matrix(cost_matrix, classes), None


def cost_score(y: np.ndarray, pred: np.ndarray, cost: np.ndarray) -> float:
    """Mean cost per sample of the predictions (lower is better; 0/1 costs give the error rate)."""
    return float(cost[y, pred].mean())


def expected_cost_decision(probs: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """(n,) the Bayes decision: ``argmin_j sum_i probs[:, i] * cost[i, j]`` (argmax under 0/1 costs)."""
    if cost.shape != (probs.shape[1], probs.shape[1]):
        raise FieldguideError(f"cost matrix: expected shape {(probs.shape[1],) * 2}, got {cost.shape}")
    return (probs @ cost).argmin(axis=1)


def decide(probs: np.ndarray, cost: np.ndarray | None, rule: str) -> np.ndarray:
    """(n,) predicted classes by ``rule``: ``argmax``, or ``expected_cost`` (needs ``cost``)."""
    if rule not in ("argmax", "expected_cost"):
        raise FieldguideError(f"decision rule {rule!r}: use argmax or expected_cost")
    if rule == "argmax" or cost is None:
        return probs.argmax(axis=1)
    return expected_cost_decision(probs, cost)


def fungiclef_track3(y: np.ndarray, pred: np.ndarray, dangerous: np.ndarray) -> dict:
    """FungiCLEF's user-focused score (track 3, lower is better): the classification error plus
    the poisonous species confusion cost (100 per dangerous class called harmless, 1 per harmless
    class called dangerous), both per sample."""
    y, pred, d = np.asarray(y, dtype=int), np.asarray(pred, dtype=int), np.asarray(dangerous, dtype=bool)
    error = float((y != pred).mean())
    psc = float((DANGEROUS_AS_HARMLESS * (d[y] & ~d[pred]) + HARMLESS_AS_DANGEROUS * (~d[y] & d[pred])).mean())
    return {"classification_error": error, "poisonous_confusion_cost": psc, "fungiclef_track3": error + psc}


def keep_label_cost(probs: np.ndarray, labels: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """(n,) the expected cost of keeping each sample's given label: ``sum_j probs[:, j] * cost[j, label]``
    (the true class is j with probability p_j, and keeping the label predicts ``label`` for it).
    Under 0/1 costs: 1 - the given label's probability."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int)
    if cost.shape != (probs.shape[1], probs.shape[1]):
        raise FieldguideError(f"cost matrix: expected shape {(probs.shape[1],) * 2}, got {cost.shape}")
    return (probs * cost[:, labels].T).sum(axis=1)
