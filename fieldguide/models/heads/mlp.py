"""Torch heads on embeddings: one module (:class:`EmbeddingHead`) and its scikit-learn estimator.

:class:`EmbeddingHead` is the network: L2-normalised embeddings (times ``scale``) into a linear
layer or one hidden layer (GELU, dropout). Noise-tolerant training (:mod:`fieldguide.models.fit`)
and pseudo-labeling train it with their own loops; :class:`MLPHead` (``mlp``) wraps it for the
head registry with a cross-entropy, focal or seesaw loss (:data:`LOSSES`), optionally class-weighted
and logit-adjusted for the long tail.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from fieldguide.errors import ModelError
from fieldguide.models.heads.base import Head, register_head

LOSSES = ("ce", "focal", "seesaw")


class EmbeddingHead(nn.Module):
    """L2-normalised embeddings times ``scale`` into a linear (``hidden=0``) or one-hidden-layer
    classifier.

    ``scale`` 1 (the default) is the plain baseline's input, unit-norm features. A larger one makes
    every step move the logits that much more: ``train``'s head used sqrt(dim) (about 36 for Lite0)
    and memorised noisy labels within a few epochs (``fieldguide bench suite``, issue 15)."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 0, dropout: float = 0.2, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)
        self.net = (nn.Linear(dim, n_classes) if hidden == 0 else
                    nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.normalize(x, dim=-1) * self.scale)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al.): cross-entropy scaled by (1 - p_target)^gamma, mean over the batch."""
    logp = torch.log_softmax(logits, dim=1)
    logp_t = logp.gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp_t.exp()) ** gamma) * logp_t
    if weight is not None:
        loss = loss * weight[target]
    return loss.mean()


def seesaw_loss(logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor, p: float = 0.8, q: float = 2.0,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """Seesaw loss (Wang et al., CVPR 2021): cross-entropy whose negative logits are scaled by
    ``S_ij = M_ij * C_ij``. Mitigation ``M_ij = (N_j / N_i)^p`` when class j has fewer training
    samples than the target i (a frequent class stops pushing a rare one down); compensation
    ``C_ij = (sigma_j / sigma_i)^q`` when j is more probable than i (a wrongly confident rare
    class is still penalised). ``counts`` (k,): training samples per class; mean over the batch."""
    n = counts.clamp(min=1).to(logits.dtype)
    n_target = n[target][:, None]
    mitigation = torch.where(n[None, :] < n_target, (n[None, :] / n_target) ** p, torch.ones_like(logits))
    prob = torch.softmax(logits.detach(), dim=1)
    p_target = prob.gather(1, target[:, None]).clamp(min=1e-12)
    compensation = torch.where(prob > p_target, (prob / p_target) ** q, torch.ones_like(logits))
    scale = (mitigation * compensation).scatter(1, target[:, None], 1.0)
    return F.cross_entropy(logits + torch.log(scale), target, weight=weight)


@register_head("mlp")
class MLPHead(Head):
    """One hidden layer (GELU, dropout) on L2-normalised embeddings, trained with AdamW and a
    one-cycle schedule; ``loss`` is one of :data:`LOSSES` (``gamma``: focal's exponent).

    ``logit_adjust`` tau > 0 trains on logits plus tau * log(class prior) and predicts with the
    plain logits (logit-adjusted loss, Menon et al., ICLR 2021): the rare classes' margins grow."""

    def __init__(self, hidden: int = 512, epochs: int = 60, lr: float = 1e-3, weight_decay: float = 1e-2,
                 dropout: float = 0.2, loss: str = "focal", gamma: float = 2.0,
                 class_weight: str | None = "balanced", batch_size: int = 256, seed: int = 0,
                 logit_adjust: float = 0.0):
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
        self.logit_adjust = logit_adjust

    def fit(self, X, y):
        if self.loss not in LOSSES:
            raise ModelError(f"mlp head: loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.classes_, yi = np.unique(y, return_inverse=True)
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        t = torch.from_numpy(yi.astype(np.int64))
        k = len(self.classes_)
        self.net_ = EmbeddingHead(X.shape[1], k, self.hidden, self.dropout)
        counts = torch.bincount(t, minlength=k)
        shift = self.logit_adjust * torch.log(counts.clamp(min=1).float() / len(t))
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
                logits = self.net_(X[idx]) + shift
                if self.loss == "focal":
                    loss = focal_loss(logits, t[idx], self.gamma, weight)
                elif self.loss == "seesaw":
                    loss = seesaw_loss(logits, t[idx], counts, weight=weight)
                else:
                    loss = F.cross_entropy(logits, t[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        self.net_.eval()
        return self

    def predict_proba(self, X):
        with torch.inference_mode():
            logits = self.net_(torch.as_tensor(np.asarray(X, dtype=np.float32)))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)
