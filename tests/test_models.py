"""Backbones from local files, the embedding cache, out-of-sample predictions, evaluation."""

from __future__ import annotations


import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from fieldguide.errors import ModelError, NotReadyError
from fieldguide.models.backbones import load_backbone
from fieldguide.models.crossval import cross_val_pred_probs
from fieldguide.models.embed import embed, load_embeddings
from fieldguide.models.evaluate import classification_metrics, evaluate, expected_calibration_error
from fieldguide.models.heads import make_head
from fieldguide.models.heads.ensemble import EnsembleHead, tempered
from fieldguide.models.heads.knn import KNNHead
from fieldguide.models.heads.logreg import LogRegHead
from fieldguide.models.heads.mlp import MLPHead
from fieldguide.models.predict import load_pred_probs, predict
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from conftest import CLASS_COLORS, make_image, use_tiny_backbone


def test_tiny_backbone_loads_from_safetensors_and_state_dict(tiny_weights, tmp_path):
    bb = load_backbone("timm/test_efficientnet", tiny_weights)
    ref = timm.create_model("test_efficientnet", pretrained=False)
    ref.load_state_dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tiny_weights)))
    ref.reset_classifier(0)
    ref.eval()
    x = torch.randn(2, 3, bb.input_size, bb.input_size)
    with torch.inference_mode():
        assert torch.allclose(bb.model(x), ref(x), atol=1e-5)
    pth = tmp_path / "tiny.pth"
    torch.save({"state_dict": ref.state_dict()}, pth)
    bb2 = load_backbone("timm/test_efficientnet", pth)
    assert bb2.dim == bb.dim == ref.num_features
    assert bb2.weights_id != bb.weights_id  # another file, another cache key


def test_missing_or_mismatched_weights_are_one_line_errors(tmp_path, tiny_weights):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelError) as e:
        load_backbone("timm/test_efficientnet", missing)
    assert str(missing) in str(e.value) and "timm/test_efficientnet" in str(e.value) and "\n" not in str(e.value)
    other = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(other))
    with pytest.raises(ModelError) as e:
        load_backbone("timm/test_efficientnet", other)
    assert "does not fit" in str(e.value) and str(other) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match="does not fit|tensors"):
        load_backbone("efficientnet_lite0", other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights file") as e:
        load_backbone("timm/test_efficientnet", garbage)
    assert str(garbage) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match="no local weights"):
        load_backbone("timm/test_efficientnet")
    with pytest.raises(ModelError, match="unknown backbone"):
        load_backbone("resnet9000")


def test_default_backbone_real_weights_load_strict():
    bb = load_backbone("efficientnet_lite0")
    assert bb.dim == 1280 and bb.input_size == 224
    assert sum(p.numel() for p in bb.model.parameters()) > 3_000_000
    # the ImageNet stem is not random: its filters have structure (random init is ~zero-mean noise)
    stem = bb.model.conv_stem.weight.detach()
    assert stem.abs().mean() > 0.05


def test_transformers_backbone_from_a_local_folder(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
    folder = tmp_path / "tiny-vit"
    ViTModel(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    bb = load_backbone(f"hf/{folder}")
    assert bb.dim == 32 and bb.input_size == 32
    with torch.inference_mode():
        assert bb.model(torch.randn(3, 3, 32, 32)).shape == (3, 32)


def test_embed_caches_and_embeds_only_new_or_changed(ingested, tiny_weights, tmp_path):
    p = use_tiny_backbone(ingested, tiny_weights)
    first = embed(p)
    assert (first.embedded, first.cached) == (24, 0)
    ids, X = load_embeddings(p)
    assert X.shape == (24, 256)
    # a cached row is the backbone's output on that image, recomputed here
    from PIL import Image

    bb = load_backbone("timm/test_efficientnet", tiny_weights)
    path = store.dataset(p)[ids[5]].filepath
    with Image.open(path) as im, torch.inference_mode():
        direct = bb.model(bb.transform()(im.convert("RGB"))[None]).numpy()[0]
    np.testing.assert_allclose(X[5], direct, rtol=1e-4, atol=1e-5)
    second = embed(p)
    assert (second.embedded, second.cached) == (0, 24)
    more = tmp_path / "more"
    for i in range(10):
        make_image(more / "red_bird" / f"extra_{i}.jpg", CLASS_COLORS["red_bird"], seed=100 + i)
    ingest(p, more, fmt="folder")
    third = embed(p)
    assert (third.embedded, third.cached) == (10, 24)
    ids2, X2 = load_embeddings(p)
    assert len(ids2) == 34
    np.testing.assert_allclose(X2[: len(ids)], X, rtol=1e-5)  # cached rows are reused, not recomputed


def test_embed_skips_and_reports_an_image_that_went_bad(ingested, tiny_weights):
    p = use_tiny_backbone(ingested, tiny_weights)
    ds = store.dataset(p)
    victim = ds.first()
    with open(victim.filepath, "wb") as f:
        f.write(b"not a jpeg any more")
    ds.set_values("filehash", {victim.id: "changed"}, key_field="id")
    report = embed(p)
    assert report.embedded == 23
    assert [path for path, _ in report.skipped] == [victim.filepath]
    assert victim.id not in load_embeddings(p)[0]


def test_heads_follow_the_sklearn_contract_and_learn(rng):
    centers = rng.normal(size=(4, 16)) * 3
    y = np.repeat(np.arange(4), 30)
    X = centers[y] + rng.normal(size=(120, 16))
    for head in (LogRegHead(), MLPHead(epochs=30), KNNHead(k=5), EnsembleHead()):
        head.fit(X[::2], y[::2])
        proba = head.predict_proba(X[1::2])
        assert proba.shape == (60, 4)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        assert (head.predict(X[1::2]) == y[1::2]).mean() > 0.9, type(head).__name__
    with pytest.raises(ModelError, match="unknown head"):
        make_head("forest")


def test_ensemble_weights_never_lose_to_the_best_member_on_inner_folds(rng):
    centers = rng.normal(size=(5, 12)) * 1.5
    y = np.repeat(np.arange(5), 30)
    X = centers[y] + rng.normal(size=(150, 12))
    ens = EnsembleHead(members=("logreg", "knn")).fit(X, y)
    assert ens.weights_.shape == (2,) and np.isclose(ens.weights_.sum(), 1.0)
    oof = [cross_val_pred_probs(make_head(m), X, y, 5, folds=3)[0] for m in ("logreg", "knn")]
    best_member = max((p.argmax(axis=1) == y).mean() for p in oof)
    mixed = sum(w * tempered(p, t) for w, p, t in zip(ens.weights_, oof, ens.temperatures_))
    assert (mixed.argmax(axis=1) == y).mean() >= best_member
    fixed = EnsembleHead(members=("logreg", "knn"), weights=(1.0, 0.0)).fit(X, y)
    np.testing.assert_allclose(fixed.predict_proba(X), LogRegHead().fit(X, y).predict_proba(X), atol=1e-9)


class RecordingHead(LogRegHead):
    """A logistic-regression head that remembers which rows it was fit on."""

    fitted_rows: list = []

    def fit(self, X, y):
        RecordingHead.fitted_rows.append({tuple(np.round(r, 6)) for r in X})
        return super().fit(X, y)

    def predict_proba(self, X):
        seen = RecordingHead.fitted_rows[-1]
        assert not any(tuple(np.round(r, 6)) in seen for r in X), "a head predicted a row it was fit on"
        return super().predict_proba(X)


def test_cross_validation_never_predicts_a_sample_it_saw(rng):
    X = rng.normal(size=(60, 8))
    y = np.repeat(np.arange(3), 20)
    y[-1] = 3  # a class with a single sample: no crash, its column 0 where it was held out
    probs, fold = cross_val_pred_probs(RecordingHead(), X, y, 4, folds=5)
    assert probs.shape == (60, 4)
    assert np.bincount(fold).tolist() == [12] * 5  # every sample held out once, stratified into equal folds
    assert len(RecordingHead.fitted_rows) >= 5
    assert probs[-1, 3] == 0.0


def test_predict_writes_out_of_sample_predictions(ingested, tiny_weights):
    p = use_tiny_backbone(ingested, tiny_weights)
    embed(p)
    report = predict(p, head="logreg", folds=5)
    pp = load_pred_probs(p)
    assert report.n_cross_validated == 18 and report.n_fit_all == 6
    train = pp.splits == "train"
    assert (pp.fold[train] >= 0).all() and (pp.fold[~train] == -1).all()
    assert len(set(pp.fold[train])) == 5
    np.testing.assert_allclose(pp.pred_probs.sum(axis=1), 1.0, atol=1e-6)
    # the store's predictions are the saved pred_probs: argmax label, its probability, log-probabilities
    ds = store.dataset(p)
    row = {sid: i for i, sid in enumerate(pp.sample_ids)}
    for sid, pr in zip(*ds.values(["id", "prediction"])):
        probs = pp.pred_probs[row[sid]]
        assert pr.label == pp.classes[probs.argmax()] and pr.confidence == pytest.approx(probs.max())
        np.testing.assert_allclose(pr.logits, np.log(np.clip(probs, 1e-12, None)))
    # the reported out-of-fold top-1 is the share of training samples whose stored prediction is their label
    labels, predicted = ds.match_tags("train").values(["ground_truth.label", "prediction.label"])
    assert report.oof_top1 == pytest.approx(np.mean(np.array(labels) == np.array(predicted)))
    assert report.oof_top1 > 0.8  # colours are easy: even random features separate them


def test_evaluate_writes_metrics_and_confusion_plot(ingested, tiny_weights):
    p = use_tiny_backbone(ingested, tiny_weights)
    embed(p)
    predict(p, head="knn", folds=3)
    m = evaluate(p, split="test")
    # recomputed here with scikit-learn from the stored predictions of the test split
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = store.dataset(p).match_tags("test").values(["ground_truth.label", "prediction.label"])
    assert m["n"] == 6 and m["top1"] == pytest.approx(accuracy_score(truth, predicted))
    assert m["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert m["top5"] == 1.0  # 3 classes: the top 5 hold every class
    assert (p.root / "runs" / m["run_id"] / "confusion.png").stat().st_size > 1000
    wh = store.warehouse(p)
    names = set(wh.query("SELECT name FROM metrics WHERE run_id = ?", [m["run_id"]])["name"])
    assert {"top1", "top5", "macro_f1", "ece", "cost_score"} <= names
    cls = wh.query("SELECT * FROM class_metrics WHERE run_id = ?", [m["run_id"]])
    assert set(cls["class"]) == set(CLASS_COLORS) and cls["support"].sum() == 6
    assert wh.query("SELECT sum(count) AS n FROM confusions WHERE run_id = ?", [m["run_id"]]).iloc[0, 0] == 6
    with pytest.raises(NotReadyError):
        evaluate(p, split="val")


def test_metric_functions():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])
    cost = np.array([[0, 1, 1], [1, 0, 1], [10, 1, 0]])
    m = classification_metrics(y, probs, ["a", "b", "c"], cost)
    assert m["top1"] == 0.75 and m["top5"] == 1.0
    assert m["cost_score"] == 10 / 4
    assert m["most_confused"] == [{"true": "c", "predicted": "a", "count": 1}]
    assert expected_calibration_error(np.array([0, 0]), np.array([[1.0, 0.0], [1.0, 0.0]])) == 0.0


def test_cost_matrix_csv_gives_the_expected_cost_by_hand(tmp_path):
    """FungiCLEF's dangerous confusions: calling the poisonous ``c`` an edible ``a`` costs 10."""
    from fieldguide.errors import ConfigError
    from fieldguide.models.evaluate import load_cost_matrix

    path = tmp_path / "cost.csv"
    path.write_text("true,predicted,cost\nc,a,10\na,b,0.5\n")
    cost = load_cost_matrix(path, ["a", "b", "c"])
    np.testing.assert_array_equal(cost, [[0, 0.5, 1], [1, 0, 1], [10, 1, 0]])
    y = np.array([0, 0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1],   # a -> a: 0
                      [0.2, 0.7, 0.1],   # a -> b: 0.5
                      [0.1, 0.3, 0.6],   # b -> c: 1 (not in the CSV)
                      [0.6, 0.1, 0.3],   # c -> a: 10
                      [0.1, 0.1, 0.8]])  # c -> c: 0
    assert classification_metrics(y, probs, ["a", "b", "c"], cost)["cost_score"] == pytest.approx(11.5 / 5)
    assert classification_metrics(y, probs, ["a", "b", "c"])["cost_score"] == pytest.approx(3 / 5)  # 0/1: errors
    np.testing.assert_array_equal(load_cost_matrix("", ["a", "b"]), [[0, 1], [1, 0]])
    bad = tmp_path / "bad.csv"
    bad.write_text("true,predicted,cost\na,b,2\nd,a,3\n")
    with pytest.raises(ConfigError) as e:
        load_cost_matrix(bad, ["a", "b", "c"])
    assert str(e.value) == f"{bad}:3: unknown class 'd'"
    bad.write_text("true,guess,cost\na,b,2\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2: expected columns true,predicted,cost"):
        load_cost_matrix(bad, ["a", "b", "c"])
    bad.write_text("true,predicted,cost\na,b,lots\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2: expected columns true,predicted,cost"):
        load_cost_matrix(bad, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="nope.csv does not exist"):
        load_cost_matrix(tmp_path / "nope.csv", ["a"])


def test_import_embeddings_from_another_project_by_file_hash(ingested, tiny_weights, image_folder, tmp_path):
    from fieldguide.config import init_project
    from fieldguide.models.embed import import_embeddings

    src = use_tiny_backbone(ingested, tiny_weights)
    embed(src)
    _, X_src = load_embeddings(src)
    dst = use_tiny_backbone(init_project(tmp_path / "scratch", "scratch"), tiny_weights)
    ingest(dst, image_folder, fmt="folder")
    assert import_embeddings(dst, src) == 24
    assert embed(dst).embedded == 0  # nothing left to embed
    ids, X = load_embeddings(dst)
    paths = dict(zip(*store.dataset(dst).values(["id", "filepath"])))
    src_ids, _ = load_embeddings(src)
    src_paths = dict(zip(*store.dataset(src).values(["id", "filepath"])))
    by_path = {src_paths[s]: X_src[i] for i, s in enumerate(src_ids)}
    for i, sid in enumerate(ids):
        np.testing.assert_allclose(X[i], by_path[paths[sid]])
    assert import_embeddings(dst, src) == 0  # idempotent
