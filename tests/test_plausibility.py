"""The ``metadata_plausibility`` signal, ``flag`` without dates, and ``--metadata`` on train and pseudolabel."""

from __future__ import annotations

import datetime as dt

import numpy as np

from fieldguide import names
from fieldguide.curation import signals as sig
from fieldguide.curation.noise_score import percentile_rank
from fieldguide.curation.plausibility import METADATA
from fieldguide.models import metadata as md

from conftest import use_tiny_backbone


def _seasonal(per_class: int = 15, seed: int = 0):
    """3 classes seen in one season each (January, April, July, ±10 days); no places."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), per_class)
    days = np.array([15, 105, 196])[y] + rng.normal(0, 10, len(y))
    dates = [dt.datetime(2021, 1, 1) + dt.timedelta(days=float(d)) for d in days]
    return y, md.encode(dates, [None] * len(y))


def test_a_label_moved_out_of_season_ranks_above_the_same_label_in_season():
    y, M = _seasonal()
    noisy = y.copy()
    moved = 0  # a January sample labeled as the April class: never seen in January
    noisy[moved] = 1
    probs = np.full((len(y), 3), 1 / 3)  # the image says nothing: only the metadata can tell
    values = sig.compute_signals(sig.SignalInputs(labels=noisy, pred_probs=probs, extra={METADATA: M}),
                                 ["metadata_plausibility"])
    plaus = values[names.METADATA_PLAUSIBILITY]
    in_season = np.where(noisy == 1)[0][1:]  # the same label on April samples
    assert plaus[moved] < plaus[in_season].min()
    assert (plaus <= 0).all() and np.isclose(plaus[in_season], 0).all()  # in season: the most plausible class
    rank = percentile_rank(plaus, sig.directions()[names.METADATA_PLAUSIBILITY])
    assert rank[moved] == rank.max() and (rank[in_season] < rank[moved]).all()


def test_no_dates_no_signal_and_rows_without_metadata_stay_nan():
    y, M = _seasonal()
    probs = np.full((len(y), 3), 1 / 3)
    assert names.METADATA_PLAUSIBILITY not in sig.compute_signals(
        sig.SignalInputs(labels=y, pred_probs=probs), ["metadata_plausibility"])
    M[:5] = md.encode([None] * 5, [None] * 5)
    plaus = sig.compute_signals(sig.SignalInputs(labels=y, pred_probs=probs, extra={METADATA: M}),
                                ["metadata_plausibility"])[names.METADATA_PLAUSIBILITY]
    assert np.isnan(plaus[:5]).all() and np.isfinite(plaus[5:]).all()


def _noise_scores(p) -> dict:
    from fieldguide.platform import samples, store

    table = samples.arrays(store.dataset(p), ["noise_score"])
    return dict(zip(table["id"], table["noise_score"]))


def _write_seasons(p) -> None:
    """Dates by class season (red in winter, green in spring, blue in summer) on every sample."""
    from fieldguide.platform import samples, store
    from fieldguide.platform.fields import write_values

    ds = store.dataset(p)
    table = samples.arrays(ds, ["filepath"])
    month = {"red": 1, "green": 4, "blue": 7}
    when = {sid: dt.datetime(2022, next(m for c, m in month.items() if f"{c}_bird" in path), 1 + i % 20)
            for i, (sid, path) in enumerate(zip(table["id"], table["filepath"]))}
    write_values(ds, {"observed_at": when})


def test_flag_without_dates_is_unchanged_by_the_signal_and_with_dates_reports_it(predicted):
    from fieldguide.curation.flag import flag

    plain = flag(predicted)
    assert names.METADATA_PLAUSIBILITY not in plain.signals
    before = _noise_scores(predicted)
    spec = sig._SIGNALS.pop("metadata_plausibility")
    try:  # the same run without the signal registered at all
        assert _noise_scores(predicted) == before and flag(predicted).signals == plain.signals
        assert _noise_scores(predicted) == before
    finally:
        sig._SIGNALS["metadata_plausibility"] = spec
    _write_seasons(predicted)
    dated = flag(predicted)
    assert names.METADATA_PLAUSIBILITY in dated.signals and dated.flagged == plain.flagged
    assert _noise_scores(predicted) == before  # its default weight is 0: reported, not combined


def test_train_and_pseudolabel_metadata_auto_is_none_without_dates(ingested, tiny_weights, tmp_path):
    import json

    from fieldguide.curation.pseudolabel import pseudolabel
    from fieldguide.models.train import train
    from fieldguide.platform import samples, store
    from test_pseudolabel import add_unlabeled

    p = use_tiny_backbone(ingested, tiny_weights)
    add_unlabeled(p, tmp_path / "extra", "u", per_class=2, seed=500)
    wh = store.warehouse(p)

    def config(run_id):
        return json.loads(wh.query("SELECT config FROM runs WHERE run_id = ?", [run_id]).iloc[0, 0])

    def ece(run_id):
        return wh.query("SELECT value FROM metrics WHERE run_id = ? AND name = 'ece'", [run_id]).iloc[0, 0]

    def pseudo():
        t = samples.arrays(store.dataset(p), ["pseudo_label.label", "pseudo_label.confidence"], tags="unlabeled")
        return t.drop(columns="id").values.tolist()

    hp = {"threshold": 0.0, "epochs": 1, "abstain": False, "balance": False}
    runs = {mode: train(p, method="ce", epochs=1, metadata=mode, progress=False) for mode in ("auto", "none")}
    assert (runs["auto"].top1, runs["auto"].macro_f1) == (runs["none"].top1, runs["none"].macro_f1)
    assert ece(runs["auto"].run_id) == ece(runs["none"].run_id)
    assert "metadata_prior" not in config(runs["auto"].run_id)
    labels = {}
    for mode in ("auto", "none"):
        report = pseudolabel(p, metadata=mode, **hp)
        assert config(report.run_id)["metadata"] == {"mode": mode, "groups": []}
        labels[mode] = pseudo()
    assert labels["auto"] == labels["none"] and len(labels["auto"]) == 6

    _write_seasons(p)  # with dates, auto uses them (the weight is whatever the out-of-fold rows choose)
    dated = train(p, method="ce", epochs=1, progress=False)
    assert config(dated.run_id)["metadata_prior"]["groups"] == ["day"]
    report = pseudolabel(p, **hp)
    used = config(report.run_id)
    assert used["metadata"] == {"mode": "auto", "groups": ["day"]} and "weight" in used["metadata_prior"]
