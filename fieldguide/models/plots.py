"""Plots people look at, saved as PNG under a run's folder: training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_curves(curves: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [c["epoch"] for c in curves]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    axes[0].plot(ep, [c["loss"] for c in curves])
    axes[0].set_title("loss")
    axes[1].plot(ep, [c["train_acc"] for c in curves], label="train (given labels)")
    if any("eval_acc" in c for c in curves):
        axes[1].plot(ep, [c.get("eval_acc", np.nan) for c in curves], label="test")
    axes[1].set_title("accuracy")
    axes[1].legend()
    axes[2].plot(ep, [c["mean_entropy"] for c in curves], color="tab:purple")
    axes[2].set_title("mean entropy (nats)")
    axes[3].step(ep, [c["lambda"] for c in curves], where="post", color="tab:red")
    axes[3].axhline(0, color="grey", lw=0.5)
    axes[3].set_title("λ (+ explore, − exploit)")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.where((cm.sum(axis=0) + cm.sum(axis=1)) > 0)[0]
    cm = cm[np.ix_(keep, keep)]
    names = [classes[i] for i in keep]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(24, 4 + 0.16 * len(names))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(len(names))
    font = max(3, min(9, 400 // max(len(names), 1)))
    ax.set_xticks(ticks, names, rotation=90, fontsize=font)
    ax.set_yticks(ticks, names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.03, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 100) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_accuracy_vs_cost(rows, path: Path, title: str = "") -> Path:
    """Test top-1 against GMACs per image, one labelled point per backbone (``rows``: a DataFrame
    with backbone, top1, macs and, where measured, images_per_s), and against images/s."""
    fig, axes = _pyplot().subplots(1, 2, figsize=(11, 4.2))
    for ax, col, label in ((axes[0], "macs", "GMACs per image"), (axes[1], "images_per_s", "images/s (this machine)")):
        x = rows[col] / 1e9 if col == "macs" else rows[col]
        ax.scatter(x, rows["top1"], s=60, color="tab:blue")
        for xi, yi, name in zip(x, rows["top1"], rows["backbone"]):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1")
        ax.grid(alpha=0.3)
    fig.suptitle(f"accuracy vs cost{': ' + title if title else ''}")
    return _save(fig, path)


def plot_gradient_norms(lines: dict, path: Path, title: str = "") -> Path:
    """Mean gradient norm per block (input to output) over a short fine-tune, one line per backbone
    (``lines``: backbone -> DataFrame with block, depth, grad_norm), on a log scale."""
    fig, ax = _pyplot().subplots(figsize=(9, 4.2))
    for name, df in lines.items():
        ax.plot(df["depth"], df["grad_norm"], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("block depth (0: input, 1: output)")
    ax.set_ylabel("gradient norm (mean over steps)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"gradient activity per block{': ' + title if title else ''}")
    return _save(fig, path)


def plot_distill_losses(curves: list[dict], path: Path, title: str) -> Path:
    """Each distillation loss (their sum and one per level) per epoch."""
    fig, ax = _pyplot().subplots(figsize=(6, 3.6))
    for key in sorted(k for k in curves[0] if k.startswith("loss")):
        ax.plot([c["epoch"] for c in curves], [c[key] for c in curves], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=9)
    ax.legend()
    return _save(fig, path)
