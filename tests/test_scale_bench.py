"""benchmarks/scale.py at a tiny size: the synthetic collection and the recall frontier's ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("scale")


def test_synthetic_collection_has_the_asked_shape_and_noise(bench):
    X, clean, noisy, probs = bench.synthetic(2000, bench.real_shape(None), noise_rate=0.1)
    assert X.shape == (2000, bench.DIM) and X.dtype == np.float32 and probs.shape == (2000, bench.N_CLASSES)
    assert (noisy != clean).mean() == pytest.approx(0.1)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-4)
    assert (probs.argmax(axis=1) == clean).mean() > 0.5  # the scores favour the true class


def test_ceiling_recall_grows_with_the_candidates_and_reaches_exact(bench):
    X, *_ = bench.synthetic(1500, bench.real_shape(None))
    rows = bench.ceiling_rows(X, 16, refines=(1, 4, 200))
    recall = [r["recall_at_10"] for r in rows]
    assert recall[0] < recall[1] <= recall[2]  # PCA-16 alone misses neighbours; re-ranking more finds them
    assert recall[0] < 0.9 and recall[2] == 1.0  # 200 x 11 candidates: every row, re-ranked: exact
    assert [r["method"] for r in rows] == [f"exact on PCA 16, re-rank x{r}" for r in (1, 4, 200)]


def test_frontier_variants_go_from_cheap_to_thorough(bench):
    v = bench.frontier_variants(128, ms=(16, 32), refines=(4, 16))
    assert list(v) == ["hnsw fp16, PCA 128, re-rank x4, M 16", "hnsw fp16, PCA 128, re-rank x16, M 16",
                       "hnsw fp16, PCA 128, re-rank x4, M 32", "hnsw fp16, PCA 128, re-rank x16, M 32"]
    assert {s.hnsw_m for s in v.values()} == {16, 32} and {s.refine for s in v.values()} == {4, 16}
