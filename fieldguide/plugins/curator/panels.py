"""The @fieldguide/curator panels: the current sample's card and the project's review counts.

Their data comes from :mod:`fieldguide.platform.panels`; here it becomes markdown. A panel's
state holds that data (``card``, ``counts``) and its markdown views are named ``md_*``: FiftyOne
shows the state value of a view's name in place of the view's own text, so a view named like a
state key holding a dict would render ``[object Object]``.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fieldguide.names import REVIEW_STATES as STATES
from fieldguide.plugins.curator.context import PLUGIN, forget_panel, project_of, remember_panel


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) >= 1 else f"{v:.3f}"
    return str(v).replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)]


def sample_markdown(card: dict) -> str:
    """A sample's card (:func:`fieldguide.platform.panels.sample_card`) as markdown."""
    pred = card["predicted"]
    conf = f", {card['confidence']:.2f}" if card.get("confidence") is not None else ""
    lines = [f"**{card['label'] or 'no label'}**", "",
             f"predicted **{pred}**{conf}" if pred else "no prediction yet", "",
             *_backoff_lines(card),
             f"**review** {card['review_state'] or 'not flagged'} · **noise score** {_cell(card['noise_score'])}"
             f" · **tags** {', '.join(card['tags']) or '—'}", ""]
    task = card["task"]
    if task is None:
        lines.append("**Label Studio** not pushed")
    else:
        link = f" · [open task {task['task_id']} in Label Studio]({task['url']})" if task["url"] else ""
        lines.append(f"**Label Studio** task {task['task_id']} · **{task['status']}** · pushed {task['pushed']}"
                     + (f" · answered {task['answered']}" if task["answered"] else "") + link)
    lines += ["", "**Label history**", ""]
    if card["history"]:
        lines += _table(["old → new", "source", "actor", "time", "run"],
                        [[f"{h['old'] or '—'} → {h['new']}", h["source"], h["actor"], h["time"], h["run_id"]]
                         for h in reversed(card["history"])])
    else:
        lines.append("no change since ingest")
    lines += ["", "**Votes**", ""]
    lines.append(" · ".join(f"{v['annotator'] or '?'}: {v['label']}" for v in card["votes"]) or "no crowd votes")
    lines += ["", "**Signals**", ""]
    signals = {k: v for k, v in card["signals"].items() if k != "noise_score"}
    lines += _table(["signal", "value"], [[k, v] for k, v in signals.items()]) if signals else ["no signals yet"]
    return "\n".join(lines)


def _backoff_lines(card: dict) -> list[str]:
    """The back-off answer (when it is coarser than the prediction) and the unknown-species score."""
    b, unknown = card.get("backoff"), card.get("unknown_score")
    parts = []
    if b and b["label"] != card["predicted"]:
        parts.append(f"sure at the {b['rank']}: **{b['label']}**, {b['confidence']:.2f}")
    parts += [f"unknown species score {unknown:.2f}"] if unknown is not None else []
    return [" · ".join(parts), ""] if parts else []


def project_markdown(counts: dict) -> str:
    """The project's counts (:func:`fieldguide.platform.panels.project_counts`) as markdown."""
    review = counts["review"]
    lines = ["**Review**", "", *_table([s.replace("_", " ") for s in STATES], [[review[s] for s in STATES]]),
             "", f"{counts['samples']} samples", "", "**Label Studio tasks**", ""]
    tasks = counts["tasks"]
    lines += _table(list(tasks), [list(tasks.values())]) if tasks else ["no task pushed yet"]
    if counts.get("labelstudio"):
        lines += ["", f"server: [{counts['labelstudio']}]({counts['labelstudio']})"]
    lines += ["", "**Last run**", ""]
    run = counts["last_run"]
    if run is None:
        lines.append("no training run yet")
    else:
        lines += [f"**{run['run_id']}** ({run['kind']}, finished {run['finished']})", "",
                  *_table(list(run["metrics"]), [list(run["metrics"].values())])]
    return "\n".join(lines)


class SamplePanel(foo.Panel):
    """The current sample: label history, votes, signals, review state and Label Studio task."""

    @property
    def config(self):
        return foo.PanelConfig(name="fieldguide_sample", label="fieldguide: sample", surfaces="grid modal")

    def on_load(self, ctx):
        self.refresh(ctx)

    def on_unload(self, ctx):
        forget_panel(ctx)

    def on_change_current_sample(self, ctx):
        self.refresh(ctx)

    def on_change_selected(self, ctx):
        self.refresh(ctx)

    def refresh(self, ctx):
        from fieldguide.platform.panels import sample_card

        remember_panel(ctx, "fieldguide_sample")
        sid = ctx.current_sample or (ctx.selected[0] if ctx.selected else None)
        ctx.panel.state.card = sample_card(project_of(ctx), sid) if sid else None

    def accept_prediction(self, ctx):
        card = ctx.panel.state.card or {}
        if card.get("predicted"):
            ctx.trigger(f"{PLUGIN}/set_label", params={"label": card["predicted"], "sample_ids": [card["id"]]})

    def confirm(self, ctx):
        card = ctx.panel.state.card or {}
        if card.get("id"):
            ctx.trigger(f"{PLUGIN}/confirm_label", params={"sample_ids": [card["id"]]})

    def choose_label(self, ctx):
        card = ctx.panel.state.card or {}
        if card.get("id"):
            ctx.prompt(f"{PLUGIN}/set_label", params={"sample_ids": [card["id"]]})

    def render(self, ctx):
        panel = types.Object()
        card = ctx.panel.state.card
        if not card:
            panel.md("Open or select a sample to see its label history, votes, signals and review state.",
                     name="md_empty")
            return types.Property(panel, view=types.GridView())
        panel.md(sample_markdown(card), name="md_card")
        buttons = panel.h_stack("actions", gap=1)
        if card["predicted"] and card["predicted"] != card["label"]:
            buttons.btn("btn_accept", label=f"Accept the prediction: {card['predicted']}",
                        on_click=self.accept_prediction, variant="contained")
        if card["label"]:
            buttons.btn("btn_confirm", label=f"Confirm the label: {card['label']}", on_click=self.confirm,
                        variant="outlined")
        buttons.btn("btn_choose", label="Set another label…", on_click=self.choose_label, variant="outlined")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, px=2, py=2))


class ProjectPanel(foo.Panel):
    """The project: the review states' counts, Label Studio tasks by status, the last run's metrics."""

    @property
    def config(self):
        return foo.PanelConfig(name="fieldguide_project", label="fieldguide: project")

    def on_load(self, ctx):
        self.refresh(ctx)

    def on_unload(self, ctx):
        forget_panel(ctx)

    def refresh(self, ctx):
        from fieldguide.platform.panels import project_counts

        remember_panel(ctx, "fieldguide_project")
        ctx.panel.state.counts = project_counts(project_of(ctx))

    def open_queue(self, ctx):
        ctx.ops.set_view(name="to_review")

    def render(self, ctx):
        panel = types.Object()
        counts = ctx.panel.state.counts
        if not counts:
            panel.md("Loading…", name="md_empty")
        else:
            panel.md(project_markdown(counts), name="md_counts")
        buttons = panel.h_stack("actions", gap=1)
        buttons.btn("btn_refresh", label="Refresh", on_click=self.refresh, variant="outlined")
        if ctx.dataset is not None and ctx.dataset.has_saved_view("to_review"):
            buttons.btn("btn_queue", label="Open the review queue", on_click=self.open_queue, variant="outlined")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, px=2, py=2))
