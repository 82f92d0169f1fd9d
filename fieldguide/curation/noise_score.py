"""One noise score from many signals: a weighted mean of per-signal percentile ranks.

Each signal is first turned into its percentile rank among the assessed samples, oriented so
that 1 means "most likely mislabeled" (``noisy_when`` says which end that is). The noise score
is the weighted mean of the ranks a sample has (a signal that is NaN for a sample, e.g. crowd
consensus on a sample without votes, drops out and the other weights are renormalised).
Ranks make signals on different scales comparable without fitting anything, so the score holds
on collections we have never seen. The flagged set is the top-``n`` by noise score, with ``n``
cleanlab's own estimate of the number of label issues (the size of its confident-joint set).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def percentile_rank(values: np.ndarray, noisy_when: str = "high") -> np.ndarray:
    """Average-tie percentile ranks in [0, 1] (1 = noisiest); NaN stays NaN."""
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape, np.nan)
    ok = ~np.isnan(values)
    if ok.sum() == 0:
        return out
    v = values[ok] if noisy_when == "high" else -values[ok]
    r = rankdata(v, method="average")
    out[ok] = (r - 1) / max(ok.sum() - 1, 1)
    return out


def noise_score(signals: dict[str, np.ndarray], weights: dict[str, float],
                noisy_when: dict[str, str]) -> np.ndarray:
    """The weighted mean of the percentile ranks of ``signals`` named in ``weights``; shape (n,)."""
    used = [k for k, w in weights.items() if w > 0 and k in signals]
    if not used:
        raise ValueError(f"none of the weighted signals {sorted(weights)} is present (have {sorted(signals)})")
    ranks = np.stack([percentile_rank(signals[k], noisy_when.get(k, "high")) for k in used])
    w = np.array([weights[k] for k in used])[:, None] * ~np.isnan(ranks)
    total = w.sum(axis=0)
    score = np.where(total > 0, np.nansum(ranks * w, axis=0) / np.maximum(total, 1e-12), np.nan)
    return np.clip(score, 0.0, 1.0)


def flag_top(score: np.ndarray, n_issues: int) -> np.ndarray:
    """Boolean mask of the ``n_issues`` highest scores (NaN never flagged)."""
    flagged = np.zeros(len(score), dtype=bool)
    ok = np.where(~np.isnan(score))[0]
    n = int(min(max(n_issues, 0), len(ok)))
    if n:
        flagged[ok[np.argsort(-score[ok], kind="stable")[:n]]] = True
    return flagged
