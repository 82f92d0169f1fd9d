"""``fieldguide`` verbs of the models: embed, predict, evaluate, train, retrain, loop."""

from __future__ import annotations

from typing import Optional

import typer

from fieldguide.cli.common import echo_json as _echo_json, project as _project


def embed(
    backbone: Optional[str] = typer.Option(None, help="Backbone name (default: models.backbone)."),
    weights: Optional[str] = typer.Option(None, help="Local weights file or folder (default: models.weights)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per batch."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Embed the images the cache does not hold yet (new or changed files only)."""
    from fieldguide.models.embed import embed as run_embed

    report = run_embed(_project(), backbone, weights, batch_size=batch_size, device=device)
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
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Out-of-sample predictions for every sample (K-fold for labeled training samples)."""
    from fieldguide.models.predict import predict as run_predict

    names = [b.strip() for b in backbones.split(",") if b.strip()] if backbones is not None else None
    report = run_predict(_project(), head=head, folds=folds, backbone=backbone, backbones=names, metadata=metadata)
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
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Noise-tolerant training on the current labels; evaluates on the test split when there is one."""
    from fieldguide.models.train import train

    _echo_train(train(_project(), method=method, mode=mode, epochs=epochs, backbone=backbone, resume=resume), as_json)


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
