"""The ``fieldguide`` command: one verb per step of the loop.

Each verb parses its options and calls one function of ``platform``, ``models`` or
``curation``; heavy imports happen inside the verbs, so ``fieldguide --help`` is instant.
Expected failures (:class:`FieldguideError`) print one line and exit 1.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from typer.core import TyperGroup

from fieldguide.errors import FieldguideError


class _Group(TyperGroup):
    """Expected errors print one line and exit 1, in the console and under CliRunner alike."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FieldguideError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="fieldguide",
    help="Data-centric labeling and curation for fine-grained visual classification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
signals_app = typer.Typer(help="Export and inspect label-issue signals.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks you can run on your own data.", no_args_is_help=True)
app.add_typer(signals_app, name="signals")
app.add_typer(bench_app, name="bench")


class _State:
    project_dir: Optional[str] = None


state = _State()


def _project():
    from fieldguide.config import open_project

    return open_project(state.project_dir)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.callback()
def main(
    project: Optional[str] = typer.Option(
        None, "--project", "-p", envvar="FIELDGUIDE_PROJECT",
        help="Project folder (default: the current folder).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs."),
) -> None:
    state.project_dir = project
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Folder to create the project in."),
    name: Optional[str] = typer.Option(None, help="Project name (default: the folder's name)."),
    new_id: bool = typer.Option(False, "--new-id", help="A copied project: give it an identity of its own "
                                "(its dataset is renamed; needed when copies share one database_uri)."),
) -> None:
    """Create a project: DIR/fieldguide.toml (kept as is if it exists)."""
    from fieldguide.config import init_project

    project = init_project(directory, name)
    if new_id:
        from fieldguide.platform.store import renew_identity

        old, new = renew_identity(project)
        typer.echo(f"project id {old} -> {new}")
    typer.echo(f"project {project.config.project.name} at {project.root}")


@app.command()
def ingest(
    source: Path = typer.Argument(
        ..., help="A folder, a CUB folder, a CSV manifest, an iNaturalist export (CSV) or a Darwin Core Archive."),
    fmt: str = typer.Option("folder", "--format", "-f", help="folder | cub | csv | inat | dwca"),
    filepath_column: str = typer.Option("filepath", help="CSV column with the image path."),
    label_column: str = typer.Option("label", help="CSV column with the label."),
    root: Optional[Path] = typer.Option(
        None, help="Relative paths in a CSV (manifest, votes) resolve against DIR (default: that CSV's folder)."),
    images: Optional[Path] = typer.Option(
        None, help="inat, dwca: folder of the photos, each named <id> or <id>_<k> after its observation "
                   "(default: the source's folder)."),
    label_rank: Optional[str] = typer.Option(
        None, "--label-rank", help="inat, dwca: the rank that is the label (species, genus, family, ...; default: "
                                   "the scientific name). csv with --ranks: the label column's rank (default species)."),
    ranks: Optional[str] = typer.Option(
        None, help="csv: the columns holding the ranks above the label, coarse to fine, e.g. family,genus."),
    votes: Optional[Path] = typer.Option(None, help="CSV of crowd votes: filepath, annotator, label[, time]."),
    strict: bool = typer.Option(False, help="Any reject is an error and nothing is ingested."),
    fold_case: bool = typer.Option(
        False, "--fold-case",
        help="Class names that differ only in case become one class (the store's spelling, else the first seen).",
    ),
    update_labels: bool = typer.Option(
        False, "--update-labels",
        help="Files already in the store take the source's label (recorded in their label history).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Add images and their labels to the project's store (re-running adds nothing twice)."""
    from fieldguide.platform.ingest import ingest as run_ingest

    report = run_ingest(
        _project(), source, fmt=fmt, filepath_column=filepath_column, label_column=label_column,
        root=root, images=images, label_rank=label_rank, ranks=ranks.split(",") if ranks else None,
        votes=votes, strict=strict, fold_case=fold_case, update_labels=update_labels,
    )
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(
        f"added {report.added}, already in the store {report.existing}, rejected {len(report.rejects)}"
        + (f", notices {len(report.notices)}" if report.notices else "")
        + (f", labels updated {report.labels_updated}" if update_labels else "")
        + (f", votes {report.votes_added}" if votes else "")
    )
    for kind, entries in (("rejected", report.rejects), ("notice", report.notices)):
        for r in entries[:10]:
            typer.echo(f"  {kind} {r.path}: {r.reason}")
        if len(entries) > 10:
            typer.echo(f"  ... {len(entries) - 10} more")
    if report.rejects or report.notices:
        typer.echo(f"rejects report: {report.rejects_path}")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Samples per split, class and origin; taxonomic ranks; rejects; recent runs."""
    from fieldguide.platform.status import project_status

    info = project_status(_project())
    if as_json:
        _echo_json(info)
        return
    typer.echo(f"project  {info['project']}\ndataset  {info['dataset']}")
    typer.echo(f"samples  {info['samples']}   classes {info['classes']}   label changes {info['label_changes']}   "
               f"rejects (last ingest) {info['rejects']}")
    typer.echo("splits   " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    typer.echo("origins  " + ", ".join(f"{k} {v}" for k, v in info["origins"].items()))
    if info.get("ranks"):
        typer.echo("ranks    " + ", ".join(f"{k} {v}" for k, v in info["ranks"].items()))
    for run in info["runs"][:5]:
        typer.echo(f"run      {run['run_id']}  {run['status']}")


@app.command("app")
def app_cmd(
    port: int = typer.Option(5151, help="Port for the App server."),
    view: Optional[str] = typer.Option(None, help="A saved view to open, e.g. to_review."),
    address: str = typer.Option("127.0.0.1", help="Address to bind."),
    orchestrator: bool = typer.Option(True, help="Run 'fiftyone delegated launch' beside the App (retrain)."),
) -> None:
    """Serve the FiftyOne App on the project's dataset, with the @fieldguide/curator plugin."""
    from fieldguide.platform.app import launch_app

    project = _project()
    typer.echo(f"FiftyOne App: http://{address}:{port}/  (Ctrl-C to stop)")
    launch_app(project, port=port, address=address, view=view, orchestrator=orchestrator)


@app.command()
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


@app.command()
def predict(
    head: Optional[str] = typer.Option(None, help="logreg | mlp | knn | ensemble (default: predict.head)."),
    folds: Optional[int] = typer.Option(None, help="K for the stratified K-fold (default: predict.folds)."),
    backbone: Optional[str] = typer.Option(None, help="Whose embeddings (default: models.backbone)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Out-of-sample predictions for every sample (K-fold for labeled training samples)."""
    from fieldguide.models.predict import predict as run_predict

    report = run_predict(_project(), head=head, folds=folds, backbone=backbone)
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"{report.head}: {report.n_cross_validated} samples by {report.folds}-fold "
               f"(out-of-fold top-1 {report.oof_top1:.3f}), {report.n_fit_all} by a head fit on all of them")


@app.command()
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


@app.command("train")
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


@app.command("retrain")
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


@app.command("loop")
def loop_cmd(
    force: bool = typer.Option(False, help="Run every step even when its inputs did not change."),
    push_limit: Optional[int] = typer.Option(None, help="Push at most N flagged samples to Label Studio."),
) -> None:
    """One turn of the loop: embed, predict, flag, relabel push/pull, retrain, evaluate (unchanged steps skipped)."""
    from fieldguide.loop import run_loop

    run_loop(_project(), echo=typer.echo, force=force, push_limit=push_limit)


@app.command("pseudolabel")
def pseudolabel_cmd(
    threshold: float = typer.Option(0.7, help="Keep pseudo-labels with at least this confidence."),
    ema_decay: float = typer.Option(0.9999, help="EMA teacher decay per step (with warm-up)."),
    mu: int = typer.Option(3, help="Unlabeled samples per labeled sample in a batch."),
    lambda_u: float = typer.Option(1.0, help="Weight of the unlabeled loss."),
    epochs: int = typer.Option(40, help="Epochs."),
    balance: bool = typer.Option(True, help="Cap every class at the median count of pseudo-labels per class."),
    mode: str = typer.Option("head", help="head: on cached embeddings; finetune: the backbone, weak/strong views."),
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
                         epochs=epochs, balance=balance, mode=mode)
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"{report.selected} pseudo-labels for {report.unlabeled} unlabeled samples "
               f"(threshold {threshold}, {report.labeled} labeled); review: fieldguide app --view pseudo_labeled")


@app.command("augment")
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


@app.command("fill")
def fill_cmd(
    min_per_class: int = typer.Option(10, help="Fill classes with fewer labeled training samples than this."),
    threshold: float = typer.Option(0.7, help="Pseudo-label confidence threshold."),
) -> None:
    """Fill scarce classes: pseudo-labels from the unlabeled split and diffusion augmentation, per class."""
    from fieldguide.curation.fill import fill

    for line in fill(_project(), min_per_class=min_per_class, threshold=threshold):
        typer.echo(line)


@app.command("flag")
def flag_cmd(
    backbone: Optional[str] = typer.Option(None, help="Whose embeddings (default: models.backbone)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Label-issue signals, one noise score and the review queue (saved views to_review, outliers, ...)."""
    from fieldguide.curation.flag import flag

    report = flag(_project(), backbone=backbone)
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"assessed {report.assessed}, not assessable {report.not_assessable}, flagged {report.flagged}, "
               f"outliers {report.outliers}, near-duplicates {report.near_duplicates}")
    for reason, n in report.not_assessable_reasons.items():
        typer.echo(f"  not assessable ({reason}): {n}")
    typer.echo(f"signals: {', '.join(report.signals) or 'none'}")
    for row in report.top:
        typer.echo(f"  {row['noise_score']:.3f}  given {row['label']}  predicted {row['predicted']}  {row['filepath']}")
    if report.flagged:
        typer.echo("open the queue: fieldguide app --view to_review")


@signals_app.command("export")
def signals_export(
    out: Path = typer.Argument(..., help="The CSV file to write."),
    run: Optional[str] = typer.Option(None, help="A flag run id (default: the latest)."),
) -> None:
    """One row per sample: filepath, label, predicted_label, noise_score, label_issue, then each signal."""
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
) -> None:
    """Every default of the project against its plain baseline, per collection, side by side (✗: the default loses)."""
    from rich.console import Console

    from fieldguide.suite import FAMILIES, Plan, parse_collection, render, resolve_collections, run_suite, side_by_side

    chosen = resolve_collections(data, collections, [parse_collection(c) for c in collection or []])
    out = run_suite(chosen, cache=cache, results=results or (cache / "results-quick" if quick else
                                                              Path("benchmarks/results")),
                    plan=Plan.quick() if quick else Plan(), backbone=backbone, weights=weights)
    console = Console(width=None if sys.stdout.isatty() else 220)  # a log or a pipe: no folded columns
    for family in FAMILIES:
        console.print(render(side_by_side(out.tables[family]), f"{family} ({out.paths[family]})"))
    for name, secs in out.seconds.items():
        classes, n_train, n_test = out.sizes[name]
        typer.echo(f"{name}: {classes} classes, {n_train} train / {n_test} test (split: {out.splits[name]}), {secs:.0f} s")


@app.command("export")
def export_cmd(
    directory: Path = typer.Argument(..., help="Folder to write: new or empty (or an earlier export, with --overwrite)."),
    fmt: str = typer.Option(..., "--format", "-f", help="csv | imagenet | fiftyone | coco | dwca"),
    view: Optional[str] = typer.Option(None, help="Only the samples of this saved view (e.g. to_review)."),
    split: Optional[str] = typer.Option(None, help="Only this split: train | val | test | unlabeled."),
    copy: bool = typer.Option(False, "--copy", help="Copy the images (default: symlinks); imagenet, fiftyone, coco."),
    include_pseudo: bool = typer.Option(False, "--include-pseudo", help="Also labels that came from pseudo-labels."),
    include_synthetic: bool = typer.Option(False, "--include-synthetic", help="Also synthetic (generated) images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in DIRECTORY."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Export the current labels (origin, last change) as csv, ImageNet tree, FiftyOne, COCO or Darwin Core."""
    from fieldguide.platform.exports import export

    report = export(_project(), directory, fmt=fmt, view=view, split=split, copy=copy,
                    include_pseudo=include_pseudo, include_synthetic=include_synthetic, overwrite=overwrite)
    if as_json:
        _echo_json(report.as_dict())
        return
    what = f"{report.records} identifications of " if report.format == "dwca" else ""
    images = {"symlink": ", images symlinked", "copy": ", images copied"}.get(report.media, "")
    typer.echo(f"exported {what}{report.exported} samples ({report.format}{images}) to {report.directory}")
    hints = {"pseudo": " (--include-pseudo)", "synthetic": " (--include-synthetic)"}
    if report.left_out:
        typer.echo("left out: " + ", ".join(f"{n} {reason.replace('_', ' ')}{hints.get(reason, '')}"
                                            for reason, n in report.left_out.items()))


@app.command()
def demo(
    directory: Path = typer.Argument(Path("demo-project"), help="Folder for the demo project."),
    data: Path = typer.Option(Path("../shared/data/cub100"), help="The CUB-style data to ingest."),
    labelstudio: bool = typer.Option(True, help="Start Label Studio and push the top of the review queue."),
    push_limit: int = typer.Option(20, help="How many flagged samples to push to Label Studio."),
) -> None:
    """The main job: a project on cub100 through every step of the loop, then a summary."""
    from fieldguide.demo import run_demo

    run_demo(directory, data, echo=typer.echo, labelstudio=labelstudio, push_limit=push_limit)


@app.command()
def dashboard(port: int = typer.Option(8501, help="Port for the Streamlit server (on 127.0.0.1).")) -> None:
    """Serve the Streamlit dashboards on the project's warehouse (read-only)."""
    from fieldguide.dashboards.server import serve, url

    project = _project()
    typer.echo(f"dashboards: {url(port)}  (Ctrl-C to stop)")
    serve(project, port)


labelstudio_app = typer.Typer(help="The project's Label Studio server.", no_args_is_help=True)
relabel_app = typer.Typer(help="Send flagged samples to Label Studio and take the answers back.",
                          no_args_is_help=True)
app.add_typer(labelstudio_app, name="labelstudio")
app.add_typer(relabel_app, name="relabel")


@labelstudio_app.command("start")
def labelstudio_start(
    port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: labelstudio.port)."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for /health (the first start migrates)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Start the project's Label Studio (127.0.0.1, data under PROJECT/labelstudio)."""
    from fieldguide.platform.labelstudio_server import start

    info = start(_project(), port=port, timeout_s=timeout)
    if as_json:
        _echo_json(info.as_dict())
        return
    typer.echo(f"Label Studio running at {info.url} (pid {info.pid})")
    typer.echo(f"log in as {info.username}; password in {info.data_dir}/credentials.json")


@labelstudio_app.command("stop")
def labelstudio_stop() -> None:
    """Stop the project's Label Studio (its whole process group)."""
    from fieldguide.platform.labelstudio_server import stop

    typer.echo("Label Studio stopped" if stop(_project()) else "Label Studio was not running")


@labelstudio_app.command("status")
def labelstudio_status(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Is the project's Label Studio running, and where (the token is never shown)."""
    from fieldguide.platform.labelstudio_server import status as ls_status

    info = ls_status(_project())
    if as_json:
        _echo_json(info.as_dict())
        return
    typer.echo(f"Label Studio {'running' if info.running else 'stopped'}"
               + (f" at {info.url}" if info.url else "") + (f": {info.message}" if info.message else ""))
    if not info.running:
        raise typer.Exit(3)


@labelstudio_app.command("listen")
def labelstudio_listen(
    port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: labelstudio.webhook_port)."),
) -> None:
    """Receive Label Studio's annotation webhooks and pull each answered task (Ctrl-C stops)."""
    from fieldguide.platform.relabel import listen

    def show(task_ids, report):
        typer.echo(f"tasks {', '.join(map(str, task_ids))}: applied {report.applied} "
                   f"(changed {report.changed}, accepted {report.accepted}, unsure {report.unsure}, "
                   f"skipped {report.skipped})")
        for line in report.problems:
            typer.echo(f"  {line}")

    typer.echo("listening for Label Studio webhooks (Ctrl-C to stop)")
    listen(_project(), port=port, on_report=show)


@relabel_app.command("push")
def relabel_push(
    view: str = typer.Option("to_review", help="The saved view to push."),
    limit: Optional[int] = typer.Option(None, help="Push at most the first N samples of the view."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Send the samples of a saved view to Label Studio (a sample never gets two tasks)."""
    from fieldguide.platform.relabel import push

    report = push(_project(), view=view, limit=limit)
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"pushed {report.pushed}, already pushed {report.already_pushed} "
               f"(Label Studio project {report.project_id} at {report.url})")


@relabel_app.command("pull")
def relabel_pull(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Apply the curators' answers from Label Studio (re-running applies nothing twice)."""
    from fieldguide.platform.relabel import pull

    report = pull(_project())
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(f"applied {report.applied}: changed {report.changed}, accepted {report.accepted}, "
               f"unsure {report.unsure}, skipped {report.skipped}; waiting {report.pending}, "
               f"already applied {report.unchanged}")
    for line in report.problems:
        typer.echo(f"  {line}")


def run() -> None:
    """Console entry point: expected errors in one line, exit 1."""
    try:
        app()
    except FieldguideError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
