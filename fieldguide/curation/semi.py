"""Semi-supervised learning as functions of arrays and images, after Semi-ViT: the EMA teacher, its
pseudo-labels and the estimate of whether they would help (see :mod:`fieldguide.curation.pseudolabel`,
the step that writes them to the store).

An EMA teacher (the student's exponential moving average, with the usual warm-up so a short
run still moves it: decay_t = min(decay, (1 + t) / (10 + t))) labels each unlabeled batch; only
predictions with confidence ≥ ``threshold`` are used. Probabilistic pseudo mixup mixes two
confident unlabeled samples with λ = p_i / (p_i + p_j) (their pseudo-label confidences) and
weights their two pseudo-labels by λ and 1 − λ. Each step sees a labeled batch and ``mu`` times
as many unlabeled samples; the unlabeled loss has weight ``lambda_u``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from fieldguide.config.sections import PseudolabelSection

log = logging.getLogger(__name__)

DEFAULTS = PseudolabelSection()  # the functions of arrays default to the [pseudolabel] defaults


# ---- functions of arrays ------------------------------------------------------------------------------
def select_pseudo_labels(probs: np.ndarray, threshold: float = DEFAULTS.threshold, *,
                         balance: bool = DEFAULTS.balance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices, labels, confidences)`` of the rows of ``probs`` (n, K) kept as pseudo-labels.

    A row is kept when its top probability is ≥ ``threshold``. With ``balance`` no class keeps
    more than the median count of the classes that kept any (its most confident rows first),
    so a few common classes cannot make up most of the pseudo-labels.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    conf = probs.max(axis=1)
    labels = probs.argmax(axis=1)
    keep = np.where(conf >= threshold)[0]
    if balance and len(keep):
        counts = np.bincount(labels[keep])
        cap = max(1, int(np.median(counts[counts > 0])))
        chosen = []
        for c in np.unique(labels[keep]):
            rows = keep[labels[keep] == c]
            chosen.extend(rows[np.argsort(-conf[rows], kind="stable")[:cap]])
        keep = np.array(sorted(chosen), dtype=int)
    return keep, labels[keep], conf[keep]


def pseudo_mixup(x: torch.Tensor, conf: torch.Tensor, generator: torch.Generator | None = None):
    """Probabilistic pseudo mixup: pairs (i, perm[i]) mixed with λ = p_i / (p_i + p_j).

    Returns ``(mixed x, perm, λ)``.
    """
    perm = torch.randperm(len(x), generator=generator)
    lam = conf / (conf + conf[perm]).clamp_min(1e-12)
    w = lam.reshape((-1,) + (1,) * (x.ndim - 1))  # embeddings (n, d) or images (n, c, h, w)
    mixed = w * x + (1 - w) * x[perm]
    return mixed, perm, lam


def unlabeled_loss(student: torch.nn.Module, x: torch.Tensor, teacher_probs: torch.Tensor, threshold: float,
                   mixup: bool, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """The student's loss on the unlabeled batch ``x`` against the teacher's confident pseudo-labels
    (with probabilistic pseudo mixup); ``(loss, samples used)``, a zero loss when fewer than 2 pass."""
    conf, pl = teacher_probs.max(dim=1)
    mask = conf >= threshold
    if mask.sum() < 2:
        return torch.zeros((), device=x.device), 0
    xs, cu, pu = x[mask], conf[mask], pl[mask]
    if not mixup:
        return F.cross_entropy(student(xs), pu), int(mask.sum())
    mixed, perm, lam = pseudo_mixup(xs, cu, generator)
    logits = student(mixed)
    loss = (lam * F.cross_entropy(logits, pu, reduction="none")
            + (1 - lam) * F.cross_entropy(logits, pu[perm], reduction="none")).mean()
    return loss, int(mask.sum())


class WarmupEma(ModelEmaV3):
    """timm's EMA of a student (``.module`` is the teacher): teacher ← d·teacher + (1 − d)·student
    with the warm-up d = min(decay, (1 + step) / (10 + step)); buffers (batch-norm statistics)
    are copied (``exclude_buffers``)."""

    def __init__(self, student: torch.nn.Module, decay: float):
        super().__init__(student, decay=decay, exclude_buffers=True)

    def get_decay(self, step: int | None = None) -> float:
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, ema: "WarmupEma", student: torch.nn.Module,
          step: int) -> int:
    """One optimiser step of the student, then the teacher's EMA update; returns the new step count."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    ema.update(student, step=step + 1)
    return step + 1


@dataclass
class SemiResult:
    teacher: torch.nn.Module
    history: list[dict] = field(default_factory=list)


def fit_semi_supervised(X_l: np.ndarray, y_l: np.ndarray, X_u: np.ndarray, n_classes: int, *,
                        threshold: float = DEFAULTS.threshold, ema_decay: float = DEFAULTS.ema_decay,
                        mu: int = DEFAULTS.mu, lambda_u: float = DEFAULTS.lambda_u, mixup: bool = True,
                        epochs: int = DEFAULTS.epochs, lr: float = 3e-3, batch_size: int = 64,
                        weight_decay: float = 1e-4, seed: int = 0) -> SemiResult:
    """Train a student head on labeled + unlabeled embeddings; returns the EMA teacher."""
    from fieldguide.models.heads.mlp import EmbeddingHead

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # sqrt(dim): the scale this minibatch recipe (lr, epochs, EMA decay) was measured with
    student = EmbeddingHead(X_l.shape[1], n_classes, scale=float(np.sqrt(X_l.shape[1])))
    ema = WarmupEma(student, ema_decay)
    teacher = ema.module.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    Xl, yl = torch.as_tensor(X_l, dtype=torch.float32), torch.as_tensor(y_l, dtype=torch.long)
    Xu = torch.as_tensor(X_u, dtype=torch.float32)
    steps_per_epoch = max(1, int(np.ceil(len(Xl) / batch_size)))
    step, history = 0, []
    for epoch in range(epochs):
        perm_l = torch.randperm(len(Xl), generator=gen)
        used, total_u = 0, 0
        for b in range(steps_per_epoch):
            idx = perm_l[b * batch_size:(b + 1) * batch_size]
            if len(idx) == 0:
                continue
            loss = F.cross_entropy(student(Xl[idx]), yl[idx])
            if len(Xu):
                u = torch.randint(len(Xu), (min(len(Xu), mu * len(idx)),), generator=gen)
                with torch.no_grad():
                    probs = torch.softmax(teacher(Xu[u]), dim=1)
                total_u += len(u)
                lu, n_used = unlabeled_loss(student, Xu[u], probs, threshold, mixup, gen)
                used += n_used
                loss = loss + lambda_u * lu
            step = _step(opt, loss, ema, student, step)
        history.append({"epoch": epoch + 1, "pseudo_used": used, "unlabeled_seen": total_u})
    return SemiResult(teacher=teacher.eval(), history=history)


# ---- abstention: would the pseudo-labels help? ----------------------------------------------------------
@dataclass
class PseudoEstimate:
    """Held-out top-1 of the ``[train]`` student on K folds of the labeled samples, trained on the
    other folds' labels with and without the pseudo-labels a teacher fit on those folds selects."""

    folds: int
    accuracy_with: float  # mean over folds
    accuracy_without: float
    pseudo_labels: float  # mean pseudo-labels selected per fold
    loss_with: float = float("nan")  # mean held-out cross-entropy: breaks a tie of top-1
    loss_without: float = float("nan")

    @property
    def gain(self) -> float:
        return self.accuracy_with - self.accuracy_without

    @property
    def helps(self) -> bool:
        """A higher mean held-out top-1 with the pseudo-labels; on a tie (few held-out samples make
        ties common) a lower held-out cross-entropy; identical numbers (e.g. no pseudo-labels) do not help."""
        return self.gain > 0 or (self.gain == 0 and self.loss_with < self.loss_without)

    def reason(self) -> str:
        if self.folds == 0:
            return ("fewer than 2 classes with 2 or more labeled samples: no held-out estimate of what "
                    "pseudo-labels do")
        if not self.pseudo_labels:
            return f"no pseudo-label passes the threshold in any of {self.folds} folds of the labeled samples"
        verb = "would raise" if self.gain > 0 else ("would not change" if self.gain == 0 else "would lower")
        text = (f"pseudo-labels {verb} held-out top-1 on the labeled samples ({self.folds}-fold: "
                f"{self.accuracy_with:.3f} with vs {self.accuracy_without:.3f} without)")
        if self.gain == 0:
            text += (f"; held-out cross-entropy {self.loss_with:.3f} with vs {self.loss_without:.3f} without: "
                     f"{'they help' if self.helps else 'they do not help'}")
        return text

    def as_dict(self) -> dict:
        """JSON-ready: a value that is not a number (no folds) is None."""
        out = {**self.__dict__, "gain": self.gain, "helps": self.helps}
        return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in out.items()}


def estimate_pseudo_gain(X_l: np.ndarray, y_l: np.ndarray, X_u: np.ndarray, n_classes: int, *, student,
                         semi: dict | None = None, threshold: float = DEFAULTS.threshold,
                         balance: bool = DEFAULTS.balance, max_folds: int = 5, seed: int = 0) -> PseudoEstimate:
    """Would accepting pseudo-labels help? Decided on the labeled samples only.

    K-fold over ``X_l`` (n, d) / ``y_l`` (n,), stratified, K = min(``max_folds``, smallest class
    count), at least 2: in each fold the semi-supervised teacher (:func:`fit_semi_supervised`,
    ``semi`` its options) learns from the other folds' labels and the unlabeled pool ``X_u`` (m, d)
    plus the held-out fold's images (unlabeled); its pseudo-labels on ``X_u`` are selected as the step
    selects them; the student (:func:`~fieldguide.models.fit.fit_head` with the recipe of
    ``student``, a ``[train]`` section) is trained on the other folds' labels with and without them
    and scored on the held-out fold. Classes with a single label take no part in the estimate (they
    cannot be held out); with fewer than 2 classes left, ``folds`` is 0 (no estimate).
    """
    from sklearn.model_selection import StratifiedKFold

    from fieldguide.models.fit import fit_head, head_options, predict_head

    X_l, X_u = np.asarray(X_l, dtype=np.float32), np.asarray(X_u, dtype=np.float32)
    y_l = np.asarray(y_l)
    counts = np.bincount(y_l, minlength=1)
    held_out = counts[y_l] >= 2 if len(y_l) else np.zeros(0, dtype=bool)  # a single label cannot be held out
    X_l, y_l = X_l[held_out], y_l[held_out]
    if len(np.unique(y_l)) < 2:
        return PseudoEstimate(0, float("nan"), float("nan"), 0.0)
    smallest = int(np.bincount(y_l)[np.unique(y_l)].min())
    folds = StratifiedKFold(n_splits=min(max_folds, smallest), shuffle=True, random_state=seed)

    def scores(X, y, X_eval, y_eval) -> tuple[float, float]:
        """(top-1, cross-entropy) of the student on the held-out fold."""
        model, _ = fit_head(X, y, n_classes, progress=False, **head_options(student))
        probs = predict_head(model, X_eval)
        nll = -np.log(np.clip(probs[np.arange(len(y_eval)), y_eval], 1e-12, None)).mean()
        return float((probs.argmax(axis=1) == y_eval).mean()), float(nll)

    with_, without, selected = [], [], []
    for fit_rows, held in folds.split(X_l, y_l):
        teacher = fit_semi_supervised(X_l[fit_rows], y_l[fit_rows], np.concatenate([X_u, X_l[held]]), n_classes,
                                      threshold=threshold, seed=seed, **(semi or {})).teacher
        rows, pseudo, _ = select_pseudo_labels(predict_head(teacher, X_u), threshold, balance=balance)
        alone = scores(X_l[fit_rows], y_l[fit_rows], X_l[held], y_l[held])
        without.append(alone)
        with_.append(scores(np.concatenate([X_l[fit_rows], X_u[rows]]), np.concatenate([y_l[fit_rows], pseudo]),
                            X_l[held], y_l[held]) if len(rows) else alone)
        selected.append(len(rows))
    (acc_with, loss_with), (acc_without, loss_without) = np.mean(with_, axis=0), np.mean(without, axis=0)
    return PseudoEstimate(folds.n_splits, float(acc_with), float(acc_without), float(np.mean(selected)),
                          float(loss_with), float(loss_without))


class _WeakStrong:
    """Unlabeled images as (weak view, strong view) pairs."""

    def __init__(self, paths: list[str], weak, strong):
        self.paths, self.weak, self.strong = paths, weak, strong

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            return self.weak(im), self.strong(im)


def fit_semi_supervised_images(bb, paths_l: list[str], y_l: np.ndarray, paths_u: list[str], n_classes: int, *,
                               threshold: float = DEFAULTS.threshold, ema_decay: float = DEFAULTS.ema_decay,
                               mu: int = DEFAULTS.mu, lambda_u: float = DEFAULTS.lambda_u,
                               mixup: bool = True, epochs: int = 5, lr: float = 1e-4, batch_size: int = 16,
                               num_workers: int = 0, device: str = "auto", seed: int = 0) -> SemiResult:
    """Fine-tuning mode: the backbone and a linear head trained end to end; the EMA teacher labels
    the weak view of an unlabeled image, the student learns it from the strong view (mixed with
    probabilistic pseudo mixup)."""
    from torch.utils.data import DataLoader

    from fieldguide.models.batches import image_loader, readable
    from fieldguide.models.inference import resolve_device
    from fieldguide.models.transforms import train_transform

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = resolve_device(device)
    student = torch.nn.Sequential(bb.model, torch.nn.Linear(bb.dim, n_classes)).to(dev)
    ema = WarmupEma(student, ema_decay)
    teacher = ema.module.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    yl = torch.as_tensor(y_l, dtype=torch.long)
    labeled = image_loader(list(paths_l), train_transform(bb), batch_size=batch_size, shuffle=True,
                           num_workers=num_workers, generator=gen)
    unlabeled = DataLoader(_WeakStrong(list(paths_u), train_transform(bb), train_transform(bb, strong=True)),
                           batch_size=batch_size * mu, shuffle=True, num_workers=num_workers, generator=gen)
    step, history = 0, []
    for epoch in range(epochs):
        used = 0
        u_iter = iter(unlabeled)
        for idx, x in readable(labeled):
            x = x.to(dev)
            loss = F.cross_entropy(student(x), yl[idx].to(dev))
            try:
                weak, strong = next(u_iter)
            except StopIteration:
                u_iter = iter(unlabeled)
                weak, strong = next(u_iter)
            with torch.no_grad():
                probs = torch.softmax(teacher(weak.to(dev)), dim=1)
            lu, n_used = unlabeled_loss(student, strong.to(dev), probs, threshold, mixup, gen)
            used += n_used
            loss = loss + lambda_u * lu
            step = _step(opt, loss, ema, student, step)
        history.append({"epoch": epoch + 1, "pseudo_used": used})
    return SemiResult(teacher=teacher.eval(), history=history)
