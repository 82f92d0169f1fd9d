"""Where and when: the metadata encoding, the spatio-temporal prior, and ``predict --metadata``."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from fieldguide.models import metadata as md
from fieldguide.models.crossval import cross_val_pred_probs

from conftest import use_tiny_backbone


def _col(name: str) -> int:
    return md.COLUMNS.index(name)


# ---- encoding ------------------------------------------------------------------------------------------
def test_encoding_puts_known_dates_places_and_gaps_where_they_belong():
    M = md.encode([dt.datetime(2021, 1, 1), dt.datetime(2021, 7, 2), dt.datetime(2021, 7, 2, 18, 0), None],
                  [[0.0, 0.0], [90.0, 0.0], [-122.0, 90.0], None])
    day = M[:, [_col("day_sin"), _col("day_cos")]]
    np.testing.assert_allclose(np.linalg.norm(day[:3], axis=1), 1.0)
    assert day[0] @ day[1] < -0.99  # Jan 1 and Jul 2: opposite on the circle
    assert day[1] @ day[2] > 0.99  # the same day, whatever the hour
    # a date without a time has no hour; 18:00 is 3/4 of the way round the clock
    assert M[:, _col("hour_missing")].tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(M[2, [_col("hour_sin"), _col("hour_cos")]], [-1.0, 0.0], atol=1e-12)
    # places on the unit sphere: (lon 0, lat 0) -> x, (lon 90, lat 0) -> y, the North Pole -> z
    xyz = M[:, [_col("geo_x"), _col("geo_y"), _col("geo_z")]]
    np.testing.assert_allclose(xyz[:3], np.eye(3), atol=1e-12)
    # missing: the indicator set, the values zero
    assert M[3, _col("day_missing")] == 1 and M[3, _col("geo_missing")] == 1 and not M[3, [0, 1, 6, 7, 8]].any()
    assert md.groups_present(M) == ["day", "hour", "place"]
    assert md.groups_present(md.encode([None], [None])) == []


# ---- the prior -----------------------------------------------------------------------------------------
def _collection(seasonal: bool, seed: int = 0, n_classes: int = 4, per_class: int = 60):
    """Weak image features (a head near 55% top-1); dates by class season or uniform over the year."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = rng.normal(size=(len(y), 8))
    X[np.arange(len(y)), y] += 1.0
    days = (y * 365 / n_classes + rng.normal(0, 15, len(y))) % 365 if seasonal else rng.uniform(0, 365, len(y))
    dates = [dt.datetime(2020, 1, 1) + dt.timedelta(days=float(d)) for d in days]
    return X, y, md.encode(dates, [None] * len(y))


def _head_and_prior_oof(X, y, M):
    oof, fold = cross_val_pred_probs(LogisticRegression(max_iter=500), X, y, int(y.max()) + 1, folds=5)
    prior = np.zeros_like(oof)
    for f in np.unique(fold):
        train = fold != f
        prior[~train] = md.aligned_prior(md.KdePrior().fit(M[train], y[train]), M[~train], oof.shape[1])
    return oof, prior


def test_prior_of_seasonal_classes_beats_the_head_on_held_out_samples():
    X, y, M = _collection(seasonal=True)
    Xt, yt, Mt = _collection(seasonal=True, seed=1)
    oof, prior_oof = _head_and_prior_oof(X, y, M)
    w, scores = md.choose_weight(oof, prior_oof, y)
    assert w > 0 and scores[w] > scores[0.0]
    head = LogisticRegression(max_iter=500).fit(X, y).predict_proba(Xt)
    combined = md.combine(head, md.KdePrior().fit(M, y).predict_proba(Mt), w)
    head_top1, combined_top1 = (head.argmax(1) == yt).mean(), (combined.argmax(1) == yt).mean()
    assert head_top1 < 0.75 and combined_top1 > head_top1 + 0.2
    np.testing.assert_allclose(combined.sum(axis=1), 1.0)


def test_prior_of_classes_without_a_season_gets_no_weight_and_leaves_the_head_as_it_was():
    X, y, M = _collection(seasonal=False)
    oof, prior_oof = _head_and_prior_oof(X, y, M)
    w, scores = md.choose_weight(oof, prior_oof, y)
    assert w == 0.0 and len(scores) == len(md.WEIGHTS)
    assert np.array_equal(md.combine(oof, prior_oof, w), oof)


def test_prior_ignores_missing_dates_and_falls_back_to_class_frequencies():
    X, y, M = _collection(seasonal=True)
    prior = md.KdePrior(floor=0.1).fit(M, y)
    p = prior.predict_proba(md.encode([None, None], [None, None]))
    np.testing.assert_allclose(p, np.tile(np.bincount(y) / len(y), (2, 1)))
    assert prior.place_kappa_ is None and prior.day_kappa_ in md.DAY_KAPPAS


# ---- predict -------------------------------------------------------------------------------------------
def _run_config(project, run_id: str) -> dict:
    from fieldguide.platform import store

    runs = store.warehouse(project).query("SELECT config FROM runs WHERE run_id = ?", [run_id])
    return json.loads(runs.iloc[0, 0])


def _pred_probs(project, run_id: str) -> np.ndarray:
    from fieldguide.models.predict import load_pred_probs

    return load_pred_probs(project, run_id).pred_probs


def test_predict_with_and_without_metadata_on_a_real_project(ingested, tiny_weights):
    from fieldguide.cli import app
    from fieldguide.config import dump_config
    from fieldguide.models.embed import embed
    from fieldguide.models.predict import predict
    from fieldguide.platform import samples, store
    from fieldguide.platform.fields import write_values

    p = use_tiny_backbone(ingested, tiny_weights)
    p.config_path.write_text(dump_config(p.config))  # the CLI reads the tiny backbone from the file
    embed(p)
    # no dates: auto is exactly none
    auto = predict(p, head="logreg", folds=3)
    none = predict(p, head="logreg", folds=3, metadata="none")
    assert auto.metadata == [] and auto.metadata_weight == 0.0
    assert np.array_equal(_pred_probs(p, auto.run_id), _pred_probs(p, none.run_id))
    assert _run_config(p, auto.run_id)["metadata"] == {"mode": "auto", "groups": []}

    # dates by class season (red in winter, green in spring, blue in summer), written to observed_at
    ds = store.dataset(p)
    table = samples.arrays(ds, ["ground_truth.label"])
    month = {"red_bird": 1, "green_bird": 4, "blue_bird": 7}
    write_values(ds, {"observed_at": {sid: dt.datetime(2022, month[label], 1 + i % 20)
                                      for i, (sid, label) in enumerate(zip(table["id"], table["ground_truth.label"]))}})
    runner = CliRunner()
    result = runner.invoke(app, ["--project", str(p.root), "predict", "--head", "logreg", "--folds", "3",
                                 "--metadata", "none", "--json"])
    assert result.exit_code == 0, result.output
    cli_none = json.loads(result.output)
    assert cli_none["metadata"] == [] and _run_config(p, cli_none["run_id"])["metadata"]["mode"] == "none"
    assert np.array_equal(_pred_probs(p, cli_none["run_id"]), _pred_probs(p, auto.run_id))

    dated = predict(p, head="logreg", folds=3)
    used = _run_config(p, dated.run_id)["metadata"]
    assert dated.metadata == ["day"] and used["groups"] == ["day"] and used["mode"] == "auto"
    assert used["weight"] == dated.metadata_weight and used["prior"] == "kde"
    assert set(used["oof_loglik"]) == {str(w) for w in md.WEIGHTS}
    probs = _pred_probs(p, dated.run_id)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    if dated.metadata_weight == 0:
        assert np.array_equal(probs, _pred_probs(p, auto.run_id))
    else:
        assert not np.array_equal(probs, _pred_probs(p, auto.run_id))

    bad = runner.invoke(app, ["--project", str(p.root), "predict", "--metadata", "sometimes"])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines()[-1] == "error: metadata 'sometimes': use one of auto, none"
