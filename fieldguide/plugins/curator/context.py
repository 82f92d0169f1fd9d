"""What every @fieldguide/curator operator and panel reads from the App's context, and how they
keep the App current after a change.

FiftyOne loads the plugin's ``__init__.py`` as a standalone module, so its siblings are imported
by their absolute names (``fieldguide.plugins.curator.context``).

Keeping the App current: an operator that changed the store reloads the view it changed (the grid
and the modal show the new labels and the queue) and asks every open fieldguide panel to refresh.
A panel records its id in the dataset's execution store when it loads (and forgets it when it
unloads); :func:`refresh_panels` triggers each recorded panel's ``refresh`` method in the App.
"""

from __future__ import annotations

import os

import fiftyone.operators as foo

PLUGIN = "@fieldguide/curator"
PANELS_STORE = "fieldguide_panels"
#: a panel's record lasts this long without a refresh (a closed browser never unloads its panels)
PANEL_TTL_S = 7 * 24 * 3600


def project_of(ctx):
    """The project whose dataset is open (``dataset.info["fieldguide_project"]``), else ``FIELDGUIDE_PROJECT``."""
    from fieldguide.config import PROJECT_ENV, open_project

    root = (ctx.dataset.info or {}).get("fieldguide_project") if ctx.dataset is not None else None
    return open_project(root or os.environ.get(PROJECT_ENV))


def settings_of(ctx):
    """The project's configuration, for the forms' defaults (the sections' defaults when no project opens)."""
    from fieldguide.config.sections import Config, ProjectSection
    from fieldguide.errors import FieldguideError

    try:
        return project_of(ctx).config
    except FieldguideError:
        return Config(project=ProjectSection(name="unknown"))


def target_ids(ctx) -> list[str]:
    """The selected samples, else the current view's."""
    if ctx.selected:
        return list(ctx.selected)
    return ctx.target_view().values("id") if hasattr(ctx, "target_view") else ctx.view.values("id")


def decided_ids(ctx) -> list[str]:
    """The samples a decision is about: ``sample_ids`` (a panel's button), else the selected
    samples, else the open one."""
    ids = ctx.params.get("sample_ids") or list(ctx.selected or [])
    return list(ids) or ([ctx.current_sample] if ctx.current_sample else [])


def remember_panel(ctx, name: str) -> None:
    """Record the open panel ``ctx.panel_id`` (a panel named ``name``) for :func:`refresh_panels`."""
    if ctx.panel_id and ctx.dataset is not None:
        ctx.store(PANELS_STORE).set(ctx.panel_id, name, ttl=PANEL_TTL_S)


def forget_panel(ctx) -> None:
    if ctx.panel_id and ctx.dataset is not None:
        ctx.store(PANELS_STORE).delete(ctx.panel_id)


def refresh_panels(ctx) -> list[str]:
    """Trigger ``refresh`` on every open fieldguide panel; returns the ids of the panels.

    The App sends a triggered ``uri#method`` to the server as it is (and the server knows no such
    operator), so the method goes in ``__method__``, as the App does for a panel's own events."""
    if ctx.delegated or ctx.dataset is None:
        return []
    panels = ctx.store(PANELS_STORE)
    refreshed = []
    for panel_id in panels.list_keys():
        name = panels.get(panel_id)
        if name:
            ctx.trigger(f"{PLUGIN}/{name}", params={"panel_id": panel_id, "__method__": "refresh"})
            refreshed.append(panel_id)
    return refreshed


def show_changes(ctx, *, view: str | None = None) -> None:
    """After a change to the store: load the saved ``view`` (else reload the current one) so the
    grid and the modal show it, and refresh the open fieldguide panels."""
    if ctx.delegated:
        return
    if view is not None:
        ctx.ops.set_view(name=view)
    else:
        ctx.ops.reload_dataset()  # the view: a decided sample leaves the to_review queue
    ctx.ops.reload_samples()  # the grid's and the modal's labels
    refresh_panels(ctx)


class FieldguideOperator(foo.Operator):
    """Turns a fieldguide error into one clear line in the App."""

    def execute(self, ctx):
        from fieldguide.errors import FieldguideError

        try:
            return self.run(ctx)
        except FieldguideError as e:
            raise RuntimeError(f"fieldguide: {e}") from None

    def run(self, ctx):  # pragma: no cover - every subclass defines it
        raise NotImplementedError
