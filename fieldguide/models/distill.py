"""Distillation without labels (Proteus, "Accessing Vision Foundation Models at ImageNet-level Costs").

A frozen teacher backbone is distilled into a small timm student from random init on the
project's own images (labeled or not), strongly augmented. Three objectives, each through a
projection head on the student's side that is dropped afterwards:

- ``token``: the teacher's pooled feature vs the student's pooled feature (a LayerNorm and a linear);
- ``patch``: the teacher's last spatial feature map vs the student's (a 1x1 projection), both
  average-pooled to their common (smaller) grid;
- ``feature``: an intermediate map (at 3/4 of the depth: stride 16 of a CNN, block 9 of 12 of a
  ViT) of the teacher vs the student's at the same relative depth, the same way.

Teacher targets are layer-normalised over channels; the loss is MSE, cosine distance (1 - cos)
or their sum. Teacher and student see the same augmented view, the student at its input size, the
teacher at ``teacher_size`` (default: the student's). With ``cached_views`` the teacher's targets
on a few fixed views per image are computed once (:mod:`fieldguide.models.distill_views`).
Checkpoints every few batches (``PROJECT/checkpoints/<run>/last.pt``): a stopped run resumes
where it stopped, mid-epoch included, when the same command runs again (or ``--resume RUN``).
The student is saved in ``runs/<run>/student`` and loads as the backbone ``distilled:<run>``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fieldguide import names
from fieldguide.config import Project
from fieldguide.errors import ConfigError, ModelError, NotReadyError
from fieldguide.models.backbones import DISTILLED, Backbone, load_backbone, save_student, student_dir
from fieldguide.models.batches import image_loader, readable
from fieldguide.models.checkpoints import CheckpointWriter, checkpoint_writer
from fieldguide.models.distill_views import build_views, load_or_build_views, view_batches, view_transform
from fieldguide.models.inference import resolve_device
from fieldguide.models.plots import plot_distill_losses
from fieldguide.models.transforms import train_transform
from fieldguide.platform import store
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)

LEVELS = ("token", "patch", "feature")
LOSSES = ("mse", "cosine", "mse+cosine")


# ---- features and losses ---------------------------------------------------------------------------
def feature_index(n_stages: int) -> int:
    """The intermediate used at the feature level: the one at 3/4 of the depth."""
    return max(0, round(0.75 * n_stages) - 1)


def level_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A timm model's ``token`` (N, D) pooled feature, ``patch`` (N, C, h, w) last spatial map and
    ``feature`` (N, C', h', w') intermediate map, from one ``forward_intermediates`` pass."""
    n = len(model.feature_info)
    final, inter = model.forward_intermediates(x, indices=n)
    return {"token": model.forward_head(final, pre_logits=True),
            "patch": final if final.ndim == 4 else inter[-1],
            "feature": inter[feature_index(n)]}


class ProjectionHeads(nn.Module):
    """Per level, the student's output mapped to the teacher's width (dropped after training)."""

    def __init__(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], levels=LEVELS):
        super().__init__()
        heads = {}
        for level in levels:
            cs, ct = student[level].shape[1], teacher[level].shape[1]
            heads[level] = (nn.Sequential(nn.LayerNorm(cs), nn.Linear(cs, ct)) if level == "token"
                            else nn.Conv2d(cs, ct, kernel_size=1))
        self.heads = nn.ModuleDict(heads)

    def forward(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {level: head(out[level]) for level, head in self.heads.items()}


def level_loss(pred: torch.Tensor, target: torch.Tensor, loss: str = "mse+cosine") -> torch.Tensor:
    """``loss`` between a projected student output and the teacher's: vectors (N, C), or maps
    (N, C, h, w) that are first average-pooled to their common grid and compared per position."""
    if pred.ndim == 4:
        grid = (min(pred.shape[-2], target.shape[-2]), min(pred.shape[-1], target.shape[-1]))
        pred, target = (F.adaptive_avg_pool2d(t, grid).flatten(2).transpose(1, 2).reshape(-1, t.shape[1])
                        for t in (pred, target))
    target = F.layer_norm(target.float(), target.shape[-1:])
    pred = pred.float()
    total = pred.new_zeros(())
    if "mse" in loss:
        total = total + F.mse_loss(pred, target)
    if "cosine" in loss:
        total = total + (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
    return total


def distill_losses(student_out: dict, teacher_out: dict, heads: ProjectionHeads, loss: str = "mse+cosine") -> dict:
    """Per level, the loss of the student's projected outputs against the teacher's."""
    pred = heads(student_out)
    return {level: level_loss(pred[level], teacher_out[level], loss) for level in pred}


# ---- the student -----------------------------------------------------------------------------------------
def create_student(arch: str, image_size: int) -> tuple[Backbone, dict]:
    """A timm architecture from random init at ``image_size`` (vision transformers get
    ``img_size``), as a :class:`Backbone`; returns it and its ``create_model`` keyword arguments."""
    import timm

    arch = arch.removeprefix("timm/")
    if not timm.is_model(arch):
        raise ModelError(f"student {arch!r}: unknown timm architecture (e.g. vit_tiny_patch16_224, deit_tiny_patch16_224, "
                         "levit_128s, mobilevitv2_050, efficientvit_b0)")
    kwargs = {"img_size": image_size}
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except TypeError:  # convolutional and most hybrid models take any size
        kwargs = {}
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    if not hasattr(model, "forward_intermediates"):
        raise ModelError(f"student {arch!r}: timm has no forward_intermediates for it (pick another architecture)")
    cfg = timm.data.resolve_model_data_config(model)
    bb = Backbone(name=f"timm/{arch}", model=model, dim=model.num_features, input_size=image_size,
                  mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"),
                  crop_pct=float(cfg.get("crop_pct", 0.875)))
    return bb, kwargs


# ---- the loop --------------------------------------------------------------------------------------------
@dataclass
class DistillState:
    """Where a run is: ``epoch`` epochs done, ``step`` batches of the next one, per-epoch ``curves``."""

    epoch: int = 0
    step: int = 0
    images: int = 0
    seconds: float = 0.0
    views_seconds: float = 0.0
    curves: list[dict] = field(default_factory=list)
    sums: dict = field(default_factory=dict)


def _lr_lambda(total_steps: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return f


def distill_images(teacher: Backbone, student: Backbone, paths: list[str], *, epochs: int = 10,
                   levels=LEVELS, loss: str = "mse+cosine", lr: float = 1e-3, weight_decay: float = 0.05,
                   batch_size: int = 32, num_workers: int = 0, device: str = "auto", seed: int = 0,
                   cached_views: int = 0, teacher_size: int | None = None, token_weight: float = 1.0,
                   views_path: Path | None = None, state: DistillState | None = None,
                   checkpoint: Callable | None = None, resumed: dict | None = None, checkpoint_every: int = 20,
                   progress: bool = True) -> tuple[ProjectionHeads, DistillState]:
    """Train ``student.model`` in place to match the frozen ``teacher`` on strongly augmented views
    of the images ``paths``; returns the projection heads and the run's state.

    The teacher sees each view at ``teacher_size`` (default: the student's size), the student at
    its own. ``cached_views`` > 0: the teacher's targets on that many fixed views per image are
    computed once (:mod:`fieldguide.models.distill_views`, saved at ``views_path`` when given) and
    epochs cost only the student's passes; 0: a fresh view and teacher pass per batch (GPUs).
    ``token_weight`` scales the token-level loss (the pooled feature is what kNN and heads use).
    ``checkpoint(state, model_state, optim_state, schedule_state)`` is called every
    ``checkpoint_every`` batches and after each epoch; ``resumed`` (``model``, ``optimizer``,
    ``schedule`` of such a call) and ``state`` continue from it.
    """
    if not set(levels) <= set(LEVELS) or not levels:
        raise ConfigError(f"distillation levels {','.join(levels)!r}: use some of {', '.join(LEVELS)}")
    if loss not in LOSSES:
        raise ConfigError(f"distillation loss {loss!r}: use one of {', '.join(LOSSES)}")
    if cached_views < 0:
        raise ConfigError(f"cached views {cached_views}: use 0 (a fresh view per batch) or a few (e.g. 4)")
    if not paths:
        raise NotReadyError("no images to distil on (ingest images first)")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    t_model = teacher.model.to(dev).eval().requires_grad_(False)
    s_model = student.model.to(dev)
    size, t_size = student.input_size, teacher_size or student.input_size
    with torch.no_grad():
        s_zero = level_features(s_model.eval(), torch.zeros(2, 3, size, size, device=dev))
        t_zero = level_features(t_model, torch.zeros(2, 3, t_size, t_size, device=dev))
        heads = ProjectionHeads(s_zero, t_zero, levels).to(dev)
    # the grid each map level is compared on: the smaller of the two
    grids = {lv: tuple(min(a, b) for a, b in zip(s_zero[lv].shape[-2:], t_zero[lv].shape[-2:]))
             for lv in levels if s_zero[lv].ndim == 4}
    trained = nn.ModuleDict({"student": s_model, "heads": heads})
    opt = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = math.ceil(len(paths) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(epochs * per_epoch, max(1, per_epoch // 2)))
    if resumed is not None:
        trained.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["schedule"])
    state = state or DistillState()
    # the student's normalisation to the teacher's: same view, each model its own mean / std
    s_mean, s_std, t_mean, t_std = (torch.tensor(v, device=dev).view(1, 3, 1, 1)
                                    for v in (student.mean, student.std, teacher.mean, teacher.std))

    def teacher_targets(x01: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's levels on views in [0, 1], maps pooled to the compared grid."""
        if x01.shape[-1] != t_size:
            x01 = F.interpolate(x01, size=(t_size, t_size), mode="bilinear", align_corners=False)
        out = level_features(t_model, (x01 - t_mean) / t_std)
        return {lv: F.adaptive_avg_pool2d(out[lv], grids[lv]) if lv in grids else out[lv] for lv in levels}

    if cached_views:
        t0 = time.perf_counter()
        views = load_or_build_views(views_path, lambda: build_views(
            paths, teacher_targets, view_transform(student, t_size), n_views=cached_views, student_size=size,
            batch_size=batch_size, num_workers=num_workers, seed=seed, device=dev, progress=progress))
        state.views_seconds += time.perf_counter() - t0
        per_epoch = math.ceil(int(views.ok.sum()) / batch_size)

    def batches(epoch: int):
        if cached_views:
            yield from view_batches(views, epoch=epoch, start_step=state.step, batch_size=batch_size, seed=seed,
                                    mean=s_mean, std=s_std, device=dev)
            return
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        todo = [paths[i] for i in order[state.step * batch_size:]]
        loader = image_loader(todo, train_transform(student, strong=True), batch_size=batch_size,
                              num_workers=num_workers, pin_memory=dev.type == "cuda")
        for _, x in readable(loader):
            x = x.to(dev, non_blocking=True)
            with torch.no_grad():
                t_out = teacher_targets(x * s_std + s_mean)
            yield x, t_out

    def save():
        if checkpoint is not None:
            checkpoint(state, trained.state_dict(), opt.state_dict(), sched.state_dict())

    trained.train()
    for epoch in range(state.epoch, epochs):
        bar = tqdm(total=per_epoch, initial=state.step, desc=f"distill {epoch + 1}/{epochs}", unit="batch",
                   disable=None if progress else True)
        start = time.perf_counter()
        for x, t_out in batches(epoch):
            parts = distill_losses(level_features(s_model, x), t_out, heads, loss)
            total = sum(v * (token_weight if k == "token" else 1.0) for k, v in parts.items())
            opt.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(trained.parameters(), 3.0)
            opt.step()
            sched.step()
            for k, v in {"loss": total, **{f"loss_{k}": v for k, v in parts.items()}}.items():
                state.sums[k] = state.sums.get(k, 0.0) + float(v.detach()) * len(x)
            state.sums["n"] = state.sums.get("n", 0) + len(x)
            state.step += 1
            state.images += len(x)
            bar.update(1)
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")
            if state.step % checkpoint_every == 0:
                state.seconds += time.perf_counter() - start
                start = time.perf_counter()
                save()
        bar.close()
        state.seconds += time.perf_counter() - start
        n = max(1, state.sums.pop("n", 0))
        state.curves.append({"epoch": epoch + 1, **{k: v / n for k, v in state.sums.items()}})
        log.info("distill epoch %d: %s", epoch + 1, state.curves[-1])
        state.epoch, state.step, state.sums = epoch + 1, 0, {}
        save()
    s_model.eval()
    return heads, state


# ---- the step ---------------------------------------------------------------------------------------------
@dataclass
class DistillReport:
    run_id: str
    backbone: str
    teacher: str
    student: str
    image_size: int
    epochs: int
    n_images: int
    cached_views: int = 0
    seconds: float = 0.0
    views_seconds: float = 0.0
    images_per_s: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    resumed_from: str = ""
    student_dir: str = ""
    curves_png: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _unfinished_run(wh, config: dict, project: Project) -> str | None:
    """The newest distill run with this very config that stopped before it finished, if it left a checkpoint."""
    df = wh.query("SELECT run_id, config FROM runs WHERE kind = 'distill' AND status <> 'completed' "
                  "ORDER BY started DESC")
    want = json.loads(json.dumps(config, default=str))
    for row in df.itertuples():
        if json.loads(row.config or "{}") == want and (project.checkpoints_dir / row.run_id / "last.pt").exists():
            return row.run_id
    return None


@writes('distill')
def distill(project: Project, student: str, *, teacher: str | None = None, teacher_weights: str | None = None,
            image_size: int = 224, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
            levels: tuple[str, ...] = LEVELS, loss: str = "mse+cosine", include_test: bool = False,
            cached_views: int = 0, teacher_size: int | None = None, token_weight: float = 1.0,
            device: str | None = None, resume: str | None = None, seed: int = 0,
            progress: bool = True) -> DistillReport:
    """Distil ``teacher`` (default: ``models.backbone``) into a fresh ``student`` on the images of
    the store (test split left out unless ``include_test``); see the module docstring. Rerunning
    the same command after a stop resumes it; the student becomes the backbone ``distilled:<run>``."""
    from fieldguide.models.checkpoints import load_checkpoint

    mcfg = project.config.models
    wh = store.warehouse(project)
    resumed = load_checkpoint(project, resume) if resume else None
    if resumed:
        c = resumed["config"]
        student, teacher, image_size, epochs, batch_size, lr, loss, include_test, seed = (
            c["student"], c["teacher"], c["image_size"], c["epochs"], c["batch_size"], c["lr"], c["loss"],
            c["include_test"], c["seed"])
        levels, teacher_weights = tuple(c["levels"]), c["teacher_weights"]
        cached_views, teacher_size, token_weight = (c.get("cached_views", 0), c.get("teacher_size"),
                                                    c.get("token_weight", 1.0))
    teacher = teacher or mcfg.backbone
    if teacher == mcfg.backbone and teacher_weights is None:
        teacher_weights = mcfg.weights or None
    t_bb = load_backbone(teacher, teacher_weights, runs_dir=project.runs_dir)
    if not hasattr(t_bb.model, "forward_intermediates"):
        raise ModelError(f"teacher {teacher!r}: distillation needs a timm backbone (forward_intermediates)")
    s_bb, kwargs = create_student(student, image_size)
    table = store.samples_table(store.dataset(project, create=False), [])
    if not include_test:
        table = table[table["split"] != "test"]
    paths = table["filepath"].tolist()
    config = {"teacher": teacher, "teacher_weights": teacher_weights, "teacher_weights_id": t_bb.weights_id,
              "student": s_bb.name.removeprefix("timm/"), "image_size": image_size, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "levels": list(levels), "loss": loss,
              "include_test": include_test, "seed": seed, "n_images": len(paths), "cached_views": cached_views,
              "teacher_size": teacher_size, "token_weight": token_weight}
    run_id = resume or _unfinished_run(wh, config, project)
    if run_id and resumed is None:
        resumed = load_checkpoint(project, run_id)
    if run_id:
        log.info("resuming distill run %s", run_id)
    run_id = wh.start_run("distill", config, run_id, resumed["started"] if resumed else None)
    ckpt: CheckpointWriter = checkpoint_writer(project, run_id, config, resumed)
    report = DistillReport(run_id=run_id, backbone=f"{DISTILLED}{run_id}", teacher=teacher, student=config["student"],
                           image_size=image_size, epochs=epochs, n_images=len(paths), cached_views=cached_views,
                           resumed_from=f"epoch {resumed['state'].epoch}, batch {resumed['state'].step}" if resumed else "")
    try:
        _, state = distill_images(
            t_bb, s_bb, paths, epochs=epochs, levels=levels, loss=loss, lr=lr, batch_size=batch_size,
            num_workers=mcfg.num_workers, device=device or mcfg.device, seed=seed, cached_views=cached_views,
            teacher_size=teacher_size, token_weight=token_weight,
            views_path=project.checkpoints_dir / run_id / "views.pt" if cached_views else None,
            state=resumed["state"] if resumed else None, resumed=resumed, checkpoint=ckpt, progress=progress)
        folder = save_student(student_dir(project.runs_dir, run_id), s_bb.model, {
            "arch": config["student"], "kwargs": kwargs, "input_size": image_size, "mean": s_bb.mean,
            "std": s_bb.std, "interpolation": s_bb.interpolation, "crop_pct": s_bb.crop_pct,
            "teacher": teacher, "teacher_weights_id": t_bb.weights_id, "run_id": run_id, "levels": list(levels),
            "loss": loss, "epochs": epochs})
    except BaseException as e:
        wh.finish_run(run_id, "failed", f"{type(e).__name__}: {e}"[:2000])
        raise
    report.seconds, report.views_seconds = state.seconds, state.views_seconds
    report.images_per_s = state.images / state.seconds if state.seconds else 0.0
    report.first_loss, report.last_loss = state.curves[0]["loss"], state.curves[-1]["loss"]
    report.student_dir = str(folder)
    report.curves_png = str(plot_distill_losses(state.curves, project.run_dir(run_id) / "losses.png",
                                        f"{teacher} -> {config['student']} ({image_size} px, {len(paths)} images)"))
    wh.write("curves", [{"run_id": run_id, "step": c["epoch"], "name": k, "value": float(v)}
                        for c in state.curves for k, v in c.items() if k != "epoch"])
    wh.write("metrics", [{"run_id": run_id, "split": "all", "name": names.SECONDS, "value": state.seconds},
                         {"run_id": run_id, "split": "all", "name": "images_per_s", "value": report.images_per_s},
                         {"run_id": run_id, "split": "all", "name": "views_seconds", "value": state.views_seconds},
                         {"run_id": run_id, "split": "train", "name": names.N, "value": float(len(paths))}])
    wh.finish_run(run_id, "completed")
    return report
