"""What every page needs: the project, its warehouse, and what to run next when it is empty."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from fieldguide.config import Project, open_project, project_dir_from
from fieldguide.dashboards import queries
from fieldguide.errors import FieldguideError
from fieldguide.platform.warehouse import Warehouse

# the loop's steps in order: (run kind, CLI arguments, what it gives)
STEPS: tuple[tuple[str, str, str], ...] = (
    ("ingest", "ingest IMAGES_DIR", "images and labels in the store"),
    ("embed", "embed", "embeddings from the backbone"),
    ("predict", "predict", "out-of-sample predictions from K-fold heads"),
    ("flag", "flag", "label-issue signals and the to_review view"),
    ("evaluate", "evaluate", "accuracy, macro-F1 and cost per run"),
)


@dataclass(frozen=True)
class Context:
    project: Project
    warehouse: Warehouse

    @property
    def root(self) -> Path:
        return self.project.root

    def command(self, args: str) -> str:
        """The full CLI command for ``args``, e.g. ``fieldguide --project DIR flag``."""
        return f"fieldguide --project {shlex.quote(str(self.root))} {args}"


def current() -> Context:
    """The project the dashboard serves (``FIELDGUIDE_PROJECT``); stops the page with the fix if none."""
    try:
        project = open_project(project_dir_from(None))
    except FieldguideError as e:
        st.error(f"{e}")
        st.code("fieldguide --project DIR dashboard", language="bash")
        st.stop()
    return Context(project, Warehouse(project.warehouse_path))


def next_step(done: set[str]) -> tuple[str, str, str] | None:
    """The first step of the loop that has not completed yet (kind, CLI arguments, what it gives)."""
    for step in STEPS:
        if step[0] not in done:
            return step
    return None


def show_empty(ctx: Context, message: str, kind: str) -> None:
    """An empty state: what is missing and the command that fills it (the loop's next step first)."""
    st.info(message)
    steps = {s[0]: s for s in STEPS}
    todo = next_step(queries.completed_kinds(ctx.warehouse))
    wanted = steps.get(kind)
    if todo is not None and (wanted is None or STEPS.index(todo) < STEPS.index(wanted)):
        st.markdown(f"Next step of the loop: **{todo[0]}** ({todo[2]}).")
        st.code(ctx.command(todo[1]), language="bash")
    if wanted is not None:
        st.markdown(f"This page fills in after **{wanted[0]}** ({wanted[2]}):")
        st.code(ctx.command(wanted[1]), language="bash")
    elif kind:
        st.code(ctx.command(kind), language="bash")
