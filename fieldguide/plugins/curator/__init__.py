"""@fieldguide/curator: the curator's workflow inside the FiftyOne App.

Each operator reads the App's context (dataset, view, selection) and calls the same function as
the matching CLI verb; nothing else happens here. The project is the one whose dataset is open
(``dataset.info["fieldguide_project"]``, written by the store), else ``FIELDGUIDE_PROJECT``.
Expected failures (a Label Studio that is down, nothing flagged yet) are operator errors with
one line: :class:`fieldguide.errors.FieldguideError` messages, never a traceback.
"""

from __future__ import annotations

import os

import fiftyone.operators as foo
import fiftyone.operators.types as types


def _project(ctx):
    from fieldguide.config import PROJECT_ENV, open_project

    root = (ctx.dataset.info or {}).get("fieldguide_project") if ctx.dataset is not None else None
    return open_project(root or os.environ.get(PROJECT_ENV))


def _settings(ctx):
    """The project's configuration, for the forms' defaults (the sections' defaults when no project opens)."""
    from fieldguide.config.sections import Config, ProjectSection
    from fieldguide.errors import FieldguideError

    try:
        return _project(ctx).config
    except FieldguideError:
        return Config(project=ProjectSection(name="unknown"))


def _target_ids(ctx) -> list[str]:
    """The selected samples, else the current view's."""
    if ctx.selected:
        return list(ctx.selected)
    return ctx.target_view().values("id") if hasattr(ctx, "target_view") else ctx.view.values("id")


class _FieldguideOperator(foo.Operator):
    """Turns a fieldguide error into one clear line in the App."""

    def execute(self, ctx):
        from fieldguide.errors import FieldguideError

        try:
            return self.run(ctx)
        except FieldguideError as e:
            raise RuntimeError(f"fieldguide: {e}") from None

    def run(self, ctx):  # pragma: no cover - every subclass defines it
        raise NotImplementedError


class FlagLabelIssues(_FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="flag_label_issues", label="fieldguide: flag label issues",
                                  description="cleanlab, Datalab, crowd votes, kNN and training signals → noise_score",
                                  allow_delegated_execution=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("backbone", label="Backbone (default: the project's)", required=False)
        return types.Property(inputs, view=types.View(label="Flag label issues"))

    def run(self, ctx):
        from fieldguide.curation.flag import flag

        report = flag(_project(ctx), backbone=ctx.params.get("backbone") or None)
        if not ctx.delegated:
            ctx.ops.set_view(name="to_review")
        return {"assessed": report.assessed, "flagged": report.flagged, "outliers": report.outliers,
                "not_assessable": report.not_assessable}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("assessed", "flagged", "outliers", "not_assessable"):
            outputs.int(key, label=key.replace("_", " "))
        return types.Property(outputs, view=types.View(label="Flagged; the to_review view is loaded"))


class PushToLabelStudio(_FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="push_to_label_studio", label="fieldguide: push to Label Studio",
                                  description="relabel tasks for the selected samples (else the current view)")

    def resolve_input(self, ctx):
        inputs = types.Object()
        n = len(ctx.selected) if ctx.selected else (len(ctx.view) if ctx.view is not None else 0)
        inputs.int("limit", label="At most this many samples", default=min(n, 100) or 100, required=True)
        inputs.view("target", types.Notice(label=f"{n} {'selected' if ctx.selected else 'samples in the view'}"))
        return types.Property(inputs, view=types.View(label="Push to Label Studio"))

    def run(self, ctx):
        from fieldguide.platform.labelstudio import push

        limit = ctx.params.get("limit")
        if limit is not None and int(limit) < 0:
            raise RuntimeError("fieldguide: the limit must be 0 or more")
        ids = _target_ids(ctx)
        ids = ids[: int(limit)] if limit is not None else ids
        report = push(_project(ctx), sample_ids=ids)
        return {"pushed": report.pushed, "already_pushed": report.already_pushed, "url": report.url,
                "project_id": report.project_id}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("pushed", label="Pushed")
        outputs.int("already_pushed", label="Already pushed")
        outputs.str("url", label="Label Studio")
        return types.Property(outputs)


class PullFromLabelStudio(_FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="pull_from_label_studio", label="fieldguide: pull from Label Studio",
                                  description="apply the curators' answers (label history records them)")

    def run(self, ctx):
        from fieldguide.platform.labelstudio import pull

        report = pull(_project(ctx))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"applied": report.applied, "changed": report.changed, "accepted": report.accepted,
                "unsure": report.unsure, "skipped": report.skipped, "pending": report.pending}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("applied", "changed", "accepted", "unsure", "skipped", "pending"):
            outputs.int(key, label=key)
        return types.Property(outputs)


class SetLabel(_FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="set_label", label="fieldguide: set or confirm the label",
                                  description="the curator's decision for the selected samples, kept in label_history",
                                  dynamic=True)

    def resolve_input(self, ctx):
        from fieldguide.platform import store

        inputs = types.Object()
        classes = store.classes(ctx.dataset) if ctx.dataset is not None else []
        choices = types.AutocompleteView()
        for c in classes:
            choices.add_choice(c, label=c)
        inputs.enum("label", classes, label="Label", required=True, view=choices)
        n = len(ctx.selected) if ctx.selected else (1 if ctx.current_sample else 0)
        if n == 0:
            inputs.view("none", types.Warning(label="Select samples (or open one) first"))
        return types.Property(inputs, view=types.View(label=f"Set the label of {n} sample(s)"))

    def run(self, ctx):
        from fieldguide.platform import store

        ids = list(ctx.selected) or ([ctx.current_sample] if ctx.current_sample else [])
        if not ids:
            raise RuntimeError("fieldguide: select samples (or open one) to set their label")
        label = ctx.params.get("label")
        project = _project(ctx)
        ds = store.dataset(project, create=False)
        changed = store.set_labels(project, ds, {sid: label for sid in ids}, source="curator",
                                   actor=project.config.project.curator)
        if not ctx.delegated:
            ctx.ops.reload_samples()
        return {"samples": len(ids), "changed": changed, "confirmed": len(ids) - changed}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("samples", "changed", "confirmed"):
            outputs.int(key, label=key)
        return types.Property(outputs)


class Retrain(_FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="retrain", label="fieldguide: retrain",
                                  description="train on the current labels, evaluate, compare with the last run",
                                  allow_delegated_execution=True,
                                  allow_immediate_execution=True, default_choice_to_delegated=True)

    def resolve_input(self, ctx):
        from fieldguide.models.entropy import METHODS

        train = _settings(ctx).train
        inputs = types.Object()
        inputs.enum("method", list(METHODS), default=train.method, label="Method")
        inputs.enum("flagged", ["downweight", "exclude", "keep"], default=train.flagged,
                    label="Unresolved flagged samples")
        return types.Property(inputs, view=types.View(label="Retrain"))

    def run(self, ctx):
        from fieldguide.models.train import retrain

        if ctx.delegated:
            ctx.set_progress(progress=0.05, label="training")
        report, comparison = retrain(_project(ctx), method=ctx.params.get("method"),
                                     flagged=ctx.params.get("flagged"), progress=False)
        if ctx.delegated:
            ctx.set_progress(progress=1.0, label="done")
        return {"run_id": report.run_id, "top1": report.top1, "macro_f1": report.macro_f1,
                "previous": comparison.get("previous"), "delta_top1": comparison.get("delta_top1"),
                "delta_macro_f1": comparison.get("delta_macro_f1")}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("run_id", label="Run")
        for key in ("top1", "macro_f1", "delta_top1", "delta_macro_f1"):
            outputs.float(key, label=key)
        outputs.str("previous", label="Compared with")
        return types.Property(outputs)


class OpenDashboard(_FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="open_dashboard", label="fieldguide: open the dashboards")

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.int("port", default=_settings(ctx).dashboards.port, label="Port", required=True)
        return types.Property(inputs)

    def run(self, ctx):
        from fieldguide.dashboards.server import ensure_running

        port = ctx.params.get("port")
        url = ensure_running(_project(ctx), int(port) if port else None)
        return {"url": url}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.view("url", types.LinkView(label="Open the dashboards", href=ctx.results.get("url", "")))
        outputs.str("url_text", label="URL", default=ctx.results.get("url", ""))
        return types.Property(outputs)


class SamplePanel(foo.Panel):
    """The current sample: label history, votes, signals and noise score."""

    @property
    def config(self):
        return foo.PanelConfig(name="fieldguide_sample", label="fieldguide: sample", surfaces="grid modal")

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_current_sample(self, ctx):
        self._refresh(ctx)

    def on_change_selected(self, ctx):
        self._refresh(ctx)

    def _refresh(self, ctx):
        from fieldguide.platform.panels import sample_card

        sid = ctx.current_sample or (ctx.selected[0] if ctx.selected else None)
        ctx.panel.state.card = sample_card(_project(ctx), sid) if sid else None

    def render(self, ctx):
        panel = types.Object()
        card = ctx.panel.state.card
        if not card:
            panel.md("Open or select a sample to see its label history, votes and signals.", name="empty")
            return types.Property(panel, view=types.GridView())
        lines = [f"**{card['label']}** (predicted {card['predicted']})", "", "| old | new | source | actor | time |",
                 "|---|---|---|---|---|"]
        lines += [f"| {h['old']} | {h['new']} | {h['source']} | {h['actor']} | {h['time']} |" for h in card["history"]]
        if card["votes"]:
            lines += ["", "**votes**: " + ", ".join(f"{v['annotator']}: {v['label']}" for v in card["votes"])]
        if card["signals"]:
            lines += ["", "**signals**: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in card["signals"].items())]
        panel.md("\n".join(lines), name="card")
        return types.Property(panel, view=types.GridView(orientation="vertical"))


class ProjectPanel(foo.Panel):
    """The project: to review / pushed / answered, and the last run's metrics."""

    @property
    def config(self):
        return foo.PanelConfig(name="fieldguide_project", label="fieldguide: project")

    def on_load(self, ctx):
        from fieldguide.platform.panels import project_counts

        ctx.panel.state.counts = project_counts(_project(ctx))

    def render(self, ctx):
        panel = types.Object()
        c = ctx.panel.state.counts or {}
        lines = [f"**to review** {c.get('to_review', 0)} · **pushed** {c.get('pushed', 0)} · "
                 f"**answered** {c.get('answered', 0)} · samples {c.get('samples', 0)}"]
        run = c.get("last_run")
        if run:
            lines.append(f"last run {run['run_id']}: top-1 {run.get('top1', float('nan')):.3f}, "
                         f"macro-F1 {run.get('macro_f1', float('nan')):.3f}")
        panel.md("\n\n".join(lines), name="counts")
        panel.btn("refresh", label="Refresh", on_click=self.on_load)
        return types.Property(panel, view=types.GridView(orientation="vertical"))


def register(p):
    for cls in (FlagLabelIssues, PushToLabelStudio, PullFromLabelStudio, SetLabel, Retrain, OpenDashboard,
                SamplePanel, ProjectPanel):
        p.register(cls)
