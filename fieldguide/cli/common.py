"""What every verb of the ``fieldguide`` command shares: the project the global options name, and
JSON output for scripts."""

from __future__ import annotations

import json
from typing import Optional

import typer


class State:
    """The global options, set by the command's callback before a verb runs."""

    project_dir: Optional[str] = None


state = State()


def project():
    """The project of ``--project`` / ``FIELDGUIDE_PROJECT`` / the current folder, its file read once."""
    from fieldguide.config import open_project

    return open_project(state.project_dir)


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))
