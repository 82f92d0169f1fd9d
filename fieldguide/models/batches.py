"""Batches for training and inference: images by path (one dataset, one collate function, one
loader), and shuffled batches over in-memory embeddings with synthetic augmentations mixed in.

Shared by ``embed``, ``inference``, ``finetune`` and semi-supervised pseudo-labeling
(``curation.semi``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """Images by path through a transform; an unreadable file yields its error instead."""

    def __init__(self, paths: list[str], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as im:
                return i, self.transform(im.convert("RGB")), None
        except Exception as e:  # noqa: BLE001 - reported per file, the run goes on
            return i, None, f"{type(e).__name__}: {e}"


def collate_images(items):
    """``(indices, images (n, C, H, W) or None, [(index, error), ...])`` of a batch of ``ImageFiles``
    items: unreadable files are reported, not stacked."""
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    idx = torch.tensor([i for i, _ in good], dtype=torch.long)
    batch = torch.stack([x for _, x in good]) if good else None
    return idx, batch, bad


def image_loader(paths: list[str], transform, *, batch_size: int, num_workers: int = 0, shuffle: bool = False,
                 generator: torch.Generator | None = None, pin_memory: bool = False) -> DataLoader:
    """Batches ``(indices, images or None, [(index, error), ...])`` of the images at ``paths``."""
    return DataLoader(ImageFiles(paths, transform), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_images, generator=generator, pin_memory=pin_memory)


def readable(loader):
    """``(indices, images)`` of each batch of an :func:`image_loader`, for training: unreadable
    files are logged and left out, a batch with none readable is skipped."""
    for idx, batch, bad in loader:
        for i, err in bad:
            log.warning("training image %s skipped: %s", i, err)
        if batch is not None:
            yield idx, batch


def mix_in_augmentations(indices: np.ndarray, pool: dict[int, np.ndarray], alpha: float,
                         rng: np.random.Generator) -> np.ndarray:
    """For each training row in ``indices``, the row to feed instead: with probability ``alpha``
    one of its augmentations (``pool[row]``: rows of augmentations), else itself."""
    out = np.array(indices, copy=True)
    for j, i in enumerate(indices):
        children = pool.get(int(i))
        if children is not None and len(children) and rng.random() < alpha:
            out[j] = children[rng.integers(len(children))]
    return out


def head_batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, *,
                 pool: dict[int, np.ndarray] | None = None, alpha: float = 0.0):
    """``batches(epoch)`` over in-memory embeddings, shuffled per epoch with a fixed seed.

    With ``pool`` (training row -> rows of ``X`` holding its synthetic augmentations), a row is
    replaced by one of its augmentations with probability ``alpha`` (its label stays)."""
    n = len(y)

    def batches(epoch: int):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        rng = np.random.default_rng(seed * 1000 + epoch)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            rows = idx
            if pool and alpha > 0:
                rows = torch.as_tensor(mix_in_augmentations(idx.numpy(), pool, alpha, rng))
            yield idx, X[rows], y[idx]

    return batches
