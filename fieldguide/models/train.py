"""Noise-tolerant training: ``ce``, ``two-stage-entropy`` or ``grpo``, on embeddings or end to end.

- ``head`` mode trains a linear (or one-hidden-layer) head on the cached embeddings: seconds on
  a CPU. ``finetune`` mode trains a timm backbone and a linear head end to end on the images
  (GPU when present; on a CPU it runs, slowly, on small inputs).
- Every epoch records each training sample's entropy, the margin of its given label (logit of
  the given label minus the largest other logit; its mean over epochs is the area under the
  margin, AUM) and whether the prediction agrees with the given label. These trajectories are
  saved with the run (``trajectories.npz``) and become the ``entropy`` signal of ``flag``.
- Checkpoints (``PROJECT/checkpoints/<run>/last.pt``) are written every epoch; a run that was
  stopped resumes from its last epoch (``fieldguide train --resume RUN``).
- Curves (loss, accuracy, mean entropy, λ) go to the warehouse's ``curves`` and a PNG; with a
  ``test`` split the run is evaluated on it (``metrics``, ``class_metrics``, ``confusions``).

The loop itself (:func:`fit`) is a function of tensors; :func:`train` wires the store to it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fieldguide.config import Project
from fieldguide.errors import ConfigError, NotReadyError
from fieldguide.models.batches import ImageFiles, collate_train, head_batches
from fieldguide.models.entropy import METHODS, EntropySchedule, training_loss
from fieldguide.models.transforms import train_transform
from fieldguide.platform import samples, store
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)

MODES = ("head", "finetune")
TRAJECTORIES = ("entropy", "margin", "agree")


# ---- models -------------------------------------------------------------------------------------------
class EmbeddingHead(nn.Module):
    """L2-normalised embeddings (scaled by sqrt(dim)) into a linear or one-hidden-layer classifier."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 0):
        super().__init__()
        self.scale = float(np.sqrt(dim))
        self.net = (nn.Linear(dim, n_classes) if hidden == 0 else
                    nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(hidden, n_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.normalize(x, dim=-1) * self.scale)


def margins(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logit of the given label minus the largest other logit; shape (n,)."""
    given = logits.gather(1, target[:, None]).squeeze(1)
    other = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    return given - other


# ---- the loop -----------------------------------------------------------------------------------------
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
        row = {"epoch": epoch + 1, "loss": loss_sum / max(total, 1), "train_acc": correct / max(total, 1),
               "mean_entropy": mean_entropy, "lambda": lam}
        if evaluate is not None:
            model.eval()
            row["eval_acc"] = evaluate(model)
        state.curves.append(row)
        state.epoch = epoch + 1
        bar.set_postfix(loss=f"{row['loss']:.3f}", H=f"{mean_entropy:.2f}", lam=f"{lam:+.2f}")
        if checkpoint is not None:
            checkpoint(state)
    model.eval()
    return state


def fit_head(X: np.ndarray, y: np.ndarray, n_classes: int, *, method: str = "two-stage-entropy",
             epochs: int = 40, lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 128,
             hidden: int = 0, schedule: EntropySchedule | None = None, k: int = 8,
             weights: np.ndarray | None = None, X_eval: np.ndarray | None = None,
             y_eval: np.ndarray | None = None, seed: int = 0, state: FitState | None = None,
             model_state: dict | None = None, optim_state: dict | None = None,
             checkpoint: Callable | None = None, progress: bool = True,
             augmentations: np.ndarray | None = None, pool: dict[int, np.ndarray] | None = None,
             alpha: float = 0.0) -> tuple[nn.Module, FitState]:
    """A head trained on embeddings ``X`` (n, d) with labels ``y`` (n,) in [0, n_classes).

    ``augmentations`` (m, d) are synthetic samples' embeddings; ``pool`` maps a training row to
    its augmentations' rows (0..m-1), mixed in with probability ``alpha``."""
    torch.manual_seed(seed)
    schedule = schedule or EntropySchedule()
    model = EmbeddingHead(X.shape[1], n_classes, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
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
    state = fit(model, head_batches(Xt, yt, batch_size, seed, pool=pool, alpha=alpha), len(X),
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
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {"aum": np.nanmean(traj["margin"], axis=1), "mean_entropy": np.nanmean(traj["entropy"], axis=1),
                    "agreement": np.nanmean(traj["agree"], axis=1)}


# ---- plots --------------------------------------------------------------------------------------------
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


# ---- the step -----------------------------------------------------------------------------------------
@dataclass
class TrainReport:
    run_id: str
    method: str
    mode: str
    epochs: int
    n_train: int
    excluded: int = 0
    downweighted: int = 0
    top1: float | None = None
    top5: float | None = None
    macro_f1: float | None = None
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    curves_png: str = ""
    checkpoint: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _schedule(cfg) -> EntropySchedule:
    return EntropySchedule(lam_max=cfg.lam_max, lam_min=cfg.lam_min, switch_at=cfg.switch_at, rule=cfg.switch_rule,
                           reverse=cfg.reverse_schedule)


def _training_table(project: Project, ds, ids: list[str], flagged_policy: str):
    """``(table, fit mask, unresolved-flag mask)`` for the samples ``ids``.

    A flagged sample is resolved once its label was set or confirmed (``label_history``) after
    the flag run that flagged it finished.
    """
    import pandas as pd

    has_flags = samples.has_field(ds, "label_issue")
    table = store.samples_table(ds, ["label_issue", "label_history"] if has_flags else []).set_index("id")
    table = table.loc[ids]
    fit_mask = table["split"].isin(("train", "val")).to_numpy() & table["label"].notna().to_numpy()
    flagged = np.zeros(len(table), dtype=bool)
    last = store.warehouse(project).last_run("flag") if has_flags else None
    if has_flags and last is not None:
        since = pd.Timestamp(last["finished"] or last["started"])
        for i, (issue, hist) in enumerate(zip(table["label_issue"], table["label_history"])):
            if issue is True or issue == 1:
                times = [getattr(e, "time", None) for e in (hist or []) if e is not None]
                resolved = any(t is not None and pd.Timestamp(t) > since for t in times)
                flagged[i] = not resolved
    return table, fit_mask, flagged


@writes('train')
def train(project: Project, *, method: str | None = None, mode: str | None = None, epochs: int | None = None,
          backbone: str | None = None, flagged: str | None = None, resume: str | None = None,
          kind: str = "train", progress: bool = True) -> TrainReport:
    """Train on the current labels of the store; see the module docstring.

    ``flagged`` (retrain): what to do with samples flagged by the last ``flag`` run and not
    resolved since (``keep``, ``downweight`` or ``exclude``; default ``train.flagged``).
    """
    cfg = project.config.train
    wh = store.warehouse(project)
    resumed = None
    if resume:
        resumed = _load_checkpoint(project, resume)
        config = resumed["config"]
        method, mode, epochs, backbone, flagged = (config["method"], config["mode"], config["epochs"],
                                                   config["backbone"], config["flagged"])
        kind = config.get("kind", kind)
    method = method or cfg.method
    mode = mode or cfg.mode
    if method not in METHODS:
        raise ConfigError(f"training method {method!r}: use one of {', '.join(METHODS)}")
    if mode not in MODES:
        raise ConfigError(f"training mode {mode!r}: use one of {', '.join(MODES)}")
    flagged = flagged or (cfg.flagged if kind == "retrain" else "keep")
    epochs = epochs or (cfg.epochs if mode == "head" else cfg.finetune_epochs)
    backbone = backbone or project.config.models.backbone
    ds = store.dataset(project, create=False)
    classes = store.classes(ds)
    index = {c: i for i, c in enumerate(classes)}
    config = {"method": method, "mode": mode, "epochs": epochs, "backbone": backbone, "flagged": flagged,
              "kind": kind, "lam_max": cfg.lam_max, "lam_min": cfg.lam_min, "switch_at": cfg.switch_at,
              "switch_rule": cfg.switch_rule, "reverse_schedule": cfg.reverse_schedule, "seed": cfg.seed,
              "lr": cfg.lr, "classes": classes}
    run_id = resume or wh.start_run(kind, config)
    if resume:
        wh.write("runs", [{"run_id": run_id, "kind": kind, "config": json.dumps(config, default=str, sort_keys=True),
                           "status": "running", "started": resumed["started"], "finished": None, "message": None,
                           "pid": os.getpid(), "host": socket.gethostname()}])
    start = time.perf_counter()
    try:
        if mode == "head":
            report = _train_head(project, ds, run_id, config, classes, index, resumed, progress)
        else:
            report = _train_finetune(project, ds, run_id, config, classes, index, resumed, progress)
    except BaseException as e:
        wh.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
        raise
    report.seconds = time.perf_counter() - start
    wh.write("metrics", [{"run_id": run_id, "split": "all", "name": "seconds", "value": report.seconds},
                         {"run_id": run_id, "split": "train", "name": "n", "value": float(report.n_train)}])
    wh.finish_run(run_id, "completed")
    return report


def _weights_for(flagged_mask: np.ndarray, policy: str, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """``(keep mask, sample weights)`` for the flagged-sample policy."""
    keep = np.ones(len(flagged_mask), dtype=bool)
    w = np.ones(len(flagged_mask), dtype=np.float32)
    if policy == "exclude":
        keep = ~flagged_mask
    elif policy == "downweight":
        w[flagged_mask] = weight
    return keep, w


def _finish(project: Project, run_id: str, config: dict, classes: list[str], state: FitState,
            train_ids: list[str], probs_test, y_test, report: TrainReport) -> TrainReport:
    from fieldguide.models.evaluate import classification_metrics, load_cost_matrix, record_metrics

    wh = store.warehouse(project)
    run_dir = project.run_dir(run_id)
    np.savez_compressed(run_dir / "trajectories.npz", sample_ids=np.array(train_ids),
                        **{k: v for k, v in state.trajectories.items()})
    rows = [{"run_id": run_id, "step": c["epoch"], "name": name, "value": float(c[name])}
            for c in state.curves for name in ("loss", "train_acc", "mean_entropy", "lambda", "eval_acc") if name in c]
    wh.write("curves", rows)
    title = f"{config['method']} ({config['mode']}), {len(train_ids)} samples"
    if probs_test is not None and len(y_test):
        cost = load_cost_matrix(project.config.evaluate.cost_matrix, classes)
        m = classification_metrics(y_test, probs_test, classes, cost)
        record_metrics(wh, run_id, "test", m, classes)
        report.top1, report.top5, report.macro_f1 = m["top1"], m["top5"], m["macro_f1"]
        title += f": test top-1 {m['top1']:.3f}, macro-F1 {m['macro_f1']:.3f}"
    report.curves_png = str(plot_curves(state.curves, run_dir / "curves.png", title))
    return report


def _train_head(project, ds, run_id, config, classes, index, resumed, progress) -> TrainReport:
    from fieldguide.models.embed import load_embeddings

    cfg = project.config.train
    ids, X = load_embeddings(project, config["backbone"], ds)
    table, fit_mask, flagged_mask = _training_table(project, ds, ids, config["flagged"])
    keep, w = _weights_for(flagged_mask, config["flagged"], cfg.flagged_weight)
    train_mask = fit_mask & keep
    if train_mask.sum() < 2:
        raise NotReadyError("no labeled training samples with embeddings (ingest labeled images, then embed)")
    y = np.array([index[v] for v in table["label"][train_mask]])
    test_mask = (table["split"] == "test").to_numpy() & table["label"].notna().to_numpy()
    y_test = np.array([index[v] for v in table["label"][test_mask]], dtype=int)
    train_ids = [s for s, m in zip(ids, train_mask) if m]
    ckpt = _checkpoint_writer(project, run_id, config, resumed)
    state = model_state = optim_state = None
    schedule = _schedule(cfg)
    if resumed:
        state, model_state, optim_state = resumed["state"], resumed["model"], resumed["optimizer"]
        schedule.load_state_dict(resumed["schedule"])
    aug, pool = _augmentation_pool(ds, ids, X, train_ids)
    report = TrainReport(run_id=run_id, method=config["method"], mode="head", epochs=config["epochs"],
                         n_train=int(train_mask.sum()), excluded=int((fit_mask & ~keep).sum()),
                         downweighted=int((fit_mask & keep & (w < 1)).sum()),
                         resumed_from_epoch=state.epoch if state else 0, checkpoint=str(ckpt.path))
    model, state = fit_head(
        X[train_mask], y, len(classes), method=config["method"], epochs=config["epochs"], lr=cfg.lr,
        weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, hidden=cfg.hidden, schedule=schedule,
        k=cfg.grpo_k, weights=w[train_mask] if config["flagged"] == "downweight" else None,
        X_eval=X[test_mask], y_eval=y_test, seed=cfg.seed, state=state, model_state=model_state,
        optim_state=optim_state, checkpoint=ckpt, progress=progress,
        augmentations=aug, pool=pool, alpha=project.config.augment.alpha,
    )
    probs = predict_head(model, X[test_mask]) if test_mask.any() else None
    return _finish(project, run_id, config, classes, state, train_ids, probs, y_test, report)


def _augmentation_pool(ds, ids: list[str], X: np.ndarray, train_ids: list[str]):
    """``(embeddings of synthetic samples, training row -> their rows)`` for the α-mix."""
    if not samples.has_field(ds, "parent_id"):
        return None, {}
    syn = samples.arrays(ds, ["origin", "parent_id"])
    syn = syn[syn["origin"] == "synthetic"]
    syn_ids, parents = syn["id"].tolist(), syn["parent_id"].tolist()
    if not syn_ids:
        return None, {}
    row_of = {s: i for i, s in enumerate(ids)}
    train_row = {s: i for i, s in enumerate(train_ids)}
    feats, pool = [], {}
    for sid, parent in zip(syn_ids, parents):
        if sid in row_of and parent in train_row:
            pool.setdefault(train_row[parent], []).append(len(feats))
            feats.append(X[row_of[sid]])
    if not feats:
        return None, {}
    return np.stack(feats), {k: np.array(v) for k, v in pool.items()}


def _train_finetune(project, ds, run_id, config, classes, index, resumed, progress) -> TrainReport:
    from torch.utils.data import DataLoader

    from fieldguide.models.backbones import load_backbone
    from fieldguide.models.embed import resolve_device

    cfg = project.config.train
    mcfg = project.config.models
    bb = load_backbone(config["backbone"], mcfg.weights or None)
    table = store.samples_table(ds, ["label_issue"] if samples.has_field(ds, "label_issue") else []).set_index("id")
    ids = table.index.tolist()
    _, fit_mask, flagged_mask = _training_table(project, ds, ids, config["flagged"])
    keep, w = _weights_for(flagged_mask, config["flagged"], cfg.flagged_weight)
    train_mask = fit_mask & keep
    if train_mask.sum() < 2:
        raise NotReadyError("no labeled training samples (ingest labeled images first)")
    paths = table["filepath"].to_numpy()
    y = np.array([index[v] for v in table["label"][train_mask]])
    test_mask = (table["split"] == "test").to_numpy() & table["label"].notna().to_numpy()
    y_test = np.array([index[v] for v in table["label"][test_mask]], dtype=int)
    train_ids = [s for s, m in zip(ids, train_mask) if m]
    device = resolve_device(mcfg.device)
    model = nn.Sequential(bb.model, nn.Linear(bb.dim, len(classes))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)
    schedule = _schedule(cfg)
    state = None
    if resumed:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        state = resumed["state"]
    train_tf = train_transform(bb)
    files = ImageFiles(list(paths[train_mask]), train_tf)
    yt = torch.as_tensor(y, dtype=torch.long)

    def batches(epoch: int):
        loader = DataLoader(files, batch_size=cfg.finetune_batch_size, shuffle=True, num_workers=mcfg.num_workers,
                            collate_fn=collate_train, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for idx, x in loader:
            yield idx, x, yt[idx]

    def predict_images(m, ps) -> np.ndarray:
        out = []
        loader = DataLoader(ImageFiles(list(ps), bb.transform()), batch_size=cfg.finetune_batch_size,
                            num_workers=mcfg.num_workers, collate_fn=collate_train)
        with torch.inference_mode():
            for _, x in loader:
                out.append(torch.softmax(m(x.to(device)), dim=1).float().cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, len(classes)))

    evaluate = None
    if test_mask.any():
        def evaluate(m):
            return float((predict_images(m, paths[test_mask]).argmax(axis=1) == y_test).mean())

    ckpt = _checkpoint_writer(project, run_id, config, resumed)
    report = TrainReport(run_id=run_id, method=config["method"], mode="finetune", epochs=config["epochs"],
                         n_train=int(train_mask.sum()), excluded=int((fit_mask & ~keep).sum()),
                         downweighted=int((fit_mask & keep & (w < 1)).sum()),
                         resumed_from_epoch=state.epoch if state else 0, checkpoint=str(ckpt.path))
    state = fit(model, batches, int(train_mask.sum()), method=config["method"], epochs=config["epochs"],
                optimizer=opt, schedule=schedule, k=cfg.grpo_k,
                weights=torch.as_tensor(w[train_mask]) if config["flagged"] == "downweight" else None,
                evaluate=evaluate, seed=cfg.seed, state=state,
                checkpoint=lambda st: ckpt(st, model.state_dict(), opt.state_dict(), schedule.state_dict()),
                device=device, progress=progress)
    probs = predict_images(model, paths[test_mask]) if test_mask.any() else None
    return _finish(project, run_id, config, classes, state, train_ids, probs, y_test, report)


# ---- checkpoints --------------------------------------------------------------------------------------
class _CheckpointWriter:
    def __init__(self, path: Path, config: dict, started):
        self.path = path
        self.config = config
        self.started = started

    def __call__(self, state: FitState, model_state: dict, optim_state: dict, schedule_state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({"config": self.config, "started": self.started, "state": state, "model": model_state,
                    "optimizer": optim_state, "schedule": schedule_state}, tmp)
        tmp.replace(self.path)  # atomic: a crash mid-write keeps the previous epoch's checkpoint


def _checkpoint_writer(project: Project, run_id: str, config: dict, resumed) -> _CheckpointWriter:
    from fieldguide.platform.warehouse import now

    folder = project.checkpoints_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return _CheckpointWriter(folder / "last.pt", config, resumed["started"] if resumed else now())


def _load_checkpoint(project: Project, run_id: str) -> dict:
    path = project.checkpoints_dir / run_id / "last.pt"
    if not path.exists():
        raise NotReadyError(f"no checkpoint for run {run_id!r} ({path} does not exist)")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_trajectories(project: Project, run_id: str | None = None) -> tuple[str, list[str], dict[str, np.ndarray]]:
    """``(run_id, sample_ids, trajectories)`` of a train run (default: the latest completed one)."""
    wh = store.warehouse(project)
    if run_id is None:
        last = wh.last_run("train", "retrain")
        if last is None:
            raise NotReadyError("no training run yet (run 'fieldguide train')")
        run_id = last["run_id"]
    path = project.runs_dir / run_id / "trajectories.npz"
    if not path.exists():
        raise NotReadyError(f"trajectories of run {run_id} are missing ({path})")
    z = np.load(path, allow_pickle=False)
    return run_id, z["sample_ids"].tolist(), {k: z[k] for k in TRAJECTORIES}


# ---- retrain and compare ------------------------------------------------------------------------------
def compare_runs(project: Project, run_id: str, previous: str | None = None) -> dict:
    """Test top-1 / macro-F1 of ``run_id`` against ``previous`` (default: the training run before it),
    and the per-class F1 changes (largest first)."""
    wh = store.warehouse(project)
    if previous is None:
        df = wh.query(
            "SELECT r.run_id FROM runs r WHERE r.kind IN ('train', 'retrain') AND r.status = 'completed' "
            "AND r.run_id <> ? AND r.started < (SELECT started FROM runs WHERE run_id = ?) "
            "AND EXISTS (SELECT 1 FROM metrics m WHERE m.run_id = r.run_id AND m.split = 'test') "
            "ORDER BY r.started DESC LIMIT 1", [run_id, run_id])
        previous = None if df.empty else df.iloc[0, 0]
    out: dict = {"run_id": run_id, "previous": previous}

    def headline(rid):
        m = wh.query("SELECT name, value FROM metrics WHERE run_id = ? AND split = 'test'", [rid])
        return dict(zip(m["name"], m["value"])) if not m.empty else {}

    now_m = headline(run_id)
    out.update(top1=now_m.get("top1"), macro_f1=now_m.get("macro_f1"))
    if previous is None:
        return out
    prev_m = headline(previous)
    out.update(previous_top1=prev_m.get("top1"), previous_macro_f1=prev_m.get("macro_f1"))
    if out["top1"] is not None and out["previous_top1"] is not None:
        out["delta_top1"] = out["top1"] - out["previous_top1"]
        out["delta_macro_f1"] = out["macro_f1"] - out["previous_macro_f1"]
    per = wh.query(
        "SELECT a.class, a.f1 AS f1, b.f1 AS previous_f1, a.f1 - b.f1 AS delta FROM class_metrics a "
        "JOIN class_metrics b ON a.class = b.class AND a.split = b.split "
        "WHERE a.run_id = ? AND b.run_id = ? AND a.split = 'test' AND a.f1 <> b.f1 "
        "ORDER BY abs(a.f1 - b.f1) DESC, a.class LIMIT 20", [run_id, previous])
    out["class_changes"] = per.to_dict("records")
    return out


@writes('retrain')
def retrain(project: Project, *, method: str | None = None, mode: str | None = None, epochs: int | None = None,
            flagged: str | None = None, progress: bool = True) -> tuple[TrainReport, dict]:
    """Train on the current labels (flagged samples kept, down-weighted or excluded as configured),
    evaluate, record the run, and compare it with the previous training run."""
    report = train(project, method=method, mode=mode, epochs=epochs, flagged=flagged, kind="retrain",
                   progress=progress)
    return report, compare_runs(project, report.run_id)
