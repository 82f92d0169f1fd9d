"""The benchmark suite (``fieldguide bench suite``): its baselines, its split, its side-by-side table,
on tiny arrays; and the command end to end on a tiny folder collection (tiny backbone)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.preprocessing import normalize

from fieldguide.errors import FieldguideError
from fieldguide.suite import (
    COLUMNS, FAMILIES, Collection, Features, Plan, compare_heads, detection_scores, full_batch_linear_ce,
    labeled_subset, parse_collection, plain_lr_oof, resolve_collections, run_comparisons, side_by_side,
    suite_split,
)


def blobs(n_per_class: int, n_classes: int = 4, dim: int = 16, spread: float = 0.6, seed: int = 0):
    """Gaussian blobs around random unit centres: (X, y), classes in blocks."""
    rng = np.random.default_rng(seed)
    centres = normalize(rng.normal(size=(n_classes, dim))) * 3
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[y] + rng.normal(scale=spread, size=(len(y), dim))
    return X.astype(np.float32), y


def tiny_features(n_train=20, n_test=10, n_classes=4, spread=0.6) -> Features:
    X, y = blobs(n_train + n_test, n_classes, spread=spread)
    test = np.zeros(len(y), dtype=bool)
    for c in range(n_classes):
        test[np.where(y == c)[0][:n_test]] = True
    return Features("tiny", [f"c{i}" for i in range(n_classes)], X[~test], y[~test], X[test], y[test], "store")


# ---- baselines ------------------------------------------------------------------------------------------
def test_the_lr_baseline_is_sklearn_on_l2_normalised_features():
    from fieldguide.config.sections import PredictSection

    f = tiny_features(spread=2.5)  # overlapping blobs: top-1 well below 1, so the numbers mean something
    rows = pd.DataFrame(compare_heads(f, predict=PredictSection()))
    lr = LogisticRegression(C=10, max_iter=1000).fit(normalize(f.X_train), f.y_train)
    pred = lr.predict(normalize(f.X_test))
    base = rows[rows["role"] == "baseline"].set_index("metric")["value"]
    assert base["top1"] == pytest.approx(accuracy_score(f.y_test, pred))
    assert base["macro_f1"] == pytest.approx(f1_score(f.y_test, pred, average="macro"))
    assert 0.3 < base["top1"] < 1.0
    assert set(rows["method"]) == {"logreg (predict.head)", "LogisticRegression(C=10)"}
    assert set(rows["role"]) == {"default", "baseline"}


def test_cleanlab_baseline_pred_probs_are_out_of_fold_lr():
    X, y = blobs(15, n_classes=3, spread=2.0)
    probs = plain_lr_oof(X, y, 3, folds=5, seed=0)
    assert probs.shape == (45, 3) and np.allclose(probs.sum(axis=1), 1)
    # row i comes from a model that never saw it: not the in-sample fit's probabilities
    full = LogisticRegression(C=10, max_iter=1000).fit(normalize(X), y).predict_proba(normalize(X))
    assert not np.allclose(probs, full)
    # a class absent from y keeps a zero column where it belongs
    probs4 = plain_lr_oof(X, np.where(y == 2, 3, y), 4, folds=5, seed=0)
    assert np.all(probs4[:, 2] == 0) and np.allclose(probs4[:, [0, 1, 3]], probs)


def test_detection_scores_by_hand():
    truth = np.array([1, 0, 1, 0, 0], dtype=bool)
    score = np.array([0.9, 0.8, 0.3, 0.1, 0.2])
    flagged = np.array([1, 1, 0, 0, 0], dtype=bool)  # tp 1, fp 1, fn 1: precision 0.5, recall 0.5
    s = detection_scores(truth, score, flagged)
    assert s["f1"] == pytest.approx(0.5)
    assert s["auroc"] == pytest.approx(roc_auc_score(truth, score)) == pytest.approx(5 / 6)


def test_full_batch_linear_ce_learns_and_is_deterministic():
    f = tiny_features()
    a = full_batch_linear_ce(f.X_train, f.y_train, f.X_test, f.n_classes, seed=0)
    b = full_batch_linear_ce(f.X_train, f.y_train, f.X_test, f.n_classes, seed=0)
    assert np.array_equal(a, b) and a.shape == (len(f.y_test), f.n_classes)
    assert (a.argmax(axis=1) == f.y_test).mean() == 1.0  # separable blobs
    short = full_batch_linear_ce(f.X_train, f.y_train, f.X_test, f.n_classes, steps=1, seed=0)
    assert short.max(axis=1).mean() < a.max(axis=1).mean()  # 200 steps commit more than one


# ---- split and subsets ---------------------------------------------------------------------------------
def test_suite_split_is_30_percent_per_class_by_random_7():
    labels = ["b"] * 10 + ["a"] * 7
    paths = [f"/x/b/{i:02d}.jpg" for i in range(10)] + [f"/x/a/{i:02d}.jpg" for i in reversed(range(7))]
    test = suite_split(labels, paths)
    assert test[:10].sum() == 3 and test[10:].sum() == 2  # round(0.3 * n) per class
    # the rule by hand: classes in sorted order, paths sorted, one Random(7) shuffles them in turn
    rng = random.Random(7)
    expected = set()
    for cls, n in (("a", 7), ("b", 10)):
        order = [f"/x/{cls}/{i:02d}.jpg" for i in range(n)]
        rng.shuffle(order)
        expected |= set(order[:round(0.3 * n)])
    assert {p for p, t in zip(paths, test) if t} == expected
    # photos of one observation stay together
    groups = [f"obs{i // 2}" for i in range(10)] + [None] * 7
    grouped = suite_split(labels, paths, groups)
    for g in {g for g in groups if g}:
        assert len({grouped[i] for i, h in enumerate(groups) if h == g}) == 1
    assert grouped[:10].sum() in (2, 4)  # round(0.3 * 5 observations) = 2 observations of 2 photos


def test_labeled_subset_keeps_k_per_class():
    y = np.array([0] * 8 + [1] * 3 + [2] * 6)
    keep = labeled_subset(y, 5, seed=0)
    assert np.bincount(y[keep]).tolist() == [5, 3, 5]
    assert np.array_equal(keep, labeled_subset(y, 5, seed=0))


def test_collections_by_name_and_by_path(tmp_path):
    bundled = resolve_collections(tmp_path, None, [])
    assert [c.name for c in bundled] == ["cub100", "inat-plants-dev", "flowers12"]
    assert [c.format for c in bundled] == ["cub", "csv", "folder"]
    mine = parse_collection(f"mine={tmp_path}/birds:cub")
    assert (mine.name, mine.source, mine.format) == ("mine", tmp_path / "birds", "cub")
    assert parse_collection("x=/data/a:b/c").format == "folder"  # a ':' inside a path is not a format
    assert parse_collection("x=/data/a:b/c").source.as_posix() == "/data/a:b/c"
    assert [c.name for c in resolve_collections(tmp_path, None, [mine])] == ["mine"]
    assert [c.name for c in resolve_collections(tmp_path, "flowers12", [mine])] == ["flowers12", "mine"]
    with pytest.raises(FieldguideError, match="unknown collection"):
        resolve_collections(tmp_path, "cub200", [])
    with pytest.raises(FieldguideError, match="NAME=PATH"):
        parse_collection("/data/birds")


# ---- the side-by-side table ----------------------------------------------------------------------------
def test_side_by_side_marks_the_cells_where_the_default_loses():
    rows = pd.DataFrame([
        # A: the default wins on top1, ties on f1; B: it loses on top1 to one of two baselines
        ("A", "test", "ours", "default", "top1", 0.80), ("A", "test", "lr", "baseline", "top1", 0.70),
        ("A", "test", "fb", "baseline", "top1", 0.75),
        ("A", "test", "ours", "default", "f1", 0.60), ("A", "test", "lr", "baseline", "f1", 0.60),
        ("B", "test", "ours", "default", "top1", 0.50), ("B", "test", "lr", "baseline", "top1", 0.40),
        ("B", "test", "fb", "baseline", "top1", 0.55),
        ("B", "test", "ours", "default", "f1", 0.30), ("B", "test", "lr", "baseline", "f1", 0.31),
        ("A", "test", "ours", "default", "count", 12.0),  # no baseline has it
    ], columns=COLUMNS)
    table = side_by_side(rows)
    got = {(r["metric"], r["baseline"]): (r["A loses"], r["B loses"]) for _, r in table.iterrows()}
    assert got == {("top1", "lr"): (False, False), ("top1", "fb"): (False, True),
                   ("f1", "lr"): (False, True), ("count", ""): (False, False)}
    fb = table[(table["metric"] == "top1") & (table["baseline"] == "fb")].iloc[0]
    assert (fb["B"], fb["B baseline"]) == (0.50, 0.55)
    assert np.isnan(table[table["metric"] == "count"].iloc[0]["B"])  # B has no such row


# ---- every family on tiny arrays -----------------------------------------------------------------------
def test_every_comparison_runs_on_tiny_arrays():
    f = tiny_features(n_train=20, n_test=8)
    steps = []
    out = run_comparisons(f, Plan.quick(), on_step=lambda family, secs: steps.append(family))
    assert steps == list(FAMILIES) and set(out) == set(FAMILIES)
    for family, df in out.items():
        assert list(df.columns) == COLUMNS and (df["collection"] == "tiny").all()
        for setting, rows in df.groupby("setting"):
            assert set(rows["role"]) == {"default", "baseline"}, (family, setting)
    heads = out["heads"].set_index(["role", "metric"])["value"]
    assert heads[("default", "top1")] == heads[("baseline", "top1")] == 1.0  # separable blobs
    noise = out["noise"]
    assert set(noise["setting"]) == {"symmetric 20%", "pairs 20%"}
    sym = noise[noise["setting"] == "symmetric 20%"].set_index(["role", "metric"])["value"]
    assert sym[("baseline", "auroc")] > 0.9 and sym[("default", "auroc")] > 0.9  # flips on separable blobs
    train = out["train"]
    assert set(train["method"]) == {"two-stage-entropy (train)", "ce (train)",
                                    "full-batch linear CE (Adam 1e-2, wd 1e-4, 200 steps)"}
    pl = out["pseudolabel"].set_index(["setting", "method", "metric"])["value"]
    n_pseudo = pl[("5/class", "pseudolabel, accept, train", "pseudo_labels")]
    precision = pl[("5/class", "pseudolabel, accept, train", "pseudo_precision")]
    abstained = pl[("5/class", "pseudolabel, accept, train", "abstained")]
    gain = pl[("5/class", "pseudolabel, accept, train", "estimated_gain")]
    assert n_pseudo == int(n_pseudo) and abstained in (0, 1)
    if gain != 0:  # the step's rule; a tie is broken by held-out cross-entropy
        assert abstained == (gain < 0)
    if abstained:
        assert n_pseudo == 0
    else:  # accepted: at most the unlabeled rest of train (15 a class), scored against its labels
        assert n_pseudo <= 4 * 15 and (n_pseudo == 0 or 0 < precision <= 1)
    if n_pseudo == 0:  # nothing accepted: the same training on the same k labels, the same numbers
        assert (pl[("5/class", "pseudolabel, accept, train", "top1")]
                == pl[("5/class", "train on the k labels", "top1")])
    # the supervised-only numbers are the same runs in both settings
    assert (pl[("5/class", "train on the k labels", "top1")]
            == pl[("5/class, supervised", "train on the k labels", "top1")])


# ---- the command, end to end ----------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_suite_on_a_tiny_folder_collection(tmp_path, tiny_weights):
    from typer.testing import CliRunner

    from conftest import CLASS_COLORS, make_image
    from fieldguide.cli import app
    from fieldguide.suite import collection_features

    folder = tmp_path / "mine"  # no split folders: the suite makes the test split
    seed = 0
    for cls, color in CLASS_COLORS.items():
        for i in range(10):
            seed += 1
            make_image(folder / cls / f"{i:02d}.jpg", color, seed=seed)
    cache, results = tmp_path / "cache", tmp_path / "results"
    args = ["bench", "suite", "--collection", f"mine={folder}:folder", "--quick", "--cache", str(cache),
            "--results", str(results), "--backbone", "timm/test_efficientnet", "--weights", str(tiny_weights)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mine: 3 classes, 21 train / 9 test (split: suite" in result.output
    for family in FAMILIES:
        df = pd.read_csv(results / f"suite_{family}.csv")
        assert list(df.columns) == COLUMNS and set(df["collection"]) == {"mine"}
        assert set(df["role"]) == {"default", "baseline"}
        assert df["value"].notna().any()
        assert family in result.output

    # a re-run embeds nothing again
    f = collection_features(Collection("mine", folder, "folder"), cache, backbone="timm/test_efficientnet",
                            weights=str(tiny_weights))
    assert (len(f.y_train), len(f.y_test)) == (21, 9)
    # the file paths line up with the rows: each train path is an image of its row's class
    assert (len(f.paths_train), len(f.paths_test)) == (21, 9) and not set(f.paths_train) & set(f.paths_test)
    assert [Path(p).parent.name for p in f.paths_train] == [f.classes[c] for c in f.y_train]
    assert [Path(p).parent.name for p in f.paths_test] == [f.classes[c] for c in f.y_test]
    from fieldguide.config import open_project
    from fieldguide.platform import store

    wh = store.warehouse(open_project(cache / "mine"))
    embedded = wh.query("SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.kind = 'embed' "
                        "AND m.name = 'embedded' ORDER BY r.started")["value"].tolist()
    assert embedded == [30, 0]  # the command embedded the 30 images; the second look embedded none

    only = CliRunner().invoke(app, args + ["--families", "pseudolabel"])  # the cached embeddings
    assert only.exit_code == 0, only.output
    assert "pseudolabel (" in only.output and "noise (" not in only.output
    df = pd.read_csv(results / "suite_pseudolabel.csv")
    assert set(df.loc[df["metric"] == "abstained", "value"]) <= {0.0, 1.0}
    bad = CliRunner().invoke(app, args + ["--families", "pseudolabel,heds"])
    assert bad.exit_code == 1 and bad.output.strip().startswith("error: families heds: use some of heads, noise")

    bad = CliRunner().invoke(app, ["bench", "suite", "--collections", "cub200", "--cache", str(cache)])
    assert bad.exit_code == 1 and bad.output.strip().startswith("error: unknown collection(s) cub200")


def test_a_difference_three_decimals_hide_is_shown_with_four():
    from fieldguide.suite import fmt_pair

    assert fmt_pair(0.32704, 0.32716) == "0.3270 | 0.3272"
    assert fmt_pair(0.327, 0.327) == "0.327 | 0.327"
    assert fmt_pair(0.5, 0.25) == "0.500 | 0.250"
    assert fmt_pair(546.0, None, "pseudo_labels") == "546"
