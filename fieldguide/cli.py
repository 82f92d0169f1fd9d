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
) -> None:
    """Create a project: DIR/fieldguide.toml (kept as is if it exists)."""
    from fieldguide.config import init_project

    project = init_project(directory, name)
    typer.echo(f"project {project.config.project.name} at {project.root}")


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="A folder, a CUB folder or a CSV manifest."),
    fmt: str = typer.Option("folder", "--format", "-f", help="folder | cub | csv"),
    filepath_column: str = typer.Option("filepath", help="CSV column with the image path."),
    label_column: str = typer.Option("label", help="CSV column with the label."),
    root: Optional[Path] = typer.Option(None, help="Images must lie under this folder (default: the source's)."),
    votes: Optional[Path] = typer.Option(None, help="CSV of crowd votes: filepath, annotator, label[, time]."),
    strict: bool = typer.Option(False, help="Any reject is an error and nothing is ingested."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Add images and their labels to the project's store (re-running adds nothing twice)."""
    from fieldguide.platform.ingest import ingest as run_ingest

    report = run_ingest(
        _project(), source, fmt=fmt, filepath_column=filepath_column, label_column=label_column,
        root=root, votes=votes, strict=strict,
    )
    if as_json:
        _echo_json(report.as_dict())
        return
    typer.echo(
        f"added {report.added}, already in the store {report.existing}, rejected {len(report.rejects)}"
        + (f", votes {report.votes_added}" if votes else "")
    )
    for r in report.rejects[:10]:
        typer.echo(f"  rejected {r.path}: {r.reason}")
    if len(report.rejects) > 10:
        typer.echo(f"  ... {len(report.rejects) - 10} more")
    if report.rejects:
        typer.echo(f"rejects report: {report.rejects_path}")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Samples per split, class and origin; rejects; recent runs."""
    from fieldguide.platform.status import project_status

    info = project_status(_project())
    if as_json:
        _echo_json(info)
        return
    typer.echo(f"project  {info['project']}\ndataset  {info['dataset']}")
    typer.echo(f"samples  {info['samples']}   classes {info['classes']}   rejects (last ingest) {info['rejects']}")
    typer.echo("splits   " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    typer.echo("origins  " + ", ".join(f"{k} {v}" for k, v in info["origins"].items()))
    for run in info["runs"][:5]:
        typer.echo(f"run      {run['run_id']}  {run['status']}")


@app.command("app")
def app_cmd(
    port: int = typer.Option(5151, help="Port for the App server."),
    view: Optional[str] = typer.Option(None, help="A saved view to open, e.g. to_review."),
    address: str = typer.Option("127.0.0.1", help="Address to bind."),
) -> None:
    """Serve the FiftyOne App on the project's dataset."""
    from fieldguide.platform.app import launch_app

    project = _project()
    typer.echo(f"FiftyOne App: http://{address}:{port}/  (Ctrl-C to stop)")
    launch_app(project, port=port, address=address, view=view)


@app.command()
def demo(
    directory: Path = typer.Argument(Path("demo-project"), help="Folder for the demo project."),
    data: Path = typer.Option(Path("../shared/data/cub100"), help="The CUB-style data to ingest."),
) -> None:
    """The main job: a project on cub100 through every step of the loop, then a summary."""
    from fieldguide.demo import run_demo

    run_demo(directory, data, echo=typer.echo)


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
