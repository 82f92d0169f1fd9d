"""``fieldguide`` verbs of the models: embed, predict, evaluate, train, retrain, distill, loop."""

from __future__ import annotations

from typing import Optional

import typer

from fieldguide.cli.common import echo_json as _echo_json, project as _project


def embed(
    backbone: Optional[str] = typer.Option(None, help="Backbone name (default: models.backbone)."),
    weights: Optional[str] = typer.Option(None, help="Local weights file or folder (default: models.weights)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per batch."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    ray: Optional[str] = typer.Option(None, "--ray", help="Embed on a Ray cluster: auto (the one running here, else a "
                                      "local one) or HOST:PORT; none: this machine (default: models.ray_address)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Embed the images the cache does not hold yet (new or changed files only)."""
    from fieldguide.models.embed import embed as run_embed

    report = run_embed(_project(), backbone, weights, batch_size=batch_size, device=device, ray_address=ray)
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"{report.backbone}: embedded {report.embedded}, cached {report.cached}, "
               f"skipped {len(report.skipped)} ({report.images_per_s:.1f} images/s)")
    for path, err in report.skipped[:10]:
        typer.echo(f"  skipped {path}: {err}")


def predict(
    head: Optional[str] = typer.Option(None, help="logreg | mlp | knn | ensemble (default: predict.head)."),
    folds: Optional[int] = typer.Option(None, help="K for the stratified K-fold (default: predict.folds)."),
    backbone: Optional[str] = typer.Option(None, help="Whose embeddings (default: models.backbone)."),
    backbones: Optional[str] = typer.Option(None, help="Comma-separated backbones to combine, e.g. a,b,c (default: "
                                            "models.backbones, else every backbone embedded for the samples)."),
    metadata: Optional[str] = typer.Option(None, help="auto | none: combine with a date/place prior when the "
                                           "samples have dates or places (default: models.metadata)."),
    decision: Optional[str] = typer.Option(None, help="argmax | expected_cost: the class of least expected cost "
                                           "under classes.costs (default: predict.decision)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Fit the K-fold heads on a Ray cluster, a task per fold: "
                                      "auto or HOST:PORT; none: this machine (default: models.ray_address)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Out-of-sample predictions for every sample (K-fold for labeled training samples)."""
    from fieldguide.models.predict import predict as run_predict

    names = [b.strip() for b in backbones.split(",") if b.strip()] if backbones is not None else None
    report = run_predict(_project(), head=head, folds=folds, backbone=backbone, backbones=names, metadata=metadata,
                         decision=decision, ray_address=ray)
    if as_json:
        _echo_json(report.as_dict())
        return
    if len(report.backbones) > 1:
        c = report.combination
        how = (f"weighted mean ({', '.join(f'{b} {w:g}' for b, w in c['weights'].items())})"
               if "weights" in c else "one head on the concatenated embeddings")
        typer.echo(f"across {len(report.backbones)} backbones: {how}"
                   + (" (the default: several backbones are embedded; --backbones <one> for a single one)"
                      if report.by_default else ""))
    for name in report.left_out:
        typer.echo(f"left out {name}: not every sample has its embedding (run 'fieldguide embed --backbone {name}')")
    typer.echo(f"{report.head}: {report.n_cross_validated} samples by {report.folds}-fold "
               f"(out-of-fold top-1 {report.oof_top1:.3f}), {report.n_fit_all} by a head fit on all of them")
    if report.metadata:
        typer.echo(f"metadata prior ({', '.join(report.metadata)}): weight {report.metadata_weight:g}"
                   + (" (the head alone did as well)" if report.metadata_weight == 0 else ""))


def evaluate(
    split: str = typer.Option("test", help="The split to score."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Top-1/5, macro-F1, calibration, per-class scores, confusions and cost of the predictions."""
    from fieldguide.models.evaluate import evaluate as run_evaluate

    m = run_evaluate(_project(), split=split)
    if as_json:
        _echo_json(m)
        return
    typer.echo(f"{m['split']} (n={m['n']}): top-1 {m['top1']:.3f}  top-5 {m['top5']:.3f}  "
               f"macro-F1 {m['macro_f1']:.3f}  ECE {m['ece']:.3f}  cost {m['cost_score']:.3f}")
    for pair in m["most_confused"][:5]:
        typer.echo(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    ranks = [k[len("top1_"):] for k in m if k.startswith("top1_")]
    typer.echo("per rank: " + "  ".join(f"{r} top-1 {m['top1_' + r]:.3f}" for r in ranks)
               + f"  (errors' mean taxonomic distance {m['mean_taxonomic_distance']:.2f})")
    typer.echo(f"back-off at {m['backoff_threshold']:g}: " + "  ".join(
        f"{r} {m['backoff_coverage_' + r]:.0%}" + (f" (precision {m['backoff_precision_' + r]:.3f})"
                                                  if m['backoff_precision_' + r] is not None else "")
        for r in ranks) + f"  none {m['backoff_abstained']:.0%}")
    if m.get("open_set_auroc") is not None:
        typer.echo(f"unknown classes: open-set AUROC {m['open_set_auroc']:.3f} "
                   f"(max-softmax {m['open_set_auroc_max_softmax']:.3f})")
    typer.echo(f"confusion matrix: {m['confusion_png']}")
    if m["labels_changed"]:
        typer.echo(f"note: {m['labels_changed']} {m['split']} label(s) were changed by review since ingest "
                   f"(e.g. {', '.join(m['labels_changed_ids'][:3])}): the baseline moved")


def _echo_train(report, as_json: bool, comparison: dict | None = None) -> None:
    if as_json:
        _echo_json({**report.as_dict(), **({"comparison": comparison} if comparison is not None else {})})
        return
    line = f"{report.run_id}: {report.method} ({report.mode}), {report.epochs} epochs on {report.n_train} samples"
    if report.excluded or report.downweighted:
        line += f" ({report.excluded} flagged excluded, {report.downweighted} down-weighted)"
    typer.echo(line + f" in {report.seconds:.0f} s")
    if report.top1 is not None:
        typer.echo(f"test: top-1 {report.top1:.3f}  top-5 {report.top5:.3f}  macro-F1 {report.macro_f1:.3f}")
    typer.echo(f"curves: {report.curves_png}")
    if comparison and comparison.get("previous"):
        c = comparison
        if c.get("delta_top1") is not None:
            typer.echo(f"vs {c['previous']}: top-1 {c['previous_top1']:.3f} -> {c['top1']:.3f} ({c['delta_top1']:+.3f}), "
                       f"macro-F1 {c['previous_macro_f1']:.3f} -> {c['macro_f1']:.3f} ({c['delta_macro_f1']:+.3f})")
        for row in c.get("class_changes", [])[:10]:
            typer.echo(f"  {row['class']}: F1 {row['previous_f1']:.3f} -> {row['f1']:.3f} ({row['delta']:+.3f})")
    elif comparison is not None:
        typer.echo("no earlier training run with test metrics to compare with")


def train_cmd(
    method: Optional[str] = typer.Option(None, help="ce | two-stage-entropy | grpo (default: train.method)."),
    mode: Optional[str] = typer.Option(None, help="head | finetune (default: train.mode)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: train.epochs / train.finetune_epochs)."),
    backbone: Optional[str] = typer.Option(None, help="Backbone (default: models.backbone)."),
    resume: Optional[str] = typer.Option(None, help="Resume a stopped run from its last checkpoint (its run id)."),
    metadata: Optional[str] = typer.Option(None, help="auto | none: combine the test probabilities with a date/place "
                                           "prior when the samples have dates or places (default: models.metadata)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Noise-tolerant training on the current labels; evaluates on the test split when there is one."""
    from fieldguide.models.train import train

    _echo_train(train(_project(), method=method, mode=mode, epochs=epochs, backbone=backbone, resume=resume,
                      metadata=metadata), as_json)


def retrain_cmd(
    method: Optional[str] = typer.Option(None, help="ce | two-stage-entropy | grpo (default: train.method)."),
    mode: Optional[str] = typer.Option(None, help="head | finetune (default: train.mode)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs."),
    flagged: Optional[str] = typer.Option(None, help="Unresolved flagged samples: keep | downweight | exclude."),
    as_json: bool = typer.Option(False, "--json", help="Print the report and comparison as JSON."),
) -> None:
    """Train on the current labels, evaluate, and compare with the previous training run."""
    from fieldguide.models.train import retrain

    report, comparison = retrain(_project(), method=method, mode=mode, epochs=epochs, flagged=flagged)
    _echo_train(report, as_json, comparison)


def loop_cmd(
    force: bool = typer.Option(False, help="Run every step even when its inputs did not change."),
    push_limit: Optional[int] = typer.Option(None, help="Push at most N flagged samples to Label Studio."),
) -> None:
    """One turn of the loop: embed, predict, flag, relabel push/pull, retrain, evaluate (unchanged steps skipped)."""
    from fieldguide.loop import run_loop

    run_loop(_project(), echo=typer.echo, force=force, push_limit=push_limit)


def distill_cmd(
    student: str = typer.Option(..., help="timm architecture of the student, from random init "
                                "(e.g. vit_tiny_patch16_224, levit_128s, mobilevitv2_050)."),
    teacher: Optional[str] = typer.Option(None, help="Teacher backbone (default: models.backbone)."),
    teacher_weights: Optional[str] = typer.Option(None, help="Local weights of the teacher (default: its own)."),
    image_size: int = typer.Option(224, help="Input size of the student (and of the teacher's view); 112-160 on a CPU."),
    epochs: int = typer.Option(10, help="Epochs over the images."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warm-up then cosine)."),
    levels: str = typer.Option("token,patch,feature", help="Objectives: some of token, patch, feature."),
    loss: str = typer.Option("mse+cosine", help="mse | cosine | mse+cosine"),
    include_test: bool = typer.Option(False, help="Distil on the test split's images too (no labels are used)."),
    cached_views: int = typer.Option(0, help="Compute the teacher's targets once on N fixed views per image "
                                     "(e.g. 4 on a CPU); 0: a fresh view and teacher pass per batch."),
    teacher_size: Optional[int] = typer.Option(None, help="The teacher's input size on each view "
                                               "(default: the student's)."),
    token_weight: float = typer.Option(1.0, help="Weight of the token-level (pooled feature) loss."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (default: models.device)."),
    resume: Optional[str] = typer.Option(None, help="Resume this run (a rerun of the same command resumes by itself)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Distil the teacher into a small student without labels (Proteus); the student becomes backbone distilled:<run>."""
    from fieldguide.models.distill import distill

    report = distill(_project(), student, teacher=teacher, teacher_weights=teacher_weights, image_size=image_size,
                     epochs=epochs, batch_size=batch_size, lr=lr,
                     levels=tuple(v.strip() for v in levels.split(",") if v.strip()), loss=loss,
                     include_test=include_test, cached_views=cached_views, teacher_size=teacher_size,
                     token_weight=token_weight, device=device, resume=resume)
    if as_json:
        _echo_json(report.as_dict())
        return
    resumed = f" (resumed from {report.resumed_from})" if report.resumed_from else ""
    typer.echo(f"{report.run_id}: {report.teacher} -> {report.student} at {report.image_size} px, {report.epochs} "
               f"epochs on {report.n_images} images in {report.seconds:.0f} s{resumed}; loss {report.first_loss:.3f} "
               f"-> {report.last_loss:.3f}"
               + (f" ({report.cached_views} cached views per image, built in {report.views_seconds:.0f} s)"
                  if report.cached_views else ""))
    typer.echo(f"backbone: {report.backbone} (fieldguide embed --backbone {report.backbone})")
