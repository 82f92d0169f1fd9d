"""Gradient activity: the gradient norm of each block of a backbone over a short fine-tune.

The insect papers (CNNs vs transformers on crowdsourced insect images) plot, per block from input
to output, how large the gradients are while a pretrained backbone is fine-tuned on the new
classes: where a model still learns, and where it has gone quiet. :func:`block_gradient_norms`
does that on the project's images: the backbone plus a fresh linear head, AdamW, cross-entropy,
a few steps; after each backward pass, the L2 norm of the gradients of each block's parameters.

Blocks come from timm's ``group_matcher`` (``coarse=True``: the stem, each stage of blocks, the
head) through ``timm.models.group_parameters``; a model without one (a transformers model) is cut
at its longest ``ModuleList`` / ``Sequential`` (one block per member, what comes before it is
``stem``, after it ``head``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

COLUMNS = ["step", "block", "depth", "grad_norm", "loss"]


def _label(names: list[str]) -> str:
    """A block's name from its parameters' names: ``blocks.3`` for ``blocks.3.0.conv.weight``."""
    parts = names[0].split(".")
    if len(parts) > 2 and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0] if len(parts) > 1 else names[0]


def _longest_sequence(model: nn.Module) -> tuple[str, int] | None:
    best = None
    for name, module in model.named_modules():
        if name and isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 1:
            if best is None or len(module) > best[1]:
                best = (name, len(module))
    return best


def parameter_blocks(model: nn.Module) -> dict[str, list[str]]:
    """Block name -> names of its trainable parameters, input to output (see the module's text)."""
    params = [n for n, p in model.named_parameters() if p.requires_grad]
    matcher = getattr(model, "group_matcher", None)
    if matcher is not None:
        from timm.models import group_parameters

        groups = group_parameters(model, matcher(coarse=True))
        blocks = {}
        for gid in sorted(groups):
            names = [n for n in groups[gid] if n in params]
            if not names:
                continue
            label, stray = _label(names), None
            for n in names:  # the coarse last stage also holds the head conv (conv_head, bn2): a block of its own
                if "." in label and not n.startswith(label + "."):
                    stray = stray or _label([n])
                blocks.setdefault(stray or label, []).append(n)
        return blocks
    seq = _longest_sequence(model)
    blocks: dict[str, list[str]] = {}
    seen_seq = False
    for n in params:
        if seq is not None and n.startswith(seq[0] + "."):
            seen_seq = True
            index = n[len(seq[0]) + 1:].split(".")[0]
            blocks.setdefault(f"{seq[0]}.{index}", []).append(n)
        else:
            blocks.setdefault("head" if seen_seq else "stem", []).append(n)
    return blocks


def block_gradient_norms(backbone: nn.Module, dim: int, n_classes: int,
                         batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, steps: int = 5, lr: float = 1e-4,
                         device: torch.device | str = "cpu", seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Fine-tune ``backbone`` (pooled features of size ``dim``) with a new linear head for ``steps``
    batches of ``(images, labels)``; returns one row per (step, block) with :data:`COLUMNS`
    (``depth``: the block's position, 0 = input to 1 = output; ``loss``: the batch's loss).

    The backbone is changed in place (trained); pass a copy to keep it. Batches are cycled when
    there are fewer than ``steps``.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    blocks = parameter_blocks(backbone)
    head = nn.Linear(dim, n_classes)
    model = nn.Sequential(backbone, head).to(device).train()
    named = dict(backbone.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    rows: list[dict] = []
    cache: list[tuple[torch.Tensor, torch.Tensor]] = []
    it = iter(batches)
    for step in tqdm(range(steps), desc="gradient activity", unit="step", disable=None if progress else True):
        try:
            x, y = next(it)
            cache.append((x, y))
        except StopIteration:
            if not cache:
                raise ValueError("block_gradient_norms: no batches") from None
            x, y = cache[step % len(cache)]
        loss = loss_fn(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        for i, (block, names) in enumerate(blocks.items()):
            grads = [named[n].grad for n in names if named[n].grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
            rows.append({"step": step, "block": block, "depth": i / max(len(blocks) - 1, 1),
                         "grad_norm": norm.item() if norm is not None else 0.0, "loss": loss.item()})
        opt.step()
    return pd.DataFrame(rows, columns=COLUMNS)


def mean_by_block(norms: pd.DataFrame) -> pd.DataFrame:
    """The mean gradient norm of each block over the steps, in block order: block, depth, grad_norm."""
    order = list(dict.fromkeys(norms["block"]))
    out = norms.groupby("block", sort=False).agg(depth=("depth", "first"), grad_norm=("grad_norm", "mean"))
    return out.loc[order].reset_index()


def summary(norms: pd.DataFrame) -> dict[str, float]:
    """Headline numbers: the mean block gradient norm, and the share of the total in the first
    half of the network (below 0.5: the later blocks move more)."""
    by = mean_by_block(norms)
    total = float(by["grad_norm"].sum())
    early = float(by.loc[by["depth"] < 0.5, "grad_norm"].sum())
    return {"grad_norm_mean": float(by["grad_norm"].mean()),
            "grad_early_share": early / total if total > 0 else float(np.nan)}
