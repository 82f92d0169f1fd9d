"""The review state: flag queues, a curator decides, flag again leaves decided samples alone
until the evidence changes; test samples only with --include-test (real store, real flag)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fieldguide.cli.main import app
from fieldguide.curation.flag import flag
from fieldguide.models.evaluate import evaluate
from fieldguide.platform import review, store


def _noisy(p):
    """Three wrong train labels and one wrong test label, then fresh predictions."""
    from fieldguide.models.predict import predict

    ds = store.dataset(p)
    wrong = {}
    for split in ("train", "test"):
        for s in ds.match_tags(split).match({"ground_truth.label": "red_bird"}).limit(3 if split == "train" else 1):
            wrong[s.id] = "blue_bird"
    store.set_labels(p, ds, wrong, source="crowd", actor="test")
    predict(p, head="logreg", folds=3)
    return ds, wrong


def _states(ds) -> dict:
    ds.reload()
    return dict(zip(*ds.values(["id", review.FIELD])))


def _queue(ds) -> set:
    ds.reload()
    return set(ds.load_saved_view("to_review").values("id"))


def test_flag_queues_train_samples_decisions_leave_and_stay_out(predicted):
    p = predicted
    ds, wrong = _noisy(p)
    report = flag(p)
    states = _states(ds)
    queued = {sid for sid, s in states.items() if s == review.TO_REVIEW}
    test_ids = set(ds.match_tags("test").values("id"))
    assert queued and not queued & test_ids  # no test sample without --include-test
    assert _queue(ds) == queued and report.queued == len(queued)
    assert set(ds.match_tags("to_review").values("id")) == queued

    # a curator changes one label and confirms another
    change, keep = sorted(queued)[:2]
    label_before = ds[keep].ground_truth.label
    decision = review.decide(p, {change: "green_bird"}, actor="ana")
    confirmed = review.confirm(p, [keep], actor="ana")
    assert (decision.changed, decision.confirmed, confirmed.changed, confirmed.confirmed) == (1, 0, 0, 1)
    states = _states(ds)
    assert states[change] == review.RESOLVED and states[keep] == review.DISMISSED
    assert _queue(ds) == queued - {change, keep}
    assert review.counts(ds)[review.TO_REVIEW] == len(queued) - 2
    hist = ds[change].label_history[-1]
    assert (hist.new, hist.source, hist.actor, hist.run_id) == ("green_bird", "curator", "ana", decision.run_id)
    assert ds[keep].ground_truth.label == label_before and ds[keep].label_history[-1].source == "curator"
    wh = store.warehouse(p)
    runs = wh.query("SELECT run_id, status FROM runs WHERE kind = 'set_label'")
    assert set(runs["run_id"]) == {decision.run_id, confirmed.run_id} and set(runs["status"]) == {"completed"}
    snap = wh.query("SELECT sample_id, review_state FROM samples").set_index("sample_id")["review_state"]
    assert snap[keep] == review.DISMISSED and snap[change] == review.RESOLVED

    # flag again, same evidence: the confirmed sample is not queued again
    flag(p)
    assert _states(ds)[keep] == review.DISMISSED and keep not in _queue(ds)
    # the queue's rule itself: flagged again with the same evidence, a decision stands
    kept = review.requeue(ds, {keep, change})
    assert kept.kept_decided == 2 and _states(ds)[keep] == review.DISMISSED

    # the evidence changes (a new crowd vote): flagged again, it is queued again
    import fiftyone as fo

    ds.set_values("votes", {keep: fo.Classifications(classifications=[
        fo.Classification(label="green_bird", annotator="bob")])}, key_field="id")
    requeued = review.requeue(ds, {keep})
    assert requeued.kept_decided == 0 and _states(ds)[keep] == review.TO_REVIEW and keep in _queue(ds)
    assert _states(ds)[change] == review.RESOLVED  # not flagged this time: its decision stays


def test_include_test_queues_test_samples_and_evaluate_names_changed_test_labels(predicted):
    p = predicted
    ds, wrong = _noisy(p)
    res = CliRunner().invoke(app, ["-p", str(p.root), "flag", "--include-test", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    test_ids = set(ds.match_tags("test").values("id"))
    flagged_test = {sid for sid, v in zip(*ds.match_tags("test").values(["id", "label_issue"])) if v}
    assert out["test_left_out"] == 0
    assert _queue(ds) & test_ids == flagged_test
    # a test label changed by review is named by evaluate
    sid = sorted(test_ids)[0]
    current = ds[sid].ground_truth.label
    other = next(c for c in ("red_bird", "green_bird", "blue_bird") if c != current)
    review.decide(p, {sid: other}, actor="ana")
    from fieldguide.models.predict import predict

    predict(p, head="logreg", folds=3)
    m = evaluate(p)
    # only the review's change counts (the crowd's wrong test label of _noisy is not a review)
    assert m["labels_changed_ids"] == [sid] and m["labels_changed"] == 1
    res = CliRunner().invoke(app, ["-p", str(p.root), "evaluate"])
    assert res.exit_code == 0 and "changed by review since ingest" in res.output


def test_review_cli_set_confirm_status_and_bad_input(predicted):
    p = predicted
    ds = store.dataset(p)
    sid = ds.match_tags("train").first().id
    res = CliRunner().invoke(app, ["-p", str(p.root), "review", "set", "green_bird", sid, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["samples"] == 1
    res = CliRunner().invoke(app, ["-p", str(p.root), "review", "status", "--json"])
    counts = json.loads(res.stdout)
    assert counts[review.RESOLVED] + counts[review.DISMISSED] == 1
    before = (_states(ds), ds.values("label_history"))
    for args in (["review", "set", "no_such_bird", sid], ["review", "confirm", "0" * 24]):
        res = CliRunner().invoke(app, ["-p", str(p.root), *args])
        assert res.exit_code == 1
        assert res.output.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in res.output
    assert (_states(ds), ds.values("label_history")) == before  # nothing changed




def test_flag_unknown_queues_likely_unknown_species_with_reason_and_the_cost_order(predicted):
    """``flag --unknown N`` queues the N samples of highest unknown_score (review_reason ``unknown``)
    beside the flagged ones (``label_issue``); ``error_cost`` is the expected cost of keeping the
    label under classes.costs, and the ``cost`` order sorts the queue by noise score x error cost."""
    import numpy as np

    from fieldguide.config import dump_config
    from fieldguide.models.costs import dangerous_cost_matrix
    from fieldguide.models.predict import load_pred_probs

    p = predicted
    p.config.classes.costs = ["red_bird"]
    p.config_path.write_text(dump_config(p.config))
    ds = store.dataset(p)
    scored = {sid: v for sid, v in zip(*ds.values(["id", "unknown_score"])) if v is not None}
    top2 = set(sorted(scored, key=scored.get, reverse=True)[:2])
    # without --include-test the pick is among the samples the queue takes (no test sample)
    tags = dict(zip(*ds.values(["id", "tags"])))
    picked = review.most_unknown(ds, len(scored))
    assert all("test" not in tags[sid] for sid in picked)
    assert len(picked) == sum("test" not in tags[sid] for sid in scored)
    assert set(review.most_unknown(ds, 2, include_test=True)) == top2
    res = CliRunner().invoke(app, ["-p", str(p.root), "flag", "--unknown", "2", "--include-test", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unknown_queued"] == 2
    queued = _queue(ds)
    values = {f: dict(zip(*ds.values(["id", f]))) for f in (review.REASON, "label_issue", "noise_score",
                                                             "error_cost", "cost_priority")}
    flagged = {sid for sid, v in values["label_issue"].items() if v}
    assert queued == top2 | flagged
    for sid in queued:
        expected = {r for r, ids in ((review.REASON_UNKNOWN, top2), (review.REASON_LABEL_ISSUE, flagged)) if sid in ids}
        assert set(values[review.REASON][sid].split(",")) == expected

    pp = load_pred_probs(p)
    cost = dangerous_cost_matrix(np.array([c == "red_bird" for c in pp.classes]))
    row = {sid: i for i, sid in enumerate(pp.sample_ids)}
    labels = dict(zip(*ds.values(["id", "ground_truth.label"])))
    assessed = [sid for sid, v in values["noise_score"].items() if v is not None]
    assert assessed
    for sid in assessed:
        expected = sum(pp.pred_probs[row[sid], j] * cost[j, pp.classes.index(labels[sid])]
                       for j in range(len(pp.classes)))
        assert values["error_cost"][sid] == pytest.approx(expected)
        assert values["cost_priority"][sid] == pytest.approx(values["noise_score"][sid] * expected)
    res = CliRunner().invoke(app, ["-p", str(p.root), "review", "status", "--top", "50", "--order", "cost", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["queue"]
    assert {r["id"] for r in rows} == queued
    priority = [r["cost_priority"] for r in rows if r["cost_priority"] is not None]
    assert priority == sorted(priority, reverse=True)

    review.requeue(ds, flagged)  # a later flag run without --unknown: the unknown ones leave
    assert _queue(ds) == flagged
    reasons = dict(zip(*ds.values(["id", review.REASON])))
    assert all(reasons[sid] is None for sid in top2 - flagged)
