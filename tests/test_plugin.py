"""The @fieldguide/curator FiftyOne plugin: operators run the same functions as the CLI, on the
project's own database (real embedded MongoDB), executed through FiftyOne's operator machinery."""

from __future__ import annotations

import json

import pytest

from fieldguide.errors import FieldguideError
from fieldguide.platform import store
from fieldguide.platform.panels import project_counts, sample_card

PLUGIN = "@fieldguide/curator"


def run_op(name: str, ds, *, params=None, selected=None, view=None, current_sample=None):
    import fiftyone.operators as foo

    result = foo.execute_operator(f"{PLUGIN}/{name}", ctx={
        "dataset": ds.name, "view": view if view is not None else ds.view(), "params": params or {},
        "selected": selected or [], "current_sample": current_sample,
    })
    return result.result


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
    for name in ("flag_label_issues", "push_to_label_studio", "pull_from_label_studio", "set_label", "retrain",
                 "open_dashboard", "fieldguide_sample", "fieldguide_project"):
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
    assert out == {"samples": 1, "changed": 1, "confirmed": 0}
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
    assert counts["to_review"] == ds.count_sample_tags().get("to_review", 0)
    assert counts["last_run"]["run_id"] == out["run_id"]


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
