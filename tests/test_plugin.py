"""The @fieldguide/curator FiftyOne plugin: operators run the same functions as the CLI, on the
project's own database (real embedded MongoDB), executed through FiftyOne's operator machinery."""

from __future__ import annotations

import json

import pytest

from fieldguide.errors import FieldguideError
from fieldguide.platform import review, store
from fieldguide.platform.panels import project_counts, sample_card

PLUGIN = "@fieldguide/curator"


def run_op(name: str, ds, *, params=None, selected=None, view=None, current_sample=None):
    return execute(name, ds, params=params, selected=selected, view=view, current_sample=current_sample).result


def execute(name: str, ds, *, params=None, selected=None, view=None, current_sample=None):
    """Run an operator (or a panel's method: ``params={"__method__": ..., "panel_id": ...}``)
    through FiftyOne's executor; the ExecutionResult keeps what it asked the App to do."""
    import fiftyone.operators as foo

    return foo.execute_operator(f"{PLUGIN}/{name}", ctx={
        "dataset": ds.name, "view": view if view is not None else ds.view(), "params": params or {},
        "selected": selected or [], "current_sample": current_sample,
    })


def app_requests(result) -> list[tuple[str, dict]]:
    """The operators an execution triggered in the App (its reloads and panel refreshes), with their params."""
    return [(r["operator_uri"], r["params"]) for r in result.executor.to_json()["requests"]]


def op_error(name: str, ds, **ctx) -> str:
    """Run an operator the way the App does and return the error message it would show."""
    import asyncio

    import fiftyone.operators.executor as fe

    params = {"dataset_name": ds.name, "view": [], "params": ctx.pop("params", {}), "selected": [], **ctx}
    result = asyncio.run(fe.execute_or_delegate_operator(f"{PLUGIN}/{name}", params, exhaust=True))
    assert result.error is not None, f"{name} did not fail"
    return result.error_message


def test_plugin_is_found_with_every_operator_and_panel(project):
    import fiftyone.operators as foo
    import fiftyone.plugins as fop

    store.dataset(project)  # configures FiftyOne: plugins dir inside the package, nothing in $HOME
    assert PLUGIN in [p.name for p in fop.list_plugins()]
    uris = {o.uri for o in foo.list_operators()}
    for name in ("flag_label_issues", "push_to_label_studio", "pull_from_label_studio", "set_label", "confirm_label",
                 "retrain", "open_dashboard", "fieldguide_sample", "fieldguide_project"):
        assert f"{PLUGIN}/{name}" in uris


def test_flag_set_label_and_retrain_operators(predicted):
    p = predicted
    p.config.train.epochs = 5
    from fieldguide.config import dump_config

    p.config_path.write_text(dump_config(p.config))
    ds = store.dataset(p)
    out = run_op("flag_label_issues", ds)
    assert out["assessed"] == 24 and out["flagged"] == ds.count_values("label_issue").get(True, 0)
    assert ds.has_saved_view("to_review")

    sid = ds.match_tags("train").first().id
    old = ds[sid].ground_truth.label
    new = "green_bird" if old != "green_bird" else "red_bird"
    out = run_op("set_label", ds, params={"label": new}, selected=[sid])
    assert {k: out[k] for k in ("samples", "changed", "confirmed", "problems")} == {
        "samples": 1, "changed": 1, "confirmed": 0, "problems": []}
    ds.reload()
    last = ds[sid].label_history[-1]
    assert (last.old, last.new, last.source, last.actor) == (old, new, "curator", p.config.project.curator)
    # confirming the same label is recorded too, and changes nothing
    assert run_op("set_label", ds, params={"label": new}, current_sample=sid)["confirmed"] == 1
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match=r"Path: label\. Reason: Invalid enum value"):  # not a class
        run_op("set_label", ds, params={"label": "dodo"}, selected=[sid])
    assert store.dataset(p)[sid].ground_truth.label == new  # nothing changed by the bad request

    out = run_op("retrain", ds, params={"method": "ce", "flagged": "exclude"})
    assert out["run_id"].startswith("retrain-")
    wh = store.warehouse(p)
    runs = wh.query("SELECT kind, status, config FROM runs WHERE run_id = ?", [out["run_id"]])
    assert runs.iloc[0, :2].tolist() == ["retrain", "completed"]
    assert {k: v for k, v in json.loads(runs.iloc[0, 2]).items() if k in ("method", "flagged")} == {
        "method": "ce", "flagged": "exclude"}
    top1 = wh.query("SELECT value FROM metrics WHERE run_id = ? AND split = 'test' AND name = 'top1'",
                    [out["run_id"]]).iloc[0, 0]
    assert out["top1"] == pytest.approx(top1)

    card = sample_card(p, sid)
    assert [h["source"] for h in card["history"]][-2:] == ["curator", "curator"]
    assert "noise_score" in card["signals"]
    counts = project_counts(p)
    assert counts["review"] == review.counts(store.dataset(p))
    assert counts["last_run"]["run_id"] == out["run_id"]
    assert counts["last_run"]["metrics"]["top1"] == pytest.approx(top1)


def test_push_without_label_studio_is_one_clear_error(predicted):
    ds = store.dataset(predicted)
    message = op_error("push_to_label_studio", ds, params={"limit": 3})
    assert message.startswith("fieldguide: ") and "Label Studio" in message and "\n" not in message
    assert store.warehouse(predicted).query("SELECT count(*) FROM relabel_tasks").iloc[0, 0] == 0


def test_open_dashboard_starts_the_dashboards_once_and_returns_their_url(project):
    import urllib.request

    from conftest import free_port

    ds = store.dataset(project)
    port = free_port()
    try:
        url = run_op("open_dashboard", ds, params={"port": port})
        assert url == {"url": f"http://127.0.0.1:{port}/"}
        with urllib.request.urlopen(url["url"] + "_stcore/health", timeout=10) as r:
            assert r.read() == b"ok"
        again = run_op("open_dashboard", ds, params={"port": port})  # already up: no second server
        assert again == url
        assert len(dashboard_servers(port)) == 1
        from fieldguide.config import init_project
        from fieldguide.dashboards.server import ensure_running

        other = init_project(project.root.parent / "other", "other")
        with pytest.raises(FieldguideError, match="another project"):  # never another project's pages
            ensure_running(other, port)
    finally:
        for p in dashboard_servers(port):
            p.kill()


def dashboard_servers(port: int) -> list:
    """The Streamlit processes serving on ``port`` (``fieldguide dashboard`` execs into one)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "streamlit" in cmd and "--server.port" in cmd and cmd[cmd.index("--server.port") + 1] == str(port):
            found.append(p)
    return found


def test_form_defaults_come_from_the_project_file(project):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    from fieldguide.config import dump_config
    from fieldguide.models.entropy import METHODS

    project.config.train.method = "ce"
    project.config.train.flagged = "exclude"
    project.config.dashboards.port = 8600
    project.config_path.write_text(dump_config(project.config))
    ds = store.dataset(project)
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {}})
    retrain = foo.get_operator(f"{PLUGIN}/retrain").resolve_input(ctx).type.properties
    assert (retrain["method"].default, retrain["flagged"].default) == ("ce", "exclude")
    assert retrain["method"].type.values == list(METHODS)  # every registered method
    dashboard = foo.get_operator(f"{PLUGIN}/open_dashboard").resolve_input(ctx).type.properties
    assert dashboard["port"].default == 8600


# ---- decisions in the App, and the panels that show them ------------------------------------------------
def flagged_project(predicted):
    """``predicted`` with three wrong train labels, predicted again and flagged by the real ``flag``
    (through its operator); returns (dataset, the sample ids it queued)."""
    from fieldguide.config import dump_config
    from fieldguide.models.predict import predict

    predicted.config_path.write_text(dump_config(predicted.config))  # the App reads the project's file
    ds = store.dataset(predicted)
    wrong = {s.id: "blue_bird" for s in ds.match_tags("train").match({"ground_truth.label": "red_bird"}).limit(3)}
    store.set_labels(predicted, ds, wrong, source="crowd", actor="test")
    predict(predicted, head="logreg", folds=3)
    run_op("flag_label_issues", ds)
    ds.reload()
    queued = [sid for sid, state in zip(*ds.match_tags(review.QUEUE_TAG).values(["id", "review_state"]))
              if state == review.TO_REVIEW]
    assert len(queued) >= 2, "the fixture flags too few samples to test decisions"
    return ds, queued


def open_panel(ds, name: str, panel_id: str, **ctx):
    """Load a panel the way the App does (its ``on_load``); returns (its state, its rendered properties)."""
    result = execute(name, ds, params={"__method__": "on_load", "panel_id": panel_id, "panel_state": {}}, **ctx)
    state, rendered = {}, None
    for op, params in app_requests(result):
        if op == "patch_panel_state":
            state.update(params["state"])
        elif op == "show_panel_output":
            rendered = params["output"]
    assert rendered is not None, f"{name} rendered nothing"
    return state, rendered


def shown_text(rendered: dict) -> str:
    """The markdown a rendered panel shows: each markdown view's text, unless the panel's state
    holds a value under the view's name (then the App shows that value instead)."""
    props = rendered["type"]["properties"]
    return "\n".join(p.get("default") or "" for p in props.values() if p["view"]["name"] == "MarkdownView")


def test_set_label_decides_and_the_app_reloads_the_view_and_the_panels(predicted):
    ds, queued = flagged_project(predicted)
    sid = queued[0]
    old = ds[sid].ground_truth.label
    new = next(c for c in store.classes(ds) if c != old)
    project_state, project_view = open_panel(ds, "fieldguide_project", "panel-project")
    sample_state, sample_view = open_panel(ds, "fieldguide_sample", "panel-sample", current_sample=sid)
    # the panels' markdown is not hidden behind their state (a dict under a view's name shows as [object Object])
    for state, rendered in ((project_state, project_view), (sample_state, sample_view)):
        assert not set(state) & set(rendered["type"]["properties"])
    before = review.counts(ds)
    assert (f"| {before['to_review']} | {before['pushed']} | {before['answered']} | {before['resolved']} | "
            f"{before['dismissed']} |") in shown_text(project_view)
    assert f"**review** {review.TO_REVIEW}" in shown_text(sample_view)

    result = execute("set_label", ds, params={"label": new}, current_sample=sid)
    out = result.result
    assert (out["samples"], out["changed"], out["confirmed"], out["problems"]) == (1, 1, 0, [])
    runs = store.warehouse(predicted).query("SELECT kind, status FROM runs WHERE run_id = ?", [out["run_id"]])
    assert runs.values.tolist() == [["set_label", "completed"]]
    ds.reload()
    sample = ds[sid]
    assert sample.ground_truth.label == new and sample.review_state == review.RESOLVED
    assert review.QUEUE_TAG not in sample.tags
    last = sample.label_history[-1]
    assert (last.old, last.new, last.source, last.run_id) == (old, new, "curator", out["run_id"])
    assert review.counts(ds)["to_review"] == before["to_review"] - 1
    # the App reloads what changed and refreshes both open panels
    asked = app_requests(result)
    assert ("reload_dataset", {}) in asked
    assert (f"{PLUGIN}/fieldguide_project", {"panel_id": "panel-project", "__method__": "refresh"}) in asked
    assert (f"{PLUGIN}/fieldguide_sample", {"panel_id": "panel-sample", "__method__": "refresh"}) in asked
    # ... and the refreshed panels show the decision
    _, sample_view = open_panel(ds, "fieldguide_sample", "panel-sample", current_sample=sid)
    text = shown_text(sample_view)
    assert f"| {old} → {new} | curator | {predicted.config.project.curator} |" in text
    assert f"**review** {review.RESOLVED}" in text
    _, project_view = open_panel(ds, "fieldguide_project", "panel-project")
    after = review.counts(ds)
    assert f"| {after['to_review']} | {after['pushed']} | {after['answered']} | {after['resolved']} |" in \
        shown_text(project_view)


def test_confirm_label_dismisses_and_set_label_shows_label_studio_problems(predicted):
    ds, queued = flagged_project(predicted)
    sid, pushed = queued[0], queued[1]
    given = ds[sid].ground_truth.label
    out = run_op("confirm_label", ds, selected=[sid])
    assert (out["samples"], out["changed"], out["confirmed"]) == (1, 0, 1)
    ds.reload()
    assert ds[sid].review_state == review.DISMISSED and review.QUEUE_TAG not in ds[sid].tags
    assert ds[sid].ground_truth.label == given and ds[sid].label_history[-1].run_id == out["run_id"]
    wh = store.warehouse(predicted)
    assert wh.query("SELECT kind FROM runs WHERE run_id = ?", [out["run_id"]]).iloc[0, 0] == "set_label"

    # a sample with an open Label Studio task, and no Label Studio running: the decision stands, the
    # operator's output says the task stays open
    from fieldguide.platform.labelstudio.records import pushed_record

    wh.write("relabel_tasks", [pushed_record(predicted.config.project.name, pushed, 4242)])
    card = sample_card(predicted, pushed)
    assert (card["task"]["task_id"], card["task"]["status"], card["task"]["url"]) == (4242, "pushed", None)
    label = next(c for c in store.classes(ds) if c != ds[pushed].ground_truth.label)
    out = run_op("set_label", ds, params={"label": label, "sample_ids": [pushed]})  # a panel's button
    assert out["closed_tasks"] == 0 and len(out["problems"]) == 1 and "task" in out["problems"][0]
    ds.reload()
    assert ds[pushed].ground_truth.label == label and ds[pushed].review_state == review.RESOLVED

    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {}, "results": out})
    shown = foo.get_operator(f"{PLUGIN}/set_label").resolve_output(ctx).type.properties
    assert shown["problems_notice"].view.label == out["problems"][0]


def test_decisions_need_samples(predicted):
    ds = store.dataset(predicted)
    message = op_error("confirm_label", ds)
    assert message.startswith("fieldguide: select samples") and "\n" not in message
    assert store.warehouse(predicted).query("SELECT count(*) FROM runs WHERE kind = 'set_label'").iloc[0, 0] == 0
