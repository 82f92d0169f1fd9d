"""Two-stage entropy training, brought from an MLLM's tokens to a classifier's outputs.

After "From Exploration to Exploitation: A Two-Stage Entropy RLVR Approach for Noise-Tolerant
MLLM Training": the loss is ``task loss + λ(t)·(−mean entropy of the predicted distribution)``.
λ(t) = +λ_max until the switch (minimising the loss *maximises* entropy: the model stays
uncertain and explores instead of memorising noisy labels), then −λ_min (entropy is
minimised: the model commits, exploitation). The switch happens at a fraction of training
(default 0.8) or when the moving-average entropy stops rising (``rule="saturation"``).

The task loss is cross-entropy, or GRPO on a classifier: K labels sampled per image from its
softmax, reward 1 when a sample equals the given label, advantage = (r − group mean) /
(group std + ε), loss = −mean(advantage · log p(sample)). A group whose rewards are all equal
has zero advantage and so gives no gradient, as in GRPO.

Everything here is a function of tensors; :mod:`fieldguide.models.train` runs the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fieldguide.registry import Registry

SWITCH_RULES = ("fraction", "saturation")


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of softmax(logits); shape (n,)."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages of ``rewards`` (n groups, K samples each): (r − mean) / (std + ε).

    A group whose rewards are all equal gets zero advantage (no gradient).
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards: expected shape (n, K), got {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    adv = (rewards - mean) / (std + eps)
    return torch.where(std > 0, adv, torch.zeros_like(adv))


def grpo_loss(logits: torch.Tensor, target: torch.Tensor, k: int = 8,
              generator: torch.Generator | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO's policy loss for a classifier: K labels sampled per row, reward = (sample == target);
    ``weight`` (n,) weighs the rows' losses (each row's: the mean over its K samples)."""
    logp = F.log_softmax(logits, dim=-1)
    with torch.no_grad():
        samples = torch.multinomial(logp.exp().float(), k, replacement=True, generator=generator)
        rewards = (samples == target[:, None]).float()
        adv = grpo_advantages(rewards)
    chosen = logp.gather(1, samples)
    return weighted_mean(-(adv * chosen).mean(dim=1), weight)


def weighted_mean(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``per_sample`` (n,), weighted by ``weight`` (n,) when given."""
    if weight is None:
        return per_sample.mean()
    return (per_sample * weight).sum() / weight.sum().clamp_min(1e-8)


@dataclass
class EntropySchedule:
    """λ(t) of two-stage entropy training (``reverse`` = min→max, the ablation the paper reports).

    ``lam(progress)`` takes the fraction of training done; with ``rule="saturation"`` the switch
    also happens once :meth:`observe` sees the moving-average entropy stop rising (by less than
    ``tolerance`` relative over ``patience`` epochs), whichever comes first.
    """

    lam_max: float = 0.5
    lam_min: float = 0.1
    switch_at: float = 0.8
    rule: str = "fraction"
    reverse: bool = False
    window: int = 3
    patience: int = 2
    tolerance: float = 0.01
    switched_at: float | None = None
    history: list[float] = field(default_factory=list)

    def __post_init__(self):
        if self.rule not in SWITCH_RULES:
            raise ValueError(f"switch rule {self.rule!r}: use one of {SWITCH_RULES}")
        if not 0.0 <= self.switch_at <= 1.0:
            raise ValueError(f"switch_at must be in [0, 1], got {self.switch_at}")
        if self.lam_max < 0 or self.lam_min < 0:
            raise ValueError("lam_max and lam_min are magnitudes (>= 0)")

    def exploring(self, progress: float) -> bool:
        if self.switched_at is not None:
            return progress < self.switched_at
        return progress < self.switch_at

    def lam(self, progress: float) -> float:
        explore = self.exploring(progress)
        if self.reverse:
            explore = not explore
        return self.lam_max if explore else -self.lam_min

    def observe(self, mean_entropy: float, progress: float) -> None:
        """Record an epoch's mean entropy; under ``saturation`` this may move the switch earlier."""
        self.history.append(float(mean_entropy))
        if self.rule != "saturation" or self.switched_at is not None:
            return
        h = self.history
        need = self.window + self.patience
        if len(h) < need:
            return
        ma = [sum(h[i - self.window + 1:i + 1]) / self.window for i in range(self.window - 1, len(h))]
        recent = ma[-(self.patience + 1):]
        gains = [(b - a) / max(abs(a), 1e-8) for a, b in zip(recent, recent[1:])]
        if all(g < self.tolerance for g in gains):
            self.switched_at = progress

    def state_dict(self) -> dict:
        return {"switched_at": self.switched_at, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.switched_at = state.get("switched_at")
        self.history = list(state.get("history", []))


# ---- the training methods, by name ------------------------------------------------------------------------
TaskLoss = Callable[..., torch.Tensor]  # (logits, target, *, k, weight, generator) -> scalar task loss


@dataclass(frozen=True)
class LossMethod:
    task: TaskLoss
    entropy_term: bool  # add λ·(−mean entropy) to the task loss
    logit_scale: float = 1.0  # a head on embeddings multiplies its unit-norm inputs by this


METHODS: Registry[LossMethod] = Registry("training method")


def register_method(name: str, *, entropy_term: bool, logit_scale: float = 1.0) -> Callable[[TaskLoss], TaskLoss]:
    """Register ``task`` as the training method ``name`` (train.method); a name taken raises.
    ``logit_scale``: what a head on embeddings multiplies its unit-norm inputs by (see grpo)."""

    def deco(task: TaskLoss) -> TaskLoss:
        METHODS.add(name, LossMethod(task, entropy_term, logit_scale))
        return task

    return deco


@register_method("ce", entropy_term=False)
def cross_entropy_task(logits: torch.Tensor, target: torch.Tensor, *, k: int = 8,
                       weight: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cross-entropy, ``weight`` (n,) down-weighting samples."""
    return weighted_mean(F.cross_entropy(logits, target, reduction="none"), weight)


register_method("two-stage-entropy", entropy_term=True)(cross_entropy_task)


# GRPO learns only from groups whose K sampled labels disagree with each other. On unit-norm features
# (scale 1) a new head's softmax is near uniform over C classes, so almost no group of K samples hits
# the given label and nothing is learned (cub100, 40% noise: test top-1 0.01, chance). Inputs times 8
# give the policy a start: 0.85 on cub100 and 0.53 on inat-plants-dev at 40% noise, against 0.75 and
# 0.49 with the old minibatch recipe (sqrt(d) scale).
@register_method("grpo", entropy_term=True, logit_scale=8.0)
def grpo_task(logits: torch.Tensor, target: torch.Tensor, *, k: int = 8, weight: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """GRPO's policy loss, ``weight`` (n,) down-weighting samples (their rows' policy losses)."""
    return grpo_loss(logits, target, k, generator, weight)


def training_loss(method: str, logits: torch.Tensor, target: torch.Tensor, lam: float, *,
                  k: int = 8, weight: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per-sample entropy)`` for ``method`` (a name of :data:`METHODS`): task loss + λ·(−mean entropy).

    ``ce`` ignores λ; ``two-stage-entropy`` is cross-entropy plus the entropy term; ``grpo`` is the
    GRPO policy loss plus the entropy term. ``weight`` (n,) down-weights samples in the task loss.
    """
    if method not in METHODS:
        raise ValueError(f"training method {method!r}: use one of {', '.join(METHODS)}")
    spec = METHODS[method]
    ent = entropy(logits)
    task = spec.task(logits, target, k=k, weight=weight, generator=generator)
    return (task + lam * (-ent.mean()) if spec.entropy_term else task), ent
