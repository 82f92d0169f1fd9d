"""@fieldguide/curator: the curator's workflow inside the FiftyOne App.

Each operator reads the App's context (dataset, view, selection) and calls the same function as
the matching CLI verb; nothing else happens here. The project is the one whose dataset is open
(``dataset.info["fieldguide_project"]``, written by the store), else ``FIELDGUIDE_PROJECT``.
Expected failures (a Label Studio that is down, nothing flagged yet) are operator errors with
one line: :class:`fieldguide.errors.FieldguideError` messages, never a traceback.
"""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fieldguide.plugins.curator.context import (
    FieldguideOperator, decided_ids, project_of, refresh_panels, settings_of, show_changes, target_ids,
)
from fieldguide.plugins.curator.panels import ProjectPanel, SamplePanel


class FlagLabelIssues(FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="flag_label_issues", label="fieldguide: flag label issues",
                                  description="cleanlab, Datalab, crowd votes, kNN and training signals → noise_score",
                                  allow_delegated_execution=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("backbone", label="Backbone (default: the project's)", required=False)
        inputs.bool("include_test", default=False, label="Queue flagged test samples too",
                    description="relabeling them moves the evaluation baseline")
        return types.Property(inputs, view=types.View(label="Flag label issues"))

    def run(self, ctx):
        from fieldguide.curation.flag import flag

        report = flag(project_of(ctx), backbone=ctx.params.get("backbone") or None,
                      include_test=bool(ctx.params.get("include_test")))
        show_changes(ctx, view="to_review")
        return {"assessed": report.assessed, "flagged": report.flagged, "outliers": report.outliers,
                "not_assessable": report.not_assessable, "queued": report.queued,
                "kept_decided": report.kept_decided, "test_left_out": report.test_left_out}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("assessed", "flagged", "outliers", "not_assessable", "queued", "kept_decided", "test_left_out"):
            outputs.int(key, label=key.replace("_", " "))
        return types.Property(outputs, view=types.View(label="Flagged; the to_review view is loaded"))


class PushToLabelStudio(FieldguideOperator):
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
        ids = target_ids(ctx)
        ids = ids[: int(limit)] if limit is not None else ids
        report = push(project_of(ctx), sample_ids=ids)
        show_changes(ctx)
        return {"pushed": report.pushed, "already_pushed": report.already_pushed, "url": report.url,
                "project_id": report.project_id}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("pushed", label="Pushed")
        outputs.int("already_pushed", label="Already pushed")
        outputs.str("url", label="Label Studio")
        return types.Property(outputs)


class PullFromLabelStudio(FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="pull_from_label_studio", label="fieldguide: pull from Label Studio",
                                  description="apply the curators' answers (label history records them)")

    def run(self, ctx):
        from fieldguide.platform.labelstudio import pull

        report = pull(project_of(ctx))
        show_changes(ctx)
        return {"applied": report.applied, "changed": report.changed, "accepted": report.accepted,
                "unsure": report.unsure, "skipped": report.skipped, "pending": report.pending}

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("applied", "changed", "accepted", "unsure", "skipped", "pending"):
            outputs.int(key, label=key)
        return types.Property(outputs)


def _decision_output(ctx, title: str):
    outputs = types.Object()
    outputs.str("run_id", label="Run")
    for key in ("samples", "changed", "confirmed", "closed_tasks"):
        outputs.int(key, label=key.replace("_", " "))
    problems = (ctx.results or {}).get("problems") or []
    if problems:
        outputs.view("problems_notice", types.Warning(label="; ".join(problems)))
    outputs.list("problems", types.String(), label="Problems")
    return types.Property(outputs, view=types.View(label=title))


def _sample_ids_input(inputs) -> None:
    """The samples a panel's button decides about (hidden; else the selection or the open sample)."""
    inputs.list("sample_ids", types.String(), required=False, view=types.HiddenView())


def _count_notice(ctx, inputs, what: str) -> str:
    n = len(decided_ids(ctx))
    if n == 0:
        inputs.view("none", types.Warning(label="Select samples (or open one) first"))
    return f"{what} of {n} sample(s)"


class _DecisionOperator(FieldguideOperator):
    """A curator's decision about the samples of :func:`decided_ids`, through :mod:`fieldguide.platform.review`."""

    what = ""  # "set" or "confirm", for the messages

    def decide(self, ctx, project, ids: list[str]):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def run(self, ctx):
        from fieldguide.errors import FieldguideError

        ids = decided_ids(ctx)
        if not ids:
            raise FieldguideError(f"select samples (or open one) to {self.what} their label")
        decision = self.decide(ctx, project_of(ctx), ids)
        show_changes(ctx)
        return decision.as_dict()

    def resolve_output(self, ctx):
        return _decision_output(ctx, f"Label {self.what}: the samples left the review queue")


class SetLabel(_DecisionOperator):
    what = "set"

    @property
    def config(self):
        return foo.OperatorConfig(name="set_label", label="fieldguide: set the label",
                                  description="the curator's decision for the selected samples: label history, "
                                              "a set_label run, the review queue, the Label Studio task",
                                  dynamic=True)

    def resolve_input(self, ctx):
        from fieldguide.platform import store

        inputs = types.Object()
        classes = store.classes(ctx.dataset) if ctx.dataset is not None else []
        choices = types.AutocompleteView()
        for c in classes:
            choices.add_choice(c, label=c)
        inputs.enum("label", classes, label="Label", required=True, view=choices)
        _sample_ids_input(inputs)
        return types.Property(inputs, view=types.View(label=_count_notice(ctx, inputs, "Set the label")))

    def decide(self, ctx, project, ids):
        from fieldguide.platform import review

        return review.decide(project, dict.fromkeys(ids, ctx.params.get("label")),
                             actor=project.config.project.curator, source="curator")


class ConfirmLabel(_DecisionOperator):
    what = "confirm"

    @property
    def config(self):
        return foo.OperatorConfig(name="confirm_label", label="fieldguide: confirm the label",
                                  description="the given label of the selected samples is right: they leave the "
                                              "review queue (dismissed)",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        _sample_ids_input(inputs)
        return types.Property(inputs, view=types.View(label=_count_notice(ctx, inputs, "Confirm the label")))

    def decide(self, ctx, project, ids):
        from fieldguide.platform import review

        return review.confirm(project, ids, actor=project.config.project.curator)


class Retrain(FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="retrain", label="fieldguide: retrain",
                                  description="train on the current labels, evaluate, compare with the last run",
                                  allow_delegated_execution=True,
                                  allow_immediate_execution=True, default_choice_to_delegated=True)

    def resolve_input(self, ctx):
        from fieldguide.models.entropy import METHODS

        train = settings_of(ctx).train
        inputs = types.Object()
        inputs.enum("method", list(METHODS), default=train.method, label="Method")
        inputs.enum("flagged", ["downweight", "exclude", "keep"], default=train.flagged,
                    label="Unresolved flagged samples")
        return types.Property(inputs, view=types.View(label="Retrain"))

    def run(self, ctx):
        from fieldguide.models.train import retrain

        if ctx.delegated:
            ctx.set_progress(progress=0.05, label="training")
        report, comparison = retrain(project_of(ctx), method=ctx.params.get("method"),
                                     flagged=ctx.params.get("flagged"), progress=False)
        if ctx.delegated:
            ctx.set_progress(progress=1.0, label="done")
        refresh_panels(ctx)  # the project panel's last run
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


class OpenDashboard(FieldguideOperator):
    @property
    def config(self):
        return foo.OperatorConfig(name="open_dashboard", label="fieldguide: open the dashboards")

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.int("port", default=settings_of(ctx).dashboards.port, label="Port", required=True)
        return types.Property(inputs)

    def run(self, ctx):
        from fieldguide.dashboards.server import ensure_running

        port = ctx.params.get("port")
        url = ensure_running(project_of(ctx), int(port) if port else None)
        return {"url": url}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.view("url", types.LinkView(label="Open the dashboards", href=ctx.results.get("url", "")))
        outputs.str("url_text", label="URL", default=ctx.results.get("url", ""))
        return types.Property(outputs)


def register(p):
    for cls in (FlagLabelIssues, PushToLabelStudio, PullFromLabelStudio, SetLabel, ConfirmLabel, Retrain,
                OpenDashboard, SamplePanel, ProjectPanel):
        p.register(cls)
