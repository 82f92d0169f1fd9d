"""The training loop of noise-tolerant training, and head mode: a head trained on cached embeddings.

:func:`fit` is a function of tensors: any model, any ``batches(epoch)``. Every epoch it records
each training sample's entropy, the margin of its given label (logit of the given label minus
the largest other logit; its mean over epochs is the area under the margin, AUM) and whether the
prediction agrees with the given label; :func:`trajectory_signals` sums them up per sample.
:func:`fit_head` trains :class:`~fieldguide.models.heads.mlp.EmbeddingHead` (linear or one
hidden layer) with it on embeddings: seconds on a CPU. Backbone training end to end is
:mod:`fieldguide.models.finetune`; :mod:`fieldguide.models.train` wires the store to both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fieldguide import names
from fieldguide.errors import ConfigError
from fieldguide.models.batches import head_batches
from fieldguide.models.entropy import METHODS, EntropySchedule, training_loss
from fieldguide.models.heads.mlp import EmbeddingHead

TRAJECTORIES = ("entropy", "margin", "agree")


def margins(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logit of the given label minus the largest other logit; shape (n,)."""
    given = logits.gather(1, target[:, None]).squeeze(1)
    other = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    return given - other


@dataclass
class FitState:
    """Everything a resumed run needs (saved in the checkpoint)."""

    epoch: int = 0
    curves: list[dict] = field(default_factory=list)
    trajectories: dict[str, np.ndarray] = field(default_factory=dict)


def fit(model: nn.Module, batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]],
        n_train: int, *, method: str, epochs: int, optimizer: torch.optim.Optimizer,
        schedule: EntropySchedule, k: int = 8, weights: torch.Tensor | None = None,
        evaluate: Callable[[nn.Module], float] | None = None, seed: int = 0,
        state: FitState | None = None, checkpoint: Callable[[FitState], None] | None = None,
        device: torch.device | None = None, progress: bool = True) -> FitState:
    """Train ``model`` for ``epochs`` epochs; returns the curves and per-sample trajectories.

    ``batches(epoch)`` yields ``(indices, inputs, targets)``; ``indices`` index the n_train
    training samples (for the trajectories and ``weights``). ``evaluate(model)`` returns the
    held-out accuracy after each epoch. ``state`` resumes a run; ``checkpoint(state)`` is called
    after every epoch.
    """
    if method not in METHODS:
        raise ConfigError(f"training method {method!r}: use one of {', '.join(METHODS)}")
    device = device or torch.device("cpu")
    state = state or FitState()
    if not state.trajectories:
        state.trajectories = {name: np.full((n_train, epochs), np.nan, dtype=np.float32) for name in TRAJECTORIES}
    gen = torch.Generator().manual_seed(seed + state.epoch)
    bar = tqdm(range(state.epoch, epochs), desc=f"train {method}", unit="epoch", disable=None if progress else True)
    for epoch in bar:
        lam = schedule.lam(epoch / epochs)
        model.train()
        total, correct, loss_sum, ent_sum = 0, 0, 0.0, 0.0
        for idx, x, t in batches(epoch):
            x, t = x.to(device), t.to(device)
            logits = model(x)
            w = weights[idx].to(device) if weights is not None else None
            loss, ent = training_loss(method, logits, t, lam, k=k, weight=w, generator=gen)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                lg = logits.detach().float()
                agree = (lg.argmax(dim=1) == t)
                i = idx.numpy()
                state.trajectories["entropy"][i, epoch] = ent.detach().float().cpu().numpy()
                state.trajectories["margin"][i, epoch] = margins(lg, t).cpu().numpy()
                state.trajectories["agree"][i, epoch] = agree.float().cpu().numpy()
                n = len(t)
                total += n
                correct += int(agree.sum())
                loss_sum += float(loss.detach()) * n
                ent_sum += float(ent.detach().sum())
        mean_entropy = ent_sum / max(total, 1)
        schedule.observe(mean_entropy, (epoch + 1) / epochs)
        row = {"epoch": epoch + 1, names.LOSS: loss_sum / max(total, 1), names.TRAIN_ACC: correct / max(total, 1),
               names.MEAN_ENTROPY: mean_entropy, names.LAMBDA: lam}
        if evaluate is not None:
            model.eval()
            row[names.EVAL_ACC] = evaluate(model)
        state.curves.append(row)
        state.epoch = epoch + 1
        bar.set_postfix(loss=f"{row['loss']:.3f}", H=f"{mean_entropy:.2f}", lam=f"{lam:+.2f}")
        if checkpoint is not None:
            checkpoint(state)
    model.eval()
    return state


def fit_head(X: np.ndarray, y: np.ndarray, n_classes: int, *, method: str = "two-stage-entropy",
             epochs: int = 200, lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 0,
             hidden: int = 0, schedule: EntropySchedule | None = None, k: int = 8,
             weights: np.ndarray | None = None, X_eval: np.ndarray | None = None,
             y_eval: np.ndarray | None = None, seed: int = 0, state: FitState | None = None,
             model_state: dict | None = None, optim_state: dict | None = None,
             checkpoint: Callable | None = None, progress: bool = True,
             augmentations: np.ndarray | None = None, pool: dict[int, np.ndarray] | None = None,
             alpha: float = 0.0) -> tuple[nn.Module, FitState]:
    """A head trained on embeddings ``X`` (n, d) with labels ``y`` (n,) in [0, n_classes).

    ``augmentations`` (m, d) are synthetic samples' embeddings; ``pool`` maps a training row to
    its augmentations' rows (0..m-1), mixed in with probability ``alpha``. ``batch_size`` 0: full
    batch (one step an epoch), the default: with Adam (L2 weight decay, as the plain full-batch
    baseline) it does not memorise noisy labels the way minibatches did (``fieldguide bench suite``)."""
    torch.manual_seed(seed)
    schedule = schedule or EntropySchedule()
    if method not in METHODS:
        raise ConfigError(f"training method {method!r}: use one of {', '.join(METHODS)}")
    model = EmbeddingHead(X.shape[1], n_classes, hidden, scale=METHODS[method].logit_scale)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if model_state is not None:
        model.load_state_dict(model_state)
    if optim_state is not None:
        opt.load_state_dict(optim_state)
    Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    evaluate = None
    if X_eval is not None and y_eval is not None and len(y_eval):
        Xe, ye = torch.as_tensor(X_eval, dtype=torch.float32), torch.as_tensor(y_eval, dtype=torch.long)

        def evaluate(m):
            with torch.inference_mode():
                return float((m(Xe).argmax(dim=1) == ye).float().mean())

    def save(st: FitState):
        if checkpoint is not None:
            checkpoint(st, model.state_dict(), opt.state_dict(), schedule.state_dict())

    if augmentations is not None and len(augmentations) and pool:
        Xt = torch.cat([Xt, torch.as_tensor(augmentations, dtype=torch.float32)])
        pool = {i: np.asarray(rows) + len(X) for i, rows in pool.items()}
    state = fit(model, head_batches(Xt, yt, batch_size or len(X), seed, pool=pool, alpha=alpha), len(X),
                method=method, epochs=epochs,
                optimizer=opt, schedule=schedule, k=k,
                weights=torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None,
                evaluate=evaluate, seed=seed, state=state, checkpoint=save, progress=progress)
    return model, state


def predict_head(model: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.as_tensor(X, dtype=torch.float32)), dim=1).numpy().astype(np.float64)


def trajectory_signals(traj: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample summaries of the trajectories: ``aum`` (mean margin; low = noisy), ``mean_entropy``
    and ``agreement`` (share of epochs whose prediction equals the given label; low = noisy)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a sample never trained on: NaN, not a warning
        return {"aum": np.nanmean(traj["margin"], axis=1), "mean_entropy": np.nanmean(traj["entropy"], axis=1),
                "agreement": np.nanmean(traj["agree"], axis=1)}


def schedule_from(cfg) -> EntropySchedule:
    """The λ schedule of a ``[train]`` section."""
    return EntropySchedule(lam_max=cfg.lam_max, lam_min=cfg.lam_min, switch_at=cfg.switch_at, rule=cfg.switch_rule,
                           reverse=cfg.reverse_schedule)


def head_options(cfg, epochs: int | None = None) -> dict:
    """:func:`~fieldguide.models.fit.fit_head`'s keyword arguments from a ``[train]`` section (the recipe
    ``train --mode head`` uses; ``epochs`` overrides the section's)."""
    return {"method": cfg.method, "epochs": epochs or cfg.epochs, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size, "hidden": cfg.hidden, "k": cfg.grpo_k, "schedule": schedule_from(cfg),
            "seed": cfg.seed}
