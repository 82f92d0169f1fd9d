"""``fieldguide`` verbs on the project itself: init, ingest, status, app, export, demo, dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fieldguide.cli.common import echo_json as _echo_json, project as _project


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


def taxonomy(
    path: Path = typer.Argument(..., help="CSV with a 'class' column and one column per rank above it "
                                "(class,genus,family,...)."),
    label_rank: str = typer.Option("species", "--label-rank", help="The rank of the classes themselves."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Add (or replace) the classes' ranks from a taxonomy CSV: the class tree of evaluate and predict."""
    from fieldguide.platform.taxa import load_taxonomy

    info = load_taxonomy(_project(), path, label_rank=label_rank)
    if as_json:
        _echo_json(info)
        return
    typer.echo(f"{info['classes']} classes with ranks {', '.join(info['ranks']) or 'none'}")
    for line in info["conflicts"]:
        typer.echo(f"note: {line}")


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


def app_cmd(
    port: Optional[int] = typer.Option(None, help="Port for the App server (default: app.port)."),
    view: Optional[str] = typer.Option(None, help="A saved view to open, e.g. to_review."),
    address: str = typer.Option("127.0.0.1", help="Address to bind."),
    orchestrator: bool = typer.Option(True, help="Run 'fiftyone delegated launch' beside the App (retrain)."),
) -> None:
    """Serve the FiftyOne App on the project's dataset, with the @fieldguide/curator plugin."""
    from fieldguide.platform.app import launch_app

    project = _project()
    port = project.config.app.port if port is None else port
    typer.echo(f"FiftyOne App: http://{address}:{port}/  (Ctrl-C to stop)")
    launch_app(project, port=port, address=address, view=view, orchestrator=orchestrator)


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


def demo(
    directory: Path = typer.Argument(Path("demo-project"), help="Folder for the demo project."),
    data: Path = typer.Option(Path("../shared/data/cub100"), help="The CUB-style data to ingest."),
    labelstudio: bool = typer.Option(True, help="Start Label Studio and push the top of the review queue."),
    push_limit: int = typer.Option(20, help="How many flagged samples to push to Label Studio."),
) -> None:
    """The main job: a project on cub100 through every step of the loop, then a summary."""
    from fieldguide.demo import run_demo

    run_demo(directory, data, echo=typer.echo, labelstudio=labelstudio, push_limit=push_limit)


def dashboard(port: Optional[int] = typer.Option(
        None, help="Port for the Streamlit server on 127.0.0.1 (default: dashboards.port).")) -> None:
    """Serve the Streamlit dashboards on the project's warehouse (read-only)."""
    from fieldguide.dashboards.server import serve, url

    project = _project()
    port = project.config.dashboards.port if port is None else port
    typer.echo(f"dashboards: {url(port)}  (Ctrl-C to stop)")
    serve(project, port)
