"""Fine-tuning mode: a timm backbone and a linear head trained end to end on the images.

The same loop as head mode (:func:`fieldguide.models.fit.fit`: losses, λ schedule,
trajectories, checkpoints), fed with augmented image batches (GPU when present; on a CPU it
runs, slowly, on small inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fieldguide.models.backbones import Backbone
from fieldguide.models.batches import image_loader, readable
from fieldguide.models.entropy import EntropySchedule
from fieldguide.models.fit import FitState, fit
from fieldguide.models.inference import predict_images, resolve_device
from fieldguide.models.transforms import train_transform


def fit_finetune(bb: Backbone, paths: list[str], y: np.ndarray, n_classes: int, *, method: str = "two-stage-entropy",
                 epochs: int = 5, lr: float = 1e-4, weight_decay: float = 1e-4, batch_size: int = 32,
                 num_workers: int = 0, device: str = "auto", schedule: EntropySchedule | None = None, k: int = 8,
                 weights: np.ndarray | None = None, paths_eval: list[str] | None = None,
                 y_eval: np.ndarray | None = None, seed: int = 0, state: FitState | None = None,
                 model_state: dict | None = None, optim_state: dict | None = None,
                 checkpoint: Callable | None = None, progress: bool = True) -> tuple[nn.Module, FitState]:
    """``bb`` with a linear head, trained on the images ``paths`` with labels ``y`` (n,) in
    [0, n_classes); returns ``(model, state)`` like :func:`~fieldguide.models.fit.fit_head`, and
    calls ``checkpoint(state, model_state, optim_state, schedule_state)`` after every epoch.
    ``paths_eval`` / ``y_eval`` give the held-out accuracy of each epoch."""
    dev = resolve_device(device)
    schedule = schedule or EntropySchedule()
    model = nn.Sequential(bb.model, nn.Linear(bb.dim, n_classes)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if model_state is not None:
        model.load_state_dict(model_state)
    if optim_state is not None:
        opt.load_state_dict(optim_state)
    train_tf = train_transform(bb)
    yt = torch.as_tensor(y, dtype=torch.long)

    def batches(epoch: int):
        loader = image_loader(list(paths), train_tf, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                              generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for idx, x in readable(loader):
            yield idx, x, yt[idx]

    evaluate = None
    if paths_eval is not None and len(paths_eval):
        ye = np.asarray(y_eval)

        def evaluate(m):
            probs = predict_images(m, list(paths_eval), bb.transform(), n_classes, batch_size=batch_size,
                                   num_workers=num_workers, device=device)
            return float((probs.argmax(axis=1) == ye).mean())

    def save(st: FitState):
        if checkpoint is not None:
            checkpoint(st, model.state_dict(), opt.state_dict(), schedule.state_dict())

    state = fit(model, batches, len(yt), method=method, epochs=epochs, optimizer=opt, schedule=schedule, k=k,
                weights=torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None,
                evaluate=evaluate, seed=seed, state=state, checkpoint=save, device=dev, progress=progress)
    return model, state
