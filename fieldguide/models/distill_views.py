"""Cached views for distillation: the frozen teacher's targets computed once on a few fixed views.

The teacher never changes during distillation, so on a CPU its forward pass on every batch of
every epoch is wasted work, as is decoding and augmenting the images again. With ``n_views``
views, each image is strongly augmented ``n_views`` times once, at the teacher's input size; the
teacher's targets on each view are kept (maps average-pooled to the grid the loss compares them
on), and so is the view itself, downscaled to the student's size, as uint8. Each epoch then
shows every image once, as one of its views picked at random, mirrored half of the time (the
target maps mirrored with it), and costs only the student's forward and backward passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fieldguide.models.batches import image_loader, readable

log = logging.getLogger(__name__)


@dataclass
class CachedViews:
    """``images`` (N, V, 3, s, s) uint8 views at the student's size; ``targets[level]``: the
    teacher's (N, V, D) pooled features or (N, V, C, h, w) maps on them, float16; ``ok`` (N,)
    whether image i could be read."""

    images: torch.Tensor
    targets: dict[str, torch.Tensor]
    ok: torch.Tensor


def view_transform(bb, size: int):
    """The strong training augmentation of ``bb``'s data config at ``size`` px, in [0, 1] (no normalisation)."""
    from dataclasses import replace

    from fieldguide.models.transforms import train_transform

    return train_transform(replace(bb, input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), strong=True)


def build_views(paths: list[str], teacher_targets: Callable[[torch.Tensor], dict[str, torch.Tensor]], transform, *,
                n_views: int, student_size: int, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                device: torch.device | str = "cpu", progress: bool = True) -> CachedViews:
    """``n_views`` augmented views of each image of ``paths`` (``transform``: PIL image -> [0, 1]
    tensor at the teacher's size) and ``teacher_targets(views)`` on them; see the module docstring."""
    if n_views < 1:
        raise ValueError(f"n_views must be at least 1, got {n_views}")
    torch.manual_seed(seed)  # the augmentations draw from torch's and Python's generators
    import random

    random.seed(seed)
    n = len(paths)
    images = torch.zeros(n, n_views, 3, student_size, student_size, dtype=torch.uint8)
    targets: dict[str, torch.Tensor] = {}
    ok = torch.zeros(n, dtype=torch.bool)
    bar = tqdm(total=n * n_views, desc="teacher targets", unit="view", disable=None if progress else True)
    for v in range(n_views):
        loader = image_loader(paths, transform, batch_size=batch_size, num_workers=num_workers)
        for idx, x in readable(loader):
            idx = torch.as_tensor(idx)
            with torch.no_grad():
                out = teacher_targets(x.to(device))
            for level, t in out.items():
                if level not in targets:
                    targets[level] = torch.zeros(n, n_views, *t.shape[1:], dtype=torch.float16)
                targets[level][idx, v] = t.to("cpu", torch.float16)
            small = F.interpolate(x, size=(student_size, student_size), mode="bilinear", antialias=True,
                                  align_corners=False)
            images[idx, v] = (small.clamp(0, 1) * 255).round().to(torch.uint8)
            ok[idx] = True
            bar.update(len(idx))
    bar.close()
    return CachedViews(images, targets, ok)


def load_or_build_views(path: Path | None, build: Callable[[], CachedViews]) -> CachedViews:
    """The views saved at ``path`` (a resumed run), else ``build()``, saved there."""
    if path is not None and path.exists():
        log.info("cached views from %s", path)
        return CachedViews(**torch.load(path, map_location="cpu", weights_only=False))
    views = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(views.__dict__, tmp)
        tmp.replace(path)
    return views


def view_batches(views: CachedViews, *, epoch: int, start_step: int, batch_size: int, seed: int,
                 mean: torch.Tensor, std: torch.Tensor,
                 device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``(student images normalised by mean / std, teacher targets)`` batches of one epoch: every
    readable image once, in an order, with views and mirrors, fixed by ``seed`` and ``epoch``;
    the first ``start_step`` batches are skipped (a resumed epoch)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    rows = torch.nonzero(views.ok).flatten()
    rows = rows[torch.randperm(len(rows), generator=g)]
    n_views = views.images.shape[1]
    pick = torch.randint(n_views, (len(rows),), generator=g)
    flip = torch.rand(len(rows), generator=g) < 0.5
    for start in range(start_step * batch_size, len(rows), batch_size):
        r, v, f = rows[start:start + batch_size], pick[start:start + batch_size], flip[start:start + batch_size]
        x = views.images[r, v].float().div_(255)
        x[f] = x[f].flip(-1)
        targets = {}
        for level, t in views.targets.items():
            t = t[r, v].float()
            if t.ndim == 4:
                t[f] = t[f].flip(-1)
            targets[level] = t.to(device)
        yield ((x.to(device) - mean) / std), targets
