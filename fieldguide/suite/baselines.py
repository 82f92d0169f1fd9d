"""Metrics and the plain baselines (scikit-learn, cleanlab, torch), functions of arrays."""

from __future__ import annotations

import warnings

import numpy as np

from fieldguide.suite.plan import SEED, LR_C, LR_MAX_ITER


# ---- metrics and plain baselines ---------------------------------------------------------------------
def top1_macro_f1(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(probs).argmax(axis=1)
    return {"top1": float(accuracy_score(y_true, pred)),
            "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0))}


def detection_scores(truth: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """AUROC of ``score`` (high = noisy) and F1 of the ``flagged`` set against the true flips."""
    from sklearn.metrics import f1_score, roc_auc_score

    truth = np.asarray(truth, dtype=bool)
    auroc = roc_auc_score(truth, score) if 0 < truth.sum() < len(truth) else float("nan")
    return {"auroc": float(auroc), "f1": float(f1_score(truth, np.asarray(flagged, dtype=bool), zero_division=0))}


def plain_lr():
    """The plain baseline head: ``LogisticRegression(C=10)`` (on L2-normalised features)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=LR_C, max_iter=LR_MAX_ITER)


def l2n(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def plain_lr_probs(X_train, y_train, X_test, n_classes: int) -> np.ndarray:
    """Test probabilities (n, n_classes) of :func:`plain_lr` fit on L2-normalised train features."""
    model = plain_lr().fit(l2n(X_train), y_train)
    out = np.zeros((len(X_test), n_classes))
    out[:, model.classes_] = model.predict_proba(l2n(X_test))
    return out


def plain_lr_oof(X, y, n_classes: int, *, folds: int = 5, seed: int = SEED) -> np.ndarray:
    """5-fold out-of-fold probabilities of :func:`plain_lr` (scikit-learn's ``cross_val_predict``)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(y, dtype=int)
    folds = max(2, min(folds, int(np.bincount(y).max())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        probs = cross_val_predict(plain_lr(), l2n(X), y, cv=cv, method="predict_proba")
    out = np.zeros((len(y), n_classes))
    out[:, np.unique(y)] = probs  # cross_val_predict orders columns by the classes present
    return out


def full_batch_linear_ce(X_train, y_train, X_test, n_classes: int, *, lr: float = 1e-2, weight_decay: float = 1e-4,
                         steps: int = 200, seed: int = SEED) -> np.ndarray:
    """The plain training baseline: a linear layer on L2-normalised features, full-batch cross-entropy,
    ``torch.optim.Adam(lr, weight_decay)`` for ``steps`` steps; returns test probabilities."""
    import torch

    torch.manual_seed(seed)
    Xt = torch.as_tensor(l2n(X_train), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    model = torch.nn.Linear(Xt.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        opt.step()
    with torch.inference_mode():
        return torch.softmax(model(torch.as_tensor(l2n(X_test), dtype=torch.float32)), dim=1).numpy()
