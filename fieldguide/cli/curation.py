"""``fieldguide`` verbs of curation: pseudolabel, augment, fill, flag, signals export, bench noise, bench suite,
bench backbones."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fieldguide.cli.common import echo_json as _echo_json, project as _project

signals_app = typer.Typer(help="Export and inspect label-issue signals.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks you can run on your own data.", no_args_is_help=True)


def pseudolabel_cmd(
    threshold: Optional[float] = typer.Option(
        None, help="Keep pseudo-labels with at least this confidence (default: pseudolabel.threshold)."),
    ema_decay: Optional[float] = typer.Option(
        None, help="EMA teacher decay per step, with warm-up (default: pseudolabel.ema_decay)."),
    mu: Optional[int] = typer.Option(
        None, help="Unlabeled samples per labeled sample in a batch (default: pseudolabel.mu)."),
    lambda_u: Optional[float] = typer.Option(None, help="Weight of the unlabeled loss (default: pseudolabel.lambda_u)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: pseudolabel.epochs)."),
    balance: Optional[bool] = typer.Option(
        None, "--balance/--no-balance",
        help="Cap every class at the median count of pseudo-labels per class (default: pseudolabel.balance)."),
    mode: Optional[str] = typer.Option(
        None, help="head: on cached embeddings; finetune: the backbone, weak/strong views (default: pseudolabel.mode)."),
    abstain: Optional[bool] = typer.Option(
        None, "--abstain/--no-abstain",
        help="Write nothing when, K-fold on the labeled samples, the pseudo-labels do not help (default: pseudolabel.abstain)."),
    metadata: Optional[str] = typer.Option(None, help="auto | none: combine the teacher with a date/place prior when "
                                           "the samples have dates or places (default: models.metadata)."),
    accept: bool = typer.Option(False, help="Accept the current pseudo-labels as labels (a curator's decision)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Pseudo-labels for the unlabeled split (EMA teacher, threshold, pseudo mixup), kept apart from labels."""
    from fieldguide.curation.pseudolabel import accept_pseudo_labels, pseudolabel

    project = _project()
    if accept:
        n = accept_pseudo_labels(project)
        _echo_json({"accepted": n}) if as_json else typer.echo(f"accepted {n} pseudo-labels (label_history: source pseudo)")
        return
    report = pseudolabel(project, threshold=threshold, ema_decay=ema_decay, mu=mu, lambda_u=lambda_u,
                         epochs=epochs, balance=balance, mode=mode, abstain=abstain, metadata=metadata)
    if as_json:
        _echo_json(report.as_dict())
        return
    if report.abstained:
        typer.echo(f"pseudolabel abstained, nothing written: {report.reason} (--no-abstain writes them anyway)")
        return
    if report.reason:
        typer.echo(report.reason)
    typer.echo(f"{report.selected} pseudo-labels for {report.unlabeled} unlabeled samples "
               f"(threshold {report.threshold}, {report.labeled} labeled); review: fieldguide app --view pseudo_labeled")


def augment_cmd(
    min_per_class: Optional[int] = typer.Option(None, help="Augment classes with fewer training samples (default: curation.scarce_class_count)."),
    cls: Optional[list[str]] = typer.Option(None, "--class", help="Augment these classes (repeatable) instead."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Diffusion augmentation of scarce classes (ControlNet on Canny edges, filtered); needs augment.model_dir."""
    from fieldguide.curation.augment import augment

    report = augment(_project(), classes=cls or None, min_per_class=min_per_class)
    if as_json:
        _echo_json(report.as_dict())
        return
    for name, f in report.classes.items():
        typer.echo(f"{name}: generated {f.generated}, kept {f.kept}, rejected {f.rejected_semantic} (semantic) "
                   f"+ {f.rejected_classifier} (classifier)")
    typer.echo(f"kept {report.kept} synthetic images (view: synthetic); run 'fieldguide embed' to use them in training")


def fill_cmd(
    min_per_class: Optional[int] = typer.Option(
        None, help="Fill classes with fewer labeled training samples than this (default: curation.scarce_class_count)."),
    threshold: Optional[float] = typer.Option(
        None, help="Pseudo-label confidence threshold (default: pseudolabel.threshold)."),
) -> None:
    """Fill scarce classes: pseudo-labels from the unlabeled split and diffusion augmentation, per class."""
    from fieldguide.curation.fill import fill

    for line in fill(_project(), min_per_class=min_per_class, threshold=threshold):
        typer.echo(line)


def flag_cmd(
    backbone: Optional[str] = typer.Option(None, help="Whose embeddings (default: models.backbone)."),
    include_test: bool = typer.Option(False, "--include-test",
                                      help="Queue flagged test samples for review too (relabeling them moves "
                                           "the evaluation baseline; evaluate reports which changed)."),
    unknown: int = typer.Option(0, "--unknown", min=0,
                                help="Also queue the N samples most likely of a species no class covers "
                                     "(highest unknown_score from predict; review_reason 'unknown')."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Label-issue signals, one noise score and the review queue (saved views to_review, outliers, ...)."""
    from fieldguide.curation.flag import flag

    report = flag(_project(), backbone=backbone, include_test=include_test, unknown=unknown)
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"assessed {report.assessed}, not assessable {report.not_assessable}, flagged {report.flagged}, "
               f"outliers {report.outliers}, near-duplicates {report.near_duplicates}")
    for reason, n in report.not_assessable_reasons.items():
        typer.echo(f"  not assessable ({reason}): {n}")
    typer.echo(f"signals: {', '.join(report.signals) or 'none'}")
    typer.echo(f"review queue {report.queued}" + (f" ({report.unknown_queued} likely unknown species)"
                                                  if report.unknown_queued else "")
               + (f"; left out: {report.kept_decided} a curator already decided"
                                                  if report.kept_decided else "")
               + (f"; {report.test_left_out} test samples (--include-test queues them)" if report.test_left_out else ""))
    for row in report.top:
        typer.echo(f"  {row['noise_score']:.3f}  given {row['label']}  predicted {row['predicted']}  {row['filepath']}")
    if report.flagged:
        typer.echo("open the queue: fieldguide app --view to_review")


@signals_app.command("export")
def signals_export(
    out: Path = typer.Argument(..., help="The CSV file to write."),
    run: Optional[str] = typer.Option(None, help="A flag run id (default: the latest)."),
) -> None:
    """One row per sample: sample_id, filepath, split, label, label_source, review_state, predicted_label,
    noise_score, label_issue, near_duplicate_of, consensus_label, then every signal of the flag run."""
    from fieldguide.curation.export import export_signals

    path, rows = export_signals(_project(), out, run_id=run)
    typer.echo(f"wrote {rows} rows to {path}")


@bench_app.command("noise")
def bench_noise(
    rates: str = typer.Option("0.1,0.2,0.4", help="Comma-separated noise rates."),
    kinds: str = typer.Option("symmetric,pairs", help="symmetric and/or pairs (confusable classes)."),
    seed: int = typer.Option(0, help="Seed of the injected noise."),
    head: Optional[str] = typer.Option(None, help="Head for the out-of-sample pred_probs (default: predict.head)."),
    folds: Optional[int] = typer.Option(None, help="K of the K-fold (default: predict.folds)."),
    backbone: Optional[str] = typer.Option(None, help="Whose embeddings (default: models.backbone)."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON records."),
) -> None:
    """Inject label noise into your (clean) labels and score how well each signal finds it."""
    from fieldguide.curation.noise_bench import project_noise_benchmark

    try:
        rate_list = tuple(float(r) for r in rates.split(",") if r.strip())
    except ValueError:
        raise typer.BadParameter(f"--rates {rates!r}: use numbers like 0.1,0.2") from None
    table, path = project_noise_benchmark(
        _project(), rates=rate_list, kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        seed=seed, head=head, folds=folds, backbone=backbone,
    )
    if as_json:
        _echo_json(table.to_dict("records"))
        return
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"table: {path}")


@bench_app.command("suite")
def bench_suite(
    collections: Optional[str] = typer.Option(
        None, help="Bundled collections, comma-separated (default: all of cub100, inat-plants-dev, flowers12, "
                   "unless --collection is given)."),
    collection: Optional[list[str]] = typer.Option(
        None, "--collection", help="Another collection NAME=PATH[:FORMAT] (FORMAT as ingest's; default folder); repeatable."),
    quick: bool = typer.Option(False, "--quick", help="One noise rate, one k, fewer steps (a smoke test)."),
    data: Path = typer.Option(Path("../shared/data"), help="Folder of the bundled collections."),
    cache: Path = typer.Option(Path("benchmarks/.cache"), help="One project per collection (embeddings cached)."),
    results: Optional[Path] = typer.Option(
        None, help="Folder for suite_<family>.csv (default benchmarks/results; --quick: CACHE/results-quick)."),
    backbone: Optional[str] = typer.Option(None, help="Backbone of the embeddings (default: models.backbone's default)."),
    weights: Optional[str] = typer.Option(None, help="Local weights file or folder for --backbone."),
    families: Optional[str] = typer.Option(
        None, help="Families to run, comma-separated (default: all of heads, noise, train, pseudolabel)."),
) -> None:
    """Every default of the project against its plain baseline, per collection, side by side (✗: the default loses)."""
    from rich.console import Console

    from fieldguide.platform.warehouse import Warehouse
    from fieldguide.suite import FAMILIES, Plan, parse_collection, render, resolve_collections, run_suite, side_by_side

    chosen = resolve_collections(data, collections, [parse_collection(c) for c in collection or []])
    project = _bench_project()
    out = run_suite(chosen, cache=cache, results=results or (cache / "results-quick" if quick else
                                                              Path("benchmarks/results")),
                    plan=Plan.quick() if quick else Plan(), backbone=backbone, weights=weights,
                    families=[f.strip() for f in families.split(",")] if families else FAMILIES,
                    warehouse=Warehouse(project.warehouse_path) if project else None)
    console = Console(width=None if sys.stdout.isatty() else 220)  # a log or a pipe: no folded columns
    for family in out.tables:
        console.print(render(side_by_side(out.tables[family]), f"{family} ({out.paths[family]})"))
    for name, secs in out.seconds.items():
        classes, n_train, n_test = out.sizes[name]
        typer.echo(f"{name}: {classes} classes, {n_train} train / {n_test} test (split: {out.splits[name]}), {secs:.0f} s")
    typer.echo(f"recorded in {project.warehouse_path} (the dashboards' Benchmarks page)" if project else
               "not recorded in a warehouse (no project here: --project DIR records the results there)")


@bench_app.command("backbones")
def bench_backbones_cmd(
    backbones: Optional[str] = typer.Option(
        None, help="Backbones, comma-separated, each NAME or NAME=WEIGHTS (a local file or folder); "
                   "default: models.backbone."),
    head: str = typer.Option("logreg", help="Head fit on each backbone's train embeddings."),
    knn_k: int = typer.Option(1, help="k of the kNN top-1 (cosine)."),
    steps: int = typer.Option(5, help="Fine-tuning steps of the gradient activity (0: none)."),
    batch_size: int = typer.Option(8, help="Images per fine-tuning step."),
    cost_batch_size: int = typer.Option(16, help="Images per batch of the speed and memory measurement."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: models.device)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Each backbone on your data: accuracy (per class, per taxonomy group), embedding quality, cost, gradient activity."""
    from fieldguide.models.backbone_bench import bench_backbones, results_table
    from fieldguide.suite import table_split

    project = _project()
    results, plots = bench_backbones(project, [b for b in (backbones or "").split(",") if b.strip()] or None,
                                     head=head, knn_k=knn_k, steps=steps, grad_batch_size=batch_size,
                                     cost_batch_size=cost_batch_size, device=device,
                                     split_fn=table_split, progress=not as_json)
    if as_json:
        _echo_json({"backbones": [r.as_dict() for r in results], "plots": [str(p) for p in plots]})
        return
    typer.echo(results_table(results).to_string(float_format=lambda v: f"{v:.4g}"))
    for p in plots:
        typer.echo(f"plot: {p}")
    typer.echo(f"recorded {len(results)} bench_backbone run(s) in {project.warehouse_path} (dashboards: Backbones)")


def _bench_project():
    """The project a benchmark records in: the one ``--project`` / ``FIELDGUIDE_PROJECT`` names, else
    the current folder when it is a project, else None (the benchmark writes its CSVs only)."""
    from fieldguide.cli.common import state
    from fieldguide.config import CONFIG_NAME

    if state.project_dir is None and not (Path.cwd() / CONFIG_NAME).is_file():
        return None
    return _project()
