"""The one image-inference loop: a model over images by path, batch by batch, on the chosen device.

``embed`` takes a backbone's pooled features from it; fine-tuning and pseudo-labeling take a
classifier's probabilities (:func:`predict_images`). Unreadable images are reported, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from fieldguide.models.batches import image_loader

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def image_outputs(model: torch.nn.Module, paths: list[str], transform, dim: int, *, batch_size: int = 64,
                  num_workers: int = 0, device: str = "auto", desc: str = "inference",
                  progress: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]]:
    """Yield ``(indices, outputs, errors)`` per batch: ``outputs`` is ``model``'s float32 output
    (n, dim) for the readable images ``paths[indices]``, ``errors`` ``(index, message)`` pairs for
    the others."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    loader = image_loader(paths, transform, batch_size=batch_size, num_workers=num_workers,
                          pin_memory=dev.type == "cuda")
    with torch.inference_mode():
        for idx, batch, bad in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True):
            out = np.zeros((0, dim), dtype=np.float32)
            if batch is not None:
                out = model(batch.to(dev, non_blocking=True)).float().cpu().numpy()
            yield idx.numpy(), out, bad


def predict_images(model: torch.nn.Module, paths: list[str], transform, n_classes: int, *, batch_size: int = 32,
                   num_workers: int = 0, device: str = "auto", progress: bool = False) -> np.ndarray:
    """Softmax of the classifier ``model`` on the images, (len(paths), n_classes) float64;
    unreadable images are logged and get a row of zeros."""
    out = np.zeros((len(paths), n_classes))
    probs = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    for idx, p, bad in image_outputs(probs, paths, transform, n_classes, batch_size=batch_size,
                                     num_workers=num_workers, device=device, desc="predict", progress=progress):
        for i, err in bad:
            log.warning("image %s skipped: %s", paths[i], err)
        out[idx] = p
    return out
