"""Label-issue signals, the combined noise score, the flag step, the review queue, export, benchmark."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.config.sections import DEFAULT_SIGNAL_WEIGHTS, SignalsSection
from fieldguide.curation import signals as sig
from fieldguide.curation.flag import flag
from fieldguide.curation.noise_bench import inject_noise, project_noise_benchmark, run_noise_benchmark
from fieldguide.curation.noise_score import flag_top, noise_score, percentile_rank
from fieldguide.errors import FieldguideError, NotReadyError
from fieldguide.models.embed import embed
from fieldguide.models.predict import predict
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from conftest import CLASS_COLORS, blobs, make_image, use_tiny_backbone


# ---- functions of arrays -------------------------------------------------------------------------
def test_percentile_rank_orients_and_keeps_nan():
    r = percentile_rank(np.array([0.1, np.nan, 0.9, 0.5]), "high")
    assert r[2] == 1.0 and r[0] == 0.0 and np.isnan(r[1])
    low = percentile_rank(np.array([0.1, 0.9, 0.5]), "low")
    assert low[0] == 1.0 and low[1] == 0.0


def test_noise_score_renormalises_over_present_signals():
    signals = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([np.nan, 0.0, 1.0])}
    score = noise_score(signals, {"a": 1.0, "b": 1.0}, {"a": "high", "b": "high"})
    # ranks: a -> 0, 0.5, 1; b -> NaN, 0, 1. Sample 0 has only a's rank; sample 1 the mean of 0.5 and 0
    assert score.tolist() == [0.0, 0.25, 1.0]
    weighted = noise_score(signals, {"a": 3.0, "b": 1.0}, {"a": "high", "b": "low"})  # b: low means noisy
    assert weighted.tolist() == pytest.approx([0.0, (3 * 0.5 + 1 * 1.0) / 4, (3 * 1.0 + 1 * 0.0) / 4])
    with pytest.raises(ValueError, match="none of the weighted signals"):
        noise_score({"c": np.ones(3)}, {"a": 1.0}, {})


def test_flag_top_never_flags_nan():
    mask = flag_top(np.array([0.9, np.nan, 0.5, 0.7]), 3)
    assert mask.tolist() == [True, False, True, True]
    assert flag_top(np.array([0.2, 0.1]), 0).sum() == 0


def test_inject_noise_flips_exactly_the_rate_to_other_classes():
    X, y = blobs()
    for kind in ("symmetric", "pairs"):
        noisy = inject_noise(y, 8, 0.2, kind, seed=0, features=X)
        assert (noisy != y).sum() == round(0.2 * len(y))
        assert np.array_equal(noisy, inject_noise(y, 8, 0.2, kind, seed=0, features=X))  # seeded


#: the signals the combined score weighs (Datalab's are reported, not weighed: left out to save time)
_COMBINED = [name for name, spec in sig.registered_signals().items()
             if any(DEFAULT_SIGNAL_WEIGHTS.get(output, 0) > 0 for output in spec.noisy_when)]


def test_benchmark_combined_score_beats_both_cleanlab_rows():
    """Overlapping blobs (spread 1.6: no signal is perfect), 20% symmetric noise, the benchmark as
    ``bench noise`` runs it: its ``label_quality`` row is cleanlab's ``rank.get_label_quality_scores``,
    its ``cl_issue`` row ``filter.find_label_issues``, all on the same pred_probs as the combined score."""
    X, y = blobs(spread=1.6)
    table = run_noise_benchmark(X, y, 8, rates=(0.2,), kinds=("symmetric",), folds=5, progress=False,
                                signals=_COMBINED, entropy_weights=(0.0, 0.5))
    by = table.set_index("signal")
    assert {"noise_score", "cl_issue", "label_quality", "knn_disagreement", "prediction_differs"} <= set(by.index)
    # the weight sweep: weight 0 is the score without the entropy signal
    assert by.loc["noise_score@entropy=0", "auroc"] == pytest.approx(by.loc["noise_score_without_entropy", "auroc"])
    assert "noise_score@entropy=0.5" in by.index
    assert by.loc["noise_score", "flagged"] == by.loc["cl_issue", "flagged"]  # judged on cleanlab's own budget
    for cleanlab_row in ("label_quality", "cl_issue"):
        assert by.loc["noise_score", "auroc"] > by.loc[cleanlab_row, "auroc"], cleanlab_row
        assert by.loc["noise_score", "f1"] > by.loc[cleanlab_row, "f1"], cleanlab_row
        assert by.loc["noise_score", "precision_top5"] >= by.loc[cleanlab_row, "precision_top5"], cleanlab_row


@pytest.mark.parametrize("kind", ["symmetric", "pairs"])
def test_combined_score_beats_cleanlab_on_the_same_pred_probs(kind):
    """The combined score as ``flag`` computes it (registered signals, their weights), against cleanlab's
    two outputs called here, all on one set of out-of-fold pred_probs made with scikit-learn."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    X, y = blobs(spread=1.6)
    noisy = inject_noise(y, 8, 0.2, kind, seed=0, features=X)
    flipped = noisy != y
    probs = cross_val_predict(LogisticRegression(max_iter=1000), X, noisy, method="predict_proba",
                              cv=StratifiedKFold(5, shuffle=True, random_state=0))
    values = sig.compute_signals(sig.SignalInputs(labels=noisy, pred_probs=probs, features=X), _COMBINED)
    score = noise_score(values, DEFAULT_SIGNAL_WEIGHTS, sig.directions())
    quality = get_label_quality_scores(noisy, probs)
    issues = find_label_issues(noisy, probs)
    n = int(issues.sum())
    # the ranking: flipped labels above clean ones, better than cleanlab's label quality
    assert roc_auc_score(flipped, score) > roc_auc_score(flipped, -quality)
    # the flagged set (top-n by score, n = cleanlab's count): better than cleanlab's own set, and at least
    # as good as label quality's top-n (on symmetric noise the two sets are equally good here)
    assert f1_score(flipped, flag_top(score, n)) > f1_score(flipped, issues)
    assert f1_score(flipped, flag_top(score, n)) >= f1_score(flipped, flag_top(-quality, n))


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
    from cleanlab.multiannotator import get_label_quality_multiannotator

    labels = np.array([0, 1, 2, 0])
    probs = _confident_probs(labels)
    probs[3] = [0.4, 0.3, 0.3]  # the model is less sure of the last one
    votes = pd.DataFrame({"ann": labels, "bob": labels}, dtype=float)
    inp = sig.SignalInputs(labels=labels, pred_probs=probs, votes=votes)
    out = sig.multiannotator_signal(inp)
    assert out["consensus_label"].tolist() == [0, 1, 2, 0]
    assert out["annotator_agreement"].tolist() == [1.0] * 4
    assert out["consensus_disagrees"].tolist() == [0.0] * 4
    ref = get_label_quality_multiannotator(votes, probs, verbose=False)["label_quality"]
    assert np.allclose(out["consensus_quality"], ref["consensus_quality_score"])
    assert out["consensus_quality"][3] < out["consensus_quality"][0]  # the doubtful model lowers it
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
    ids, stored = ds.values(["id", "noise_score"])
    scores = dict(zip(ids, stored))
    # the wrong label on a red bird is the noisiest sample, flagged and the most "mistaken" for the Brain too
    assert max(scores, key=scores.get) == red.id and ds[red.id].label_issue is True
    assert max(zip(*ds.values(["mistakenness", "id"])))[1] == red.id
    assert {"noise_score", "review_state", "tags"} <= set(ds.list_indexes())  # what the views sort and filter by
    # the stored score is the weighted rank mean of the signals the run wrote to the warehouse
    wh = store.warehouse(p)
    long = wh.query("SELECT sample_id, signal, value FROM signals WHERE run_id = ?", [report.run_id])
    wide = long.pivot(index="sample_id", columns="signal", values="value").loc[ids]
    weights = p.config.signals.weights  # the project's [signals] weights
    expected = noise_score({k: wide[k].to_numpy() for k in weights if k in wide}, weights, sig.directions())
    np.testing.assert_allclose(np.array(stored, dtype=float), expected, atol=1e-9)
    np.testing.assert_allclose(wide["noise_score"].to_numpy(), expected, atol=1e-9)
    assert set(ds.list_saved_views()) >= {"to_review", "outliers", "near_duplicates", "scarce_classes"}
    queue = ds.load_saved_view("to_review")
    flagged_tags = ds.match({"label_issue": True}).values("tags")
    assert report.flagged == len(flagged_tags) == ds.count_values("label_issue").get(True, 0)
    # test samples stay out of the queue (flag --include-test queues them)
    assert len(queue) == report.queued == sum("test" not in t for t in flagged_tags)
    assert report.test_left_out == sum("test" in t for t in flagged_tags)
    q = queue.values("noise_score")
    assert q == sorted(q, reverse=True)
    # every class has fewer than 10 samples: all scarce
    assert len(ds.load_saved_view("scarce_classes")) == 24
    counts = long.groupby("signal").size()
    assert counts["noise_score"] == 24 and counts["label_quality"] == 24 and "knn_disagreement" in counts
    assert counts["mistakenness"] == 24 and counts["uniqueness"] == 24  # FiftyOne Brain, from logits and embeddings
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


def test_flag_leaves_brain_mistakenness_out_past_its_maximum(predicted):
    """Past curation.brain_mistakenness_max assessed samples flag skips FiftyOne Brain's
    mistakenness (it reads every sample's logits); every other signal is still written."""
    from fieldguide.config import dump_config, open_project

    p = predicted
    p.config.curation.brain_mistakenness_max = 23  # one fewer than the 24 assessed samples
    p.config_path.write_text(dump_config(p.config))
    report = flag(open_project(p.root))
    counts = store.warehouse(p).query("SELECT signal, count(*) AS n FROM signals WHERE run_id = ? GROUP BY signal",
                                      [report.run_id]).set_index("signal")["n"]
    assert report.assessed == 24 and "mistakenness" not in counts
    assert counts["uniqueness"] == counts["noise_score"] == counts["label_quality"] == 24
    assert not store.dataset(p).has_sample_field("mistakenness")  # never computed on this store


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
    """ann votes every sample's label; bob votes another class on every third sample (in path order)."""
    p = predicted
    ds = store.dataset(p)
    classes = sorted(CLASS_COLORS)
    rows = []
    train = sorted(zip(*ds.match_tags("train").values(["filepath", "ground_truth.label"])))
    for i, (path, label) in enumerate(train):
        rows.append((path, "ann", label))
        rows.append((path, "bob", classes[(classes.index(label) + 1) % 3] if i % 3 == 0 else label))
    votes = tmp_path / "votes.csv"
    with votes.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "annotator", "label"])
        w.writerows(rows)
    ingest(p, image_folder, fmt="folder", votes=votes)
    report = flag(p)
    assert "consensus_quality" in report.signals
    ann = store.warehouse(p).query("SELECT annotator, quality, agreement, num_labels FROM annotators "
                                   "WHERE run_id = ?", [report.run_id]).set_index("annotator")
    assert ann["num_labels"].to_dict() == {"ann": 18, "bob": 18}
    assert ann.loc["ann", "quality"] > ann.loc["bob", "quality"]
    assert ann.loc["ann", "agreement"] > ann.loc["bob", "agreement"]
    ds.reload()
    # the model sides with ann where the two disagree: the consensus is the given label everywhere
    labels, consensus, agreement = ds.match_tags("train").values(
        ["ground_truth.label", "consensus_label", "annotator_agreement"])
    assert consensus == labels
    expected = {path: (0.5 if i % 3 == 0 else 1.0) for i, (path, _) in enumerate(train)}
    assert dict(zip(ds.match_tags("train").values("filepath"), agreement)) == expected
    assert set(ds.match_tags("test").values("consensus_label")) == {None}  # no votes, no consensus


def test_datalab_outputs_after_flag(ingested, tiny_weights, image_folder, tmp_path):
    """A byte-identical copy of a red bird and a yellow image among the green birds: Datalab's
    near-duplicate points each at the other, the yellow one is the outlier; the saved views hold them."""
    import shutil

    p = use_tiny_backbone(ingested, tiny_weights)
    p.config.curation.scarce_class_count = 9
    extra = tmp_path / "extra" / "train"
    original = image_folder / "train" / "red_bird" / "red_bird_train_2.jpg"
    (extra / "red_bird").mkdir(parents=True)
    copy = shutil.copy(original, extra / "red_bird" / "copy.jpg")
    odd = make_image(extra / "green_bird" / "odd.jpg", (255, 255, 0), seed=99)
    ingest(p, tmp_path / "extra", fmt="folder")
    embed(p)
    predict(p, head="logreg", folds=3)
    report = flag(p)
    ds = store.dataset(p)
    by_path = dict(zip(*ds.values(["filepath", "id"])))
    a, b = by_path[str(original)], by_path[str(copy)]
    assert report.near_duplicates == 2
    dup = dict(zip(*ds.values(["id", "near_duplicate_of"])))
    assert (dup.pop(a), dup.pop(b)) == (b, a)
    assert set(dup.values()) == {None}
    assert sorted(ds.match_tags("near_duplicate").values("id")) == sorted([a, b])
    assert sorted(ds.load_saved_view("near_duplicates").values("id")) == sorted([a, b])
    # outliers: tagged, counted and listed alike, the most outlying (lowest score) first: the yellow one
    outliers = ds.load_saved_view("outliers")
    assert outliers.values("id") == ds.match_tags("outlier").sort_by("outlier_score").values("id")
    assert len(outliers) == report.outliers >= 1
    assert outliers.first().filepath == str(odd)
    scores = dict(zip(*ds.values(["filepath", "outlier_score"])))
    assert min(scores, key=scores.get) == str(odd)
    wh = store.warehouse(p)
    is_outlier = wh.query("SELECT sample_id FROM signals WHERE run_id = ? AND signal = 'is_outlier' AND value = 1",
                          [report.run_id])["sample_id"]
    assert sorted(is_outlier) == sorted(outliers.values("id"))
    # scarce classes: fewer than 9 labeled samples (blue: 6 train + 2 test; red and green have 9)
    scarce = ds.load_saved_view("scarce_classes")
    assert set(scarce.values("ground_truth.label")) == {"blue_bird"} and len(scarce) == 8
    queue = ds.load_saved_view("to_review")
    assert sorted(queue.values("id")) == sorted(ds.match({"label_issue": True}).values("id"))


def test_flag_before_predict_is_a_clear_error(ingested):
    with pytest.raises(NotReadyError, match="fieldguide predict"):
        flag(ingested)


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
