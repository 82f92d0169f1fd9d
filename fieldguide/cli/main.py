"""The ``fieldguide`` command: the Typer app, its global options, and every verb in ``--help`` order.

The verbs live in modules per group (:mod:`~fieldguide.cli.project`, :mod:`~fieldguide.cli.models`,
:mod:`~fieldguide.cli.curation`, :mod:`~fieldguide.cli.labelstudio`, :mod:`~fieldguide.cli.review`); this module registers them.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer
from typer.core import TyperGroup

from fieldguide.cli import curation, labelstudio, models, project, review
from fieldguide.cli.common import state
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

# (name, verb) in the order ``fieldguide --help`` lists them
COMMANDS = (
    ("init", project.init),
    ("ingest", project.ingest),
    ("taxonomy", project.taxonomy),
    ("status", project.status),
    ("app", project.app_cmd),
    ("embed", models.embed),
    ("predict", models.predict),
    ("evaluate", models.evaluate),
    ("train", models.train_cmd),
    ("retrain", models.retrain_cmd),
    ("distill", models.distill_cmd),
    ("loop", models.loop_cmd),
    ("pseudolabel", curation.pseudolabel_cmd),
    ("augment", curation.augment_cmd),
    ("fill", curation.fill_cmd),
    ("flag", curation.flag_cmd),
    ("export", project.export_cmd),
    ("demo", project.demo),
    ("dashboard", project.dashboard),
)
GROUPS = (
    ("signals", curation.signals_app),
    ("bench", curation.bench_app),
    ("labelstudio", labelstudio.labelstudio_app),
    ("relabel", labelstudio.relabel_app),
    ("review", review.review_app),
)
for _name, _verb in COMMANDS:
    app.command(_name)(_verb)
for _name, _group in GROUPS:
    app.add_typer(_group, name=_name)


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
