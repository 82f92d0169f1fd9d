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
