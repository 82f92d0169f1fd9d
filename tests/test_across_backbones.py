"""Heads across backbones: the head on arrays, and ``predict`` on a real store with two tiny backbones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from typer.testing import CliRunner

from conftest import blobs, make_image, use_tiny_backbone
from fieldguide.cli import app
from fieldguide.curation.flag import flag
from fieldguide.errors import ModelError, NotReadyError
from fieldguide.models.backbones import timm_backbone
from fieldguide.models.crossval import cross_val_pred_probs
from fieldguide.models.evaluate import evaluate
from fieldguide.models.embed import embed, embedded_backbones, load_embeddings
from fieldguide.models.heads.across_backbones import AcrossBackbonesHead
from fieldguide.models.heads import make_head
from fieldguide.models.heads.ensemble import selection_key
from fieldguide.models.predict import load_pred_probs, predict
from fieldguide.platform import store

SECOND = "timm/test_resnet"


def two_views(seed: int = 0):
    """Two backbones' views of the same samples: blocks of 10 and 6 columns, each noisy on its own."""
    X1, y = blobs(n_classes=5, per_class=24, dim=10, spread=2.0, seed=seed)
    X2, _ = blobs(n_classes=5, per_class=24, dim=6, spread=2.0, seed=seed + 1)
    return np.hstack([X1, 30 * X2]), y  # another scale: the second block must not drown the first


def test_auto_keeps_the_combination_that_wins_on_the_inner_folds():
    X, y = two_views()
    auto = AcrossBackbonesHead(dims=(10, 6)).fit(X, y)
    assert set(auto.inner_) == {"weighted", "concat"}
    winner = max(auto.inner_, key=auto.inner_.get)
    assert auto.combination_ == winner
    forced = AcrossBackbonesHead(dims=(10, 6), combine=winner).fit(X, y)
    np.testing.assert_allclose(auto.predict_proba(X), forced.predict_proba(X), atol=1e-9)
    weighted = AcrossBackbonesHead(dims=(10, 6), combine="weighted").fit(X, y)
    assert np.isclose(weighted.weights_.sum(), 1.0) and len(weighted.temperatures_) == 2
    assert weighted.chosen()["inner"]["weighted"]["top1"] == pytest.approx(auto.inner_["weighted"][0], abs=1e-4)
    # out of fold, the combination beats a head on either block alone (each block alone is noisy)
    oof, _ = cross_val_pred_probs(clone(auto), X, y, 5, folds=3)
    alone = [cross_val_pred_probs(make_head("logreg"), X[:, cols], y, 5, folds=3)[0] for cols in (slice(0, 10), slice(10, 16))]
    assert selection_key(oof, y)[0] > max(selection_key(p, y)[0] for p in alone)
    with pytest.raises(ModelError, match="add up to the 16 columns"):
        AcrossBackbonesHead(dims=(10, 5)).fit(X, y)


def embed_two(project, weights):
    """``project`` embedded by the tiny test_efficientnet (the configured backbone) and by a random
    tiny test_resnet."""
    p = use_tiny_backbone(project, weights)
    embed(p)
    embed(p, bb=timm_backbone("test_resnet", None, name=SECOND))
    return p


def test_predict_across_two_backbones_by_default_and_flag_uses_it(ingested, tiny_weights):
    p = embed_two(ingested, tiny_weights)
    first = p.config.models.backbone
    assert embedded_backbones(p) == sorted([first, SECOND])
    report = predict(p, folds=3)
    assert report.backbones == [first, SECOND] and report.by_default and not report.left_out
    run = store.warehouse(p).last_run("predict")
    recorded = json.loads(run["config"])["backbones"]
    assert recorded["names"] == [first, SECOND] and recorded["combination"] == report.combination["combination"]
    assert recorded["combination"] in ("weighted", "concat") and set(recorded["inner"]) == {"weighted", "concat"}
    if recorded["combination"] == "weighted":
        assert set(recorded["weights"]) == {first, SECOND} and sum(recorded["weights"].values()) == pytest.approx(1)

    # the saved rows are the samples' own: recomputed from each backbone's cache looked up by sample id
    pp = load_pred_probs(p)
    caches = [dict(zip(*load_embeddings(p, name))) for name in (first, SECOND)]
    X = np.array([np.concatenate([c[sid] for c in caches]) for sid in pp.sample_ids])
    index = {c: i for i, c in enumerate(pp.classes)}
    train = pp.splits == "train"
    y = np.array([index[v] for v in pp.labels[train]])
    head = AcrossBackbonesHead(dims=tuple(len(c[pp.sample_ids[0]]) for c in caches), inner_folds=3)
    oof, fold = cross_val_pred_probs(head, X[train], y, len(pp.classes), folds=3)
    np.testing.assert_allclose(pp.pred_probs[train], oof, atol=1e-6)
    assert (pp.fold[train] == fold).all()
    np.testing.assert_allclose(pp.pred_probs[~train], clone(head).fit(X[train], y).predict_proba(X[~train]), atol=1e-6)

    # flag reads this run: a sample's label quality is its probability of its label (out of fold in train)
    fr = flag(p)
    flag_run = store.warehouse(p).last_run("flag")
    assert json.loads(flag_run["config"])["predict_run"] == report.run_id
    ds = store.dataset(p)
    quality = dict(zip(*ds.values(["id", "label_quality"])))
    row = {sid: i for i, sid in enumerate(pp.sample_ids)}
    checked = [sid for sid in pp.sample_ids if quality.get(sid) is not None]
    assert len(checked) == fr.assessed > 0
    for sid in checked:
        i = row[sid]
        assert quality[sid] == pytest.approx(pp.pred_probs[i, index[pp.labels[i]]], abs=1e-6)

    # evaluate counts the cost of both backbones: their parameters and MACs add up
    m = evaluate(p, split="test")
    wh = store.warehouse(p)
    costs = wh.query("SELECT backbone, params, macs FROM backbone_costs").set_index("backbone")
    cost = wh.query("SELECT name, value FROM metrics WHERE run_id = ? AND split = 'cost'", [m["run_id"]])
    cost = dict(zip(cost["name"], cost["value"]))
    assert cost["params"] == costs.loc[[first, SECOND], "params"].sum() > costs.loc[first, "params"]
    assert cost["macs"] == costs.loc[[first, SECOND], "macs"].sum()

    # the open-set scores come from a head with real logits (energy varies), as the combiner's did
    saved = np.load(report.pred_probs_path)
    energy = saved["open_set"][~train][:, list(saved["open_set_names"]).index("energy")]
    assert np.isfinite(energy).all() and np.ptp(energy) > 1e-6

    # one backbone named: the single-backbone path
    single = predict(p, folds=3, backbones=[SECOND])
    assert single.backbones == [SECOND] and not single.combination and not single.by_default

    # every sample a labeled training sample (a folder without splits): nothing to score as unknown
    ds = store.dataset(p)
    ds.untag_samples(["test", "val", "unlabeled"])  # the split is a tag
    ds.tag_samples("train")
    everyone = predict(p, folds=3)
    assert everyone.backbones == [first, SECOND] and everyone.n_fit_all == 0 and everyone.n_unknown == 0


def test_a_backbone_missing_samples_is_an_error_when_named_and_left_out_by_default(ingested, tiny_weights, tmp_path):
    from fieldguide.platform.ingest import ingest

    p = embed_two(ingested, tiny_weights)
    extra = tmp_path / "more"
    for i in range(2):
        make_image(extra / "train" / "red_bird" / f"late_{i}.jpg", (200, 40, 40), seed=900 + i)
    ingest(p, extra, fmt="folder")
    embed(p)  # the configured backbone only: the second lacks the 2 new samples
    first = p.config.models.backbone
    with pytest.raises(NotReadyError, match=f"backbone '{SECOND}': 2 of the 26 samples .*"
                                            f"run 'fieldguide embed --backbone {SECOND}'"):
        predict(p, folds=3, backbones=[first, SECOND])
    report = predict(p, folds=3)
    assert report.backbones == [first] and report.left_out == [SECOND] and not report.by_default
    assert report.n_cross_validated == 20
    # the CLI: one error line naming the command to run (the backbone names come from the caches)
    result = CliRunner().invoke(app, ["--project", str(p.root), "predict", "--folds", "3",
                                      "--backbones", f"{SECOND},{first}"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: backbone '{SECOND}': 2 of the 26 samples")
    assert lines[0].endswith(f"(run 'fieldguide embed --backbone {SECOND}')")


def test_backbone_ensemble_benchmark_on_tiny_arrays(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "backbone_ensemble", Path(__file__).resolve().parents[1] / "benchmarks" / "backbone_ensemble.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    X, y = two_views(seed=4)
    test = np.arange(len(y)) % 4 == 0
    paths = np.array([f"img{i}.jpg" for i in range(len(y))])
    (tmp_path / "arrays").mkdir()
    for name, cols in (("a", slice(0, 10)), ("b", slice(10, 16))):
        np.savez(tmp_path / "arrays" / f"tiny_{name}.npz", X_train=X[~test, cols], y_train=y[~test], X_test=X[test, cols],
                 y_test=y[test], classes=np.array(list("vwxyz")), filepath_train=paths[~test], filepath_test=paths[test])
    rows = {r["method"]: r for r in bench.run_collection(tmp_path, "tiny", ["a", "b"], long_tail=False)}
    assert rows["best single"]["top1"] == max(rows["lr a"]["top1"], rows["lr b"]["top1"])
    chosen = rows["predict default"]["chosen"].split(" ")[0]
    assert chosen in ("weighted", "concat") and rows["predict default"]["top1"] == rows[chosen]["top1"]
    # rows of another image order are refused
    np.savez(tmp_path / "arrays" / "tiny_b.npz", X_train=X[~test, 10:], y_train=y[~test], X_test=X[test, 10:],
             y_test=y[test], classes=np.array(list("vwxyz")), filepath_train=paths[~test][::-1], filepath_test=paths[test])
    with pytest.raises(NotReadyError, match="not the same images"):
        bench.load_arrays(tmp_path, "tiny", ["a", "b"])
