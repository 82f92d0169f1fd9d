"""Label-issue signals, the combined noise score, the flag step, the review queue, export, benchmark."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.config.sections import SignalsSection
from fieldguide.curation import signals as sig
from fieldguide.curation.export import BASE_COLUMNS, export_signals
from fieldguide.curation.flag import flag
from fieldguide.curation.noise_bench import inject_noise, project_noise_benchmark, run_noise_benchmark
from fieldguide.curation.noise_score import flag_top, noise_score, percentile_rank
from fieldguide.errors import FieldguideError, NotReadyError
from fieldguide.models.embed import embed
from fieldguide.models.predict import predict
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from conftest import make_image


# ---- functions of arrays -------------------------------------------------------------------------
def test_percentile_rank_orients_and_keeps_nan():
    r = percentile_rank(np.array([0.1, np.nan, 0.9, 0.5]), "high")
    assert r[2] == 1.0 and r[0] == 0.0 and np.isnan(r[1])
    low = percentile_rank(np.array([0.1, 0.9, 0.5]), "low")
    assert low[0] == 1.0 and low[1] == 0.0


def test_noise_score_renormalises_over_present_signals():
    signals = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([np.nan, 0.0, 1.0])}
    score = noise_score(signals, {"a": 1.0, "b": 1.0}, {"a": "high", "b": "high"})
    assert score[0] == 0.0  # only a speaks for sample 0, and it is the lowest
    assert score[2] == 1.0 and 0 < score[1] < 1
    assert ((score >= 0) & (score <= 1)).all()
    with pytest.raises(ValueError, match="none of the weighted signals"):
        noise_score({"c": np.ones(3)}, {"a": 1.0}, {})


def test_flag_top_never_flags_nan():
    mask = flag_top(np.array([0.9, np.nan, 0.5, 0.7]), 3)
    assert mask.tolist() == [True, False, True, True]
    assert flag_top(np.array([0.2, 0.1]), 0).sum() == 0


def _blobs(n_classes=8, per_class=40, dim=16, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 2
    y = np.repeat(np.arange(n_classes), per_class)
    X = centers[y] + rng.normal(scale=spread, size=(len(y), dim))
    return X, y


def test_inject_noise_flips_exactly_the_rate_to_other_classes():
    X, y = _blobs()
    for kind in ("symmetric", "pairs"):
        noisy = inject_noise(y, 8, 0.2, kind, seed=0, features=X)
        assert (noisy != y).sum() == round(0.2 * len(y))
        assert np.array_equal(noisy, inject_noise(y, 8, 0.2, kind, seed=0, features=X))  # seeded


def test_combined_score_finds_symmetric_noise_at_least_as_well_as_cleanlab():
    X, y = _blobs()
    table = run_noise_benchmark(X, y, 8, rates=(0.2,), kinds=("symmetric",), folds=5, progress=False,
                                entropy_weights=(0.0, 0.5))
    by = table.set_index("signal")
    assert {"noise_score", "cl_issue", "label_quality", "knn_disagreement", "prediction_differs"} <= set(by.index)
    # the weight sweep: weight 0 is the score without the entropy signal
    assert by.loc["noise_score@entropy=0", "auroc"] == pytest.approx(by.loc["noise_score_without_entropy", "auroc"])
    assert "noise_score@entropy=0.5" in by.index
    assert by.loc["noise_score", "auroc"] >= 0.9
    assert by.loc["noise_score", "auroc"] >= by.loc["cl_issue", "auroc"] - 1e-9
    assert by.loc["noise_score", "f1"] >= by.loc["cl_issue", "f1"] - 0.02
    assert by.loc["noise_score", "precision_top5"] > 0.8


def test_signals_registry_adds_a_signal_without_other_changes():
    name = "test_constant_signal"

    @sig.register_signal(name, noisy_when={"always_half": "high"})
    def _half(inp):
        return {"always_half": np.full(len(inp.labels), 0.5)}

    try:
        labels = np.array([0, 1, 0, 1])
        probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
        out = sig.compute_signals(sig.SignalInputs(labels=labels, pred_probs=probs), [name, "cleanlab"])
        assert np.allclose(out["always_half"], 0.5) and "label_quality" in out
        assert name in sig.registered_signals()
    finally:
        sig._SIGNALS.pop(name)


def test_multiannotator_signal_from_votes():
    rng = np.random.default_rng(0)
    n = 60
    truth = np.repeat([0, 1, 2], n // 3)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), truth] = 0.8
    votes = pd.DataFrame({a: np.where(rng.random(n) < 0.85, truth, (truth + 1) % 3) for a in ("ann", "bob", "cy")},
                         dtype=float)
    votes.iloc[:10, 2] = np.nan  # cy did not vote on everything
    inp = sig.SignalInputs(labels=truth, pred_probs=probs, votes=votes)
    out = sig.multiannotator_signal(inp)
    assert set(out) >= {"consensus_quality", "consensus_label", "annotator_agreement"}
    assert (out["consensus_label"] == truth).mean() > 0.9
    stats = inp.extra["annotator_stats"]
    assert set(stats.index.astype(str)) == {"ann", "bob", "cy"}



def _confident_probs(truth: np.ndarray, k: int = 3) -> np.ndarray:
    probs = np.full((len(truth), k), 0.1)
    probs[np.arange(len(truth)), truth] = 1 - 0.1 * (k - 1)
    return probs


def test_multiannotator_signal_with_one_annotator_uses_the_model_for_quality():
    """One Label Studio round: one curator's votes on some samples. Their vote is the consensus."""
    from cleanlab.rank import get_label_quality_scores

    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = _confident_probs(np.array([0, 1, 2, 0, 1, 2]))
    votes = pd.DataFrame({"curator": [0, 2, np.nan, 0, np.nan, np.nan]}, dtype=float)
    inp = sig.SignalInputs(labels=labels, pred_probs=probs, votes=votes)
    out = sig.multiannotator_signal(inp)
    voted = np.array([True, True, False, True, False, False])
    assert np.array_equal(out["consensus_label"][voted], [0, 2, 0]) and np.isnan(out["consensus_label"][~voted]).all()
    expected = get_label_quality_scores(np.array([0, 2, 0]), probs[voted])
    assert np.allclose(out["consensus_quality"][voted], expected)
    assert out["consensus_quality"][1] < out["consensus_quality"][0]  # the model doubts the vote for class 2
    assert np.isnan(out["annotator_agreement"]).all()  # one vote has nobody to agree with
    assert out["consensus_disagrees"][voted].tolist() == [0.0, 1.0, 0.0]
    stats = inp.extra["annotator_stats"]
    assert stats.index.tolist() == ["curator"]
    assert stats.loc["curator", "num_examples_labeled"] == 3
    assert stats.loc["curator", "annotator_quality"] == pytest.approx(expected.mean())
    assert np.isnan(stats.loc["curator", "agreement_with_consensus"])


def test_multiannotator_signal_with_annotators_on_disjoint_samples():
    """Two annotators, never on the same sample: cleanlab refuses; each vote is its sample's consensus."""
    labels = np.array([0, 1, 2, 0])
    probs = _confident_probs(labels)
    votes = pd.DataFrame({"ann": [0, 1, np.nan, np.nan], "bob": [np.nan, np.nan, 2, 1]}, dtype=float)
    inp = sig.SignalInputs(labels=labels, pred_probs=probs, votes=votes)
    out = sig.multiannotator_signal(inp)
    assert out["consensus_label"].tolist() == [0, 1, 2, 1]
    assert out["consensus_disagrees"].tolist() == [0, 0, 0, 1]
    stats = inp.extra["annotator_stats"]
    assert stats["num_examples_labeled"].to_dict() == {"ann": 2, "bob": 2}
    assert stats.loc["ann", "annotator_quality"] > stats.loc["bob", "annotator_quality"]


def test_multiannotator_signal_with_some_annotators_on_some_samples_uses_cleanlab():
    from cleanlab.multiannotator import get_label_quality_multiannotator

    labels = np.array([0, 1, 2, 0, 1])
    probs = _confident_probs(labels)
    votes = pd.DataFrame({"ann": [0, 1, 2, 0, np.nan], "bob": [np.nan, 1, 0, np.nan, np.nan],
                          "cy": [np.nan, np.nan, 2, np.nan, np.nan]}, dtype=float)
    out = sig.multiannotator_signal(sig.SignalInputs(labels=labels, pred_probs=probs, votes=votes))
    ref = get_label_quality_multiannotator(votes.iloc[:4], probs[:4], verbose=False)["label_quality"]
    assert np.allclose(out["consensus_quality"][:4], ref["consensus_quality_score"])
    assert out["consensus_label"][:4].tolist() == ref["consensus_label"].tolist() == [0, 1, 2, 0]
    assert np.isnan(out["consensus_label"][4])  # nobody voted on it
    agreement = out["annotator_agreement"]
    assert np.isnan(agreement[[0, 3, 4]]).all()  # single votes and no votes
    assert agreement[1] == 1.0 and agreement[2] == pytest.approx(2 / 3)


def test_multiannotator_signal_when_all_annotators_agree():
    labels = np.array([0, 1, 2, 0])
    probs = _confident_probs(labels)
    votes = pd.DataFrame({"ann": labels, "bob": labels}, dtype=float)
    inp = sig.SignalInputs(labels=labels, pred_probs=probs, votes=votes)
    out = sig.multiannotator_signal(inp)
    assert out["consensus_label"].tolist() == [0, 1, 2, 0]
    assert out["annotator_agreement"].tolist() == [1.0] * 4
    assert out["consensus_disagrees"].tolist() == [0.0] * 4
    assert ((out["consensus_quality"] > 0.5) & (out["consensus_quality"] <= 1)).all()
    stats = inp.extra["annotator_stats"]
    assert stats["agreement_with_consensus"].tolist() == [1.0, 1.0]


def test_multiannotator_signal_ignores_votes_for_unknown_classes():
    labels = np.array([0, 1, 2, 0])
    probs = _confident_probs(labels)
    votes = pd.DataFrame({"ann": [0, 7, -1, 1.5], "bob": [0, 1, np.nan, np.nan]})
    out = sig.multiannotator_signal(sig.SignalInputs(labels=labels, pred_probs=probs, votes=votes))
    assert out["consensus_label"][:2].tolist() == [0, 1]
    assert np.isnan(out["consensus_label"][2:]).all()  # their only votes were not classes
    assert out["annotator_agreement"][0] == 1.0 and np.isnan(out["annotator_agreement"][1])
    text = pd.DataFrame({"ann": ["purple_bird", None, None, None]}, dtype=object)
    only_unknown = sig.SignalInputs(labels=labels, pred_probs=probs, votes=text)
    with pytest.raises(sig.SignalUnavailable, match="known class"):
        sig.multiannotator_signal(only_unknown)
    assert "consensus_quality" not in sig.compute_signals(only_unknown, ["cleanlab", "multiannotator"])


def test_multiannotator_signal_with_one_voted_sample():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = _confident_probs(labels)
    votes = pd.DataFrame({"curator": [np.nan, np.nan, 0, np.nan, np.nan, np.nan]}, dtype=float)
    values = sig.compute_signals(sig.SignalInputs(labels=labels, pred_probs=probs, votes=votes),
                                 ["cleanlab", "multiannotator"])
    assert np.isnan(values["consensus_quality"]).sum() == 5
    assert values["consensus_quality"][2] == pytest.approx(0.1)  # the model gives the vote's class 0.1
    assert values["consensus_disagrees"][2] == 1.0
    weights = sig.check_weights(SignalsSection().weights)
    assert np.isfinite(noise_score(values, weights, sig.directions())).all()

# ---- the flag step on a real store ---------------------------------------------------------------------
def test_flag_writes_scores_tags_views_and_warehouse(predicted):
    p = predicted
    ds = store.dataset(p)
    # a wrong label on a red bird: it should rank high
    red = ds.match_tags("train").match({"ground_truth.label": "red_bird"}).first()
    store.set_labels(p, ds, {red.id: "blue_bird"}, source="curator", actor="test")
    predict(p, head="logreg", folds=3)
    report = flag(p)
    ds.reload()
    assert report.assessed == 24 and report.not_assessable == 0
    scores = np.array(ds.values("noise_score"), dtype=float)
    assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    assert ds[red.id].noise_score >= np.quantile(scores, 0.8)
    assert set(ds.list_saved_views()) >= {"to_review", "outliers", "near_duplicates", "scarce_classes"}
    queue = ds.load_saved_view("to_review")
    assert len(queue) == report.flagged == ds.count_values("label_issue").get(True, 0)
    q = queue.values("noise_score")
    assert q == sorted(q, reverse=True)
    # every class has fewer than 10 samples: all scarce
    assert len(ds.load_saved_view("scarce_classes")) == 24
    wh = store.warehouse(p)
    rows = wh.query("SELECT signal, count(*) AS n FROM signals WHERE run_id = ? GROUP BY signal", [report.run_id])
    counts = dict(zip(rows["signal"], rows["n"]))
    assert counts["noise_score"] == 24 and counts["label_quality"] == 24 and "knn_disagreement" in counts
    assert counts["mistakenness"] == 24 and counts["uniqueness"] == 24  # FiftyOne Brain, from logits and embeddings
    assert ds.bounds("mistakenness")[0] >= 0
    snap = wh.query("SELECT count(*) FROM samples WHERE noise_score IS NOT NULL").iloc[0, 0]
    assert snap == 24


def test_flag_weights_come_from_the_project_file(predicted):
    from fieldguide.config import dump_config, open_project

    p = predicted
    p.config.signals.weights = {"knn_disagreement": 1.0}  # the noise score is then the kNN signal's rank alone
    p.config_path.write_text(dump_config(p.config))
    report = flag(open_project(p.root))
    ds = store.dataset(p)
    knn = store.warehouse(p).query("SELECT sample_id, value FROM signals WHERE run_id = ? AND signal = ?",
                                   [report.run_id, "knn_disagreement"]).set_index("sample_id")["value"]
    ids, scores = ds.select(knn.index.tolist(), ordered=True).values(["id", "noise_score"])
    assert ids == knn.index.tolist() and len(ids) == report.assessed
    assert np.allclose(scores, percentile_rank(knn.to_numpy(), "high"))

    p.config.signals.weights = {"knn_disagreement": 1.0, "knn_disagremeent": 0.5}
    p.config_path.write_text(dump_config(p.config))
    res = CliRunner().invoke(app, ["--project", str(p.root), "flag"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith(
        "error: signals.weights: 'knn_disagremeent' is not a signal output (known: ")


def test_reflag_replaces_tags_and_keeps_old_signals(predicted):
    p = predicted
    first = flag(p)
    ds = store.dataset(p)
    ds.tag_samples("to_review")  # stale tags everywhere: the next run must clear them
    second = flag(p)
    ds.reload()
    assert ds.count_sample_tags().get("to_review", 0) == second.flagged
    wh = store.warehouse(p)
    runs = wh.query("SELECT DISTINCT run_id FROM signals")["run_id"].tolist()
    assert {first.run_id, second.run_id} <= set(runs)


def test_tiny_class_and_missing_prediction_are_not_assessable(predicted, tmp_path):
    p = predicted
    extra = tmp_path / "extra"
    for i in range(2):
        make_image(extra / "train" / "rare_bird" / f"r{i}.jpg", (250, 250, 0), seed=100 + i)
    ingest(p, extra, fmt="folder")  # 2 samples of a new class, and no prediction for them yet
    report = flag(p)
    assert report.assessed == 24 and report.not_assessable == 2
    assert report.not_assessable_reasons == {"no prediction": 2}
    embed(p)
    predict(p, head="logreg", folds=3)
    report = flag(p)
    assert report.not_assessable == 2
    assert list(report.not_assessable_reasons) == ["class with fewer than 3 labeled samples"]
    ds = store.dataset(p)
    rare = ds.match({"ground_truth.label": "rare_bird"})
    assert rare.values("noise_score") == [None, None] and rare.values("label_issue") == [None, None]


def test_flag_uses_crowd_votes(predicted, image_folder, tmp_path):
    p = predicted
    ds = store.dataset(p)
    rows = []
    for path, label in zip(*ds.match_tags("train").values(["filepath", "ground_truth.label"])):
        rows.append((path, "ann", label))
        rows.append((path, "bob", label if hash(path) % 4 else "green_bird"))
    votes = tmp_path / "votes.csv"
    with votes.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "annotator", "label"])
        w.writerows(rows)
    ingest(p, image_folder, fmt="folder", votes=votes)
    report = flag(p)
    assert "consensus_quality" in report.signals
    ann = store.warehouse(p).query("SELECT annotator, quality FROM annotators WHERE run_id = ?", [report.run_id])
    assert set(ann["annotator"]) == {"ann", "bob"}
    ds.reload()
    assert set(ds.match_tags("train").distinct("consensus_label")) <= {"red_bird", "green_bird", "blue_bird"}


def test_flag_before_predict_is_a_clear_error(ingested):
    with pytest.raises(NotReadyError, match="fieldguide predict"):
        flag(ingested)


def test_signals_export_has_one_row_per_sample(predicted, tmp_path):
    p = predicted
    flag(p)
    out, rows = export_signals(p, tmp_path / "out" / "signals.csv")
    df = pd.read_csv(out)
    assert rows == len(df) == 24
    assert list(df.columns[:5]) == BASE_COLUMNS
    assert {"label_quality", "knn_disagreement"} <= set(df.columns)
    assert df["noise_score"].between(0, 1).all()
    assert set(df["label"]) == {"red_bird", "green_bird", "blue_bird"}


def test_project_noise_benchmark_writes_a_table(predicted):
    table, path = project_noise_benchmark(predicted, rates=(0.2,), kinds=("symmetric",), folds=3, progress=False)
    assert path.exists() and len(pd.read_csv(path)) == len(table)
    assert "noise_score" in set(table["signal"])
    with pytest.raises(FieldguideError, match="noise kind"):
        project_noise_benchmark(predicted, kinds=("bogus",))


def test_cli_flag_export_and_bench(predicted, tmp_path):
    runner = CliRunner()
    root = str(predicted.root)
    # the CLI reads the config from disk: write the tiny backbone into it
    from fieldguide.config import dump_config

    predicted.config_path.write_text(dump_config(predicted.config))
    # a real process: FiftyOne's own log handlers write to the process's stdout, which --json owns
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FIELDGUIDE_PROJECT"}
    done = subprocess.run([sys.executable, "-m", "fieldguide.cli", "--project", root, "flag", "--json"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["assessed"] == 24
    out = tmp_path / "s.csv"
    res = runner.invoke(app, ["--project", root, "signals", "export", str(out)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out)) == 24
    res = runner.invoke(app, ["--project", root, "bench", "noise", "--rates", "0.2", "--kinds", "symmetric",
                              "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert "noise_score" in res.output
    res = runner.invoke(app, ["--project", root, "bench", "noise", "--rates", "2"])
    assert res.exit_code == 1 and "between 0 and 1" in res.output
