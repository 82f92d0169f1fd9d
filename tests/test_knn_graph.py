"""The shared kNN graph (FAISS): exact against scikit-learn, approximate recall, and its users
(the kNN signal, cleanlab's Datalab, uniqueness, cleanlab's batched path)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from conftest import blobs
from fieldguide import names
from fieldguide.curation import signals as sig
from fieldguide.curation.knn_graph import GraphSettings, build_knn_graph, recall_at_k, uniqueness


def _sklearn_neighbours(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN, self excluded, as the kNN signal computed it before the shared graph."""
    dist, idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(X).kneighbors(X)
    keep = [row != i for i, row in enumerate(idx)]
    return (np.array([r[m][:k] for r, m in zip(idx, keep)]), np.array([r[m][:k] for r, m in zip(dist, keep)]))


def _clustered(n: int, d: int = 32, classes: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class centroids plus low-rank within-class variation: the shape of real embeddings."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = 3 * rng.normal(size=(classes, d))[y] + rng.normal(size=(n, 8)) @ rng.normal(size=(8, d))
    return (X + 0.1 * rng.normal(size=(n, d))).astype(np.float32), y


def test_exact_graph_equals_sklearn_cosine_knn():
    X, _ = blobs(per_class=20, dim=16)
    graph = build_knn_graph(X, 7, GraphSettings(method="exact"))
    idx, dist = _sklearn_neighbours(X, 7)
    assert graph.method == "exact" and graph.indices.shape == (len(X), 7)
    assert (graph.indices == idx).all()
    assert np.allclose(graph.distances, dist, atol=1e-5)
    assert not (graph.indices == np.arange(len(X))[:, None]).any()


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_graph_recall_at_10(method):
    X, _ = _clustered(3000)
    exact = build_knn_graph(X, 10, GraphSettings(method="exact"))
    approx = build_knn_graph(X, 10, GraphSettings(method=method, nprobe=8))
    assert approx.method == method
    assert recall_at_k(approx.indices, exact.indices) >= 0.9
    assert recall_at_k(exact.indices, exact.indices) == 1.0


@pytest.mark.parametrize("storage", ["fp16", "sq8", "flat"])
def test_hnsw_storage_keeps_the_recall(storage):
    """Half floats (the default) and 8-bit codes in the HNSW index: the same neighbours as float32,
    once re-ranked on the full rows."""
    import faiss

    from fieldguide.curation.knn_graph import _index, normalized

    X, _ = _clustered(3000, d=32)
    settings = GraphSettings(method="hnsw", pca_dim=10, refine=4, hnsw_storage=storage)
    index = _index(normalized(X, 10), "hnsw", settings, 44)
    if storage == "flat":
        assert isinstance(index, faiss.IndexHNSWFlat)
    else:  # the rows are kept as the asked codes: 2 bytes (fp16) or 1 byte (sq8) per dimension
        assert isinstance(index, faiss.IndexHNSWSQ)
        sq = faiss.downcast_index(index.storage).sq
        assert sq.qtype == {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}[storage]
        assert sq.code_size == {"fp16": 20, "sq8": 10}[storage]
    assert index.ntotal == len(X) and index.hnsw.efSearch >= 44
    exact = build_knn_graph(X, 10, GraphSettings(method="exact"))
    graph = build_knn_graph(X, 10, settings)
    assert recall_at_k(graph.indices, exact.indices) >= 0.95
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert np.allclose(graph.distances, 1 - (Xn[np.arange(len(X))[:, None]] * Xn[graph.indices]).sum(-1), atol=1e-5)


def test_auto_is_exact_below_the_threshold_and_reads_the_full_rows():
    X, _ = _clustered(500)
    exact = build_knn_graph(X, 5, GraphSettings(method="exact"))
    auto = build_knn_graph(X, 5, GraphSettings(exact_below=1000, pca_dim=4))
    assert auto.method == "exact" and (auto.indices == exact.indices).all()  # exact ignores pca_dim
    assert build_knn_graph(X, 5, GraphSettings(exact_below=100)).method == "hnsw"


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_pca_candidates_re_ranked_on_the_full_rows(method):
    """PCA to 10 of 32 dimensions loses neighbours; re-ranking 4x as many candidates on the full rows
    wins them back, and the distances are the full rows' exact cosine distances."""
    X, _ = _clustered(3000, d=32)
    exact = build_knn_graph(X, 10, GraphSettings(method="exact"))
    reduced = build_knn_graph(X, 10, GraphSettings(method=method, pca_dim=10, refine=0, nprobe=8))
    refined = build_knn_graph(X, 10, GraphSettings(method=method, pca_dim=10, refine=4, nprobe=8))
    r0, r4 = recall_at_k(reduced.indices, exact.indices), recall_at_k(refined.indices, exact.indices)
    assert r0 < 0.8 and r4 >= 0.95 and r4 > r0 + 0.15
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    rows = np.arange(len(X))[:, None]
    assert np.allclose(refined.distances, 1 - (Xn[rows] * Xn[refined.indices]).sum(-1), atol=1e-5)
    assert (np.diff(refined.distances, axis=1) >= -1e-6).all()  # nearest first
    assert not (refined.indices == rows).any()


def test_bad_settings_and_k():
    with pytest.raises(ValueError, match="method 'annoy'"):
        GraphSettings(method="annoy")
    with pytest.raises(ValueError, match="HNSW storage 'pq'"):
        GraphSettings(hnsw_storage="pq")
    with pytest.raises(ValueError, match="k must be"):
        build_knn_graph(np.ones((3, 4), dtype=np.float32), 3)


def test_knn_signal_unchanged_from_sklearn():
    X, y = blobs(per_class=15, dim=16, spread=1.5)
    labels = np.random.default_rng(0).permutation(y)  # mixed labels: disagreement shares between 0 and 1
    probs = np.full((len(y), 8), 1 / 8)
    out = sig.compute_signals(sig.SignalInputs(labels=labels, pred_probs=probs, features=X, knn_k=6), ["knn"])
    idx, _ = _sklearn_neighbours(X, 6)
    assert np.allclose(out[names.KNN_DISAGREEMENT], (labels[idx] != labels[:, None]).mean(axis=1))


def test_datalab_reads_the_shared_graph():
    """Datalab given the graph finds what Datalab finds with its own graph from the features, and
    the graph is built once for the kNN signal and Datalab together."""
    from cleanlab import Datalab

    X, y = blobs(per_class=25, dim=16, spread=1.2)
    X[3] = X[4]  # an exact duplicate pair
    probs = np.random.default_rng(1).dirichlet(np.ones(8), len(y))
    inp = sig.SignalInputs(labels=y, pred_probs=probs, features=X)
    out = sig.compute_signals(inp, ["knn", "datalab"])
    graph = inp.knn_graph
    assert graph is not None and graph.k == sig.DATALAB_K

    lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab.find_issues(features=X, pred_probs=probs, issue_types={t: {} for t in ("outlier", "near_duplicate")})
    own = lab.get_issues()
    for t in ("outlier", "near_duplicate"):
        assert np.allclose(out[names.issue_score(t)], own[f"{t}_score"], atol=1e-5)
        assert (out[names.issue_flag(t)] == own[f"is_{t}_issue"]).all()
    assert out["near_duplicate_of"][3] == 4 and out["near_duplicate_of"][4] == 3
    # a graph handed in is the one read: permuting its rows' neighbours changes the kNN signal
    shuffled = sig.SignalInputs(labels=y, pred_probs=probs, features=X, knn_graph=graph.first(10))
    shuffled.knn_graph.indices = np.roll(graph.indices, 1, axis=0)
    assert not np.allclose(sig.compute_signals(shuffled, ["knn"])[names.KNN_DISAGREEMENT],
                           out[names.KNN_DISAGREEMENT])


def test_uniqueness_is_the_brain_formula_on_the_graph():
    X, _ = _clustered(200)
    graph = build_knn_graph(X, 10, GraphSettings(method="exact"))
    _, dist = _sklearn_neighbours(X, 3)
    expected = (dist * [0.6, 0.3, 0.1]).mean(axis=1)
    assert np.allclose(uniqueness(graph), expected / expected.max(), atol=1e-5)


def test_cleanlab_batched_path_over_the_memory_budget():
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    X, y = blobs(per_class=30)
    rng = np.random.default_rng(0)
    probs = (0.6 * np.eye(8)[y] + 0.4 * rng.dirichlet(np.ones(8), len(y))).astype(np.float32)
    noisy = y.copy()
    noisy[:12] = (y[:12] + 1) % 8
    full = sig.compute_signals(sig.SignalInputs(labels=noisy, pred_probs=probs), ["cleanlab"])
    small = sig.compute_signals(sig.SignalInputs(labels=noisy, pred_probs=probs, pred_probs_budget_mb=1e-3),
                                ["cleanlab"])
    assert np.allclose(small[names.LABEL_QUALITY], get_label_quality_scores(noisy, probs))
    assert np.allclose(small[names.LABEL_QUALITY], full[names.LABEL_QUALITY])
    # the batched issue set is cleanlab's low self-confidence filter's, and finds flips only
    assert (small[names.CL_ISSUE] == find_label_issues(noisy, probs, filter_by="low_self_confidence")).all()
    assert small[names.CL_ISSUE][:12].sum() >= 3 and small[names.CL_ISSUE][12:].sum() == 0


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_methods_on_fewer_samples_than_pca_dimensions(method):
    """hnsw/ivf chosen by hand on a collection smaller than the PCA dimensions (128 by default)
    search the full rows instead of failing in PCA."""
    X, _ = _clustered(100, d=200)
    graph = build_knn_graph(X, 5, GraphSettings(method=method, nprobe=64))
    assert graph.method == method and graph.indices.shape == (100, 5)
    assert recall_at_k(graph.indices, build_knn_graph(X, 5, GraphSettings(method="exact")).indices) >= 0.9


def test_blockwise_re_ranking_matches_one_block(monkeypatch):
    """The search and re-ranking run block by block (a real collection's blocks hold 50,000 rows):
    the graph is the same whatever the block size."""
    import fieldguide.curation.knn_graph as kg

    X, _ = _clustered(1200, d=32)
    settings = GraphSettings(method="hnsw", pca_dim=10, refine=4)
    whole = build_knn_graph(X, 10, settings)
    monkeypatch.setattr(kg, "BLOCK", 257)
    blocks = build_knn_graph(X, 10, settings)
    assert (blocks.indices == whole.indices).all() and np.allclose(blocks.distances, whole.distances)
