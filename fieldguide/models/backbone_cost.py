"""What a backbone costs: parameters, MACs and FLOPs per image, images/s and peak memory here.

Parameters and MACs come from :func:`~fieldguide.models.backbones.count_params` /
:func:`~fieldguide.models.backbones.count_macs` (``torch.utils.flop_counter``; FLOPs = 2 x MACs).
Speed is the backbone alone on synthetic images at its input size (no image decoding), batch after
batch in ``torch.inference_mode`` after warm-up batches, on the GPU when there is one. Peak memory:
on a GPU, ``torch.cuda.max_memory_allocated`` over the timed batches; on a CPU, the largest growth
of the process's resident memory (psutil, sampled every few milliseconds) over the same batches,
which is what running the backbone needs on top of what the process held already.
"""

from __future__ import annotations

import threading
import time

import torch

from fieldguide.models.backbones import Backbone, count_macs, count_params
from fieldguide.models.inference import resolve_device

COST_COLUMNS = ("params", "macs", "flops", "input_size", "images_per_s", "peak_memory_mb")


class _RssPeak:
    """The largest resident-memory growth of this process while in the ``with`` block (MiB)."""

    def __init__(self, every: float = 0.005):
        import psutil

        self._proc, self._every = psutil.Process(), every
        self.peak_mb = 0.0

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self._stop.wait(self._every)

    def __enter__(self):
        self._base = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20


def measure_speed(bb: Backbone, *, device: str = "auto", batch_size: int = 32, batches: int = 3,
                  warmup: int = 1) -> dict:
    """``{"images_per_s", "peak_memory_mb", "device", "batch_size"}`` of ``bb`` on ``device``."""
    dev = resolve_device(device)
    model = bb.model.to(dev).eval()
    x = torch.randn(batch_size, 3, bb.input_size, bb.input_size, device=dev)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        with _RssPeak() as rss:
            start = time.perf_counter()
            for _ in range(batches):
                model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else rss.peak_mb
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"images_per_s": batch_size * batches / seconds, "peak_memory_mb": float(peak), "device": name,
            "batch_size": batch_size}


def backbone_cost(bb: Backbone, *, device: str = "auto", batch_size: int = 32, batches: int = 3) -> dict:
    """Every cost of :data:`COST_COLUMNS` (and the device and batch size the speed was measured at)."""
    macs = count_macs(bb)
    return {"params": count_params(bb.model), "macs": macs, "flops": 2 * macs, "input_size": bb.input_size,
            **measure_speed(bb, device=device, batch_size=batch_size, batches=batches)}
