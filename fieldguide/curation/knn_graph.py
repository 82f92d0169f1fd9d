"""One k-nearest-neighbour graph of the embeddings, built once with FAISS and shared by every signal
that reads neighbours: the kNN label disagreement, cleanlab's Datalab (outliers, near-duplicates,
non-iid, underperforming groups: passed as ``knn_graph``) and uniqueness.

Cosine similarity is the inner product of L2-normalised float32 rows. Below ``exact_below`` samples
the search is exact (``faiss.IndexFlatIP``, as fast as an approximate one at that size). Above it
the search is approximate and in two stages: ``hnsw`` (``faiss.IndexHNSWSQ``, rows kept as half
floats) or ``ivf``
(``faiss.IndexIVFFlat``) finds ``refine`` x (k + 1) candidates per sample (16 x 11 by default) among the rows
PCA-reduced to ``pca_dim`` dimensions (a graph built in 128 dimensions is ~10x cheaper than in
1,280), then the candidates are re-ranked by their exact cosine on the full embeddings
(``faiss.fvec_inner_products_by_idx``, multi-threaded, reading the caller's array in place: no
second copy of the embeddings, which FAISS's own ``IndexRefineFlat`` would keep). A sample's own
row is never among its neighbours; distances are cosine distances ``1 - cos``, nearest first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("auto", "exact", "hnsw", "ivf")
HNSW_STORAGE = ("fp16", "sq8", "flat")


@dataclass(frozen=True)
class GraphSettings:
    """How the graph is built (``curation.knn_*`` in fieldguide.toml).

    method: ``auto`` (exact below ``exact_below`` samples, else ``hnsw``), ``exact``, ``hnsw`` or
    ``ivf``; pca_dim: the dimensions of the rows an approximate search reads (PCA-reduced; 0 or
    >= d: the full rows; ``exact`` always reads the full rows); refine: with PCA, the approximate
    search returns this many candidates per wanted neighbour, re-ranked on the full rows (0: none);
    hnsw_m / ef_search / ef_construction: HNSW's links per node and search / build breadth;
    hnsw_storage: how the HNSW index keeps the rows: ``fp16`` (half floats, ``IndexHNSWSQ``: the
    same recall as ``flat`` float32 in half the memory), ``sq8`` (8-bit scalar quantisation, ranges
    learnt on a sample: a quarter of the memory) or ``flat``; nprobe:
    IVF lists visited per query (the index has ``4 * sqrt(n)`` lists).
    """

    method: str = "auto"
    exact_below: int = 50_000
    pca_dim: int = 128
    refine: int = 16
    hnsw_m: int = 32
    ef_search: int = 64
    ef_construction: int = 64
    hnsw_storage: str = "fp16"
    nprobe: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"kNN graph method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.hnsw_storage not in HNSW_STORAGE:
            raise ValueError(f"HNSW storage {self.hnsw_storage!r}: use one of {', '.join(HNSW_STORAGE)}")


@dataclass
class KnnGraph:
    """indices: (n, k) int64 neighbour rows, nearest first, self excluded (-1 where fewer than k
    were found); distances: (n, k) float32 cosine distances (inf where -1); method: how it was built."""

    indices: np.ndarray
    distances: np.ndarray
    method: str
    seconds: float = 0.0

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def first(self, k: int) -> KnnGraph:
        """The graph of the ``k`` nearest neighbours only."""
        if k > self.k:
            raise ValueError(f"kNN graph has {self.k} neighbours per sample, {k} asked for")
        return KnnGraph(self.indices[:, :k], self.distances[:, :k], self.method, self.seconds)

    def csr(self):
        """The graph as the square scipy CSR matrix of distances cleanlab's Datalab takes as
        ``knn_graph`` (k entries per row, ascending; an exact duplicate is an explicit 0)."""
        from scipy.sparse import csr_matrix

        n, k = self.indices.shape
        if (self.indices < 0).any():
            raise ValueError("kNN graph has rows with fewer than k neighbours: Datalab needs k per row")
        indptr = np.arange(0, n * k + 1, k)
        return csr_matrix((self.distances.reshape(-1).astype(np.float64), self.indices.reshape(-1), indptr),
                          shape=(n, n))


def normalized(features: np.ndarray, pca_dim: int = 0, *, seed: int = 0) -> np.ndarray:
    """``features`` (n, d) as L2-normalised float32 rows (a new array), PCA-reduced to ``pca_dim``
    and normalised again when 0 < pca_dim < d (scikit-learn's randomized PCA, fitted on at most 50k
    normalised rows). Read in blocks: a memory-mapped ``features`` is never loaded whole."""
    import faiss

    n, d = features.shape
    if not 0 < pca_dim < d:
        X = np.array(features, dtype=np.float32, order="C", copy=True)
        faiss.normalize_L2(X)
        return X
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, 50_000), replace=False))
    pca = PCA(pca_dim, svd_solver="covariance_eigh", random_state=seed).fit(_unit_rows(features[sample]))
    X = np.empty((n, pca_dim), dtype=np.float32)
    for i in range(0, n, BLOCK):
        X[i:i + BLOCK] = pca.transform(_unit_rows(features[i:i + BLOCK]))
    faiss.normalize_L2(X)
    return X


BLOCK = 50_000  # rows per block of the blockwise passes


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    """``rows`` as a new array of L2-normalised float32 rows (a zero row stays zero)."""
    from sklearn.preprocessing import normalize

    return normalize(np.asarray(rows, dtype=np.float32))


def build_knn_graph(features: np.ndarray, k: int, settings: GraphSettings = GraphSettings()) -> KnnGraph:
    """The ``k``-nearest-neighbour graph of ``features`` (n, d) by cosine similarity; see the module
    docstring. Needs n > k."""
    n = len(features)
    if not 1 <= k < n:
        raise ValueError(f"kNN graph: k must be in [1, n) = [1, {n}), got {k}")
    start = time.perf_counter()
    method = settings.method
    if method == "auto":
        method = "exact" if n < settings.exact_below else "hnsw"
    # PCA needs more samples than dimensions; a smaller collection is searched on its full rows
    reduced = method != "exact" and 0 < settings.pca_dim < min(features.shape[1], n)
    X = normalized(features, settings.pca_dim if reduced else 0, seed=settings.seed)
    refine = settings.refine if reduced else 0
    wanted = min(n, (k + 1) * max(refine, 1))
    index = _index(X, method, settings, wanted)
    if refine:  # block by block: only the re-ranked (n, k + 1) result is kept whole
        F = _float32_rows(features)
        inv = _inverse_norms(F)
        parts = [rerank(F, index.search(X[i:i + BLOCK], wanted)[1], k + 1, start=i, inverse_norms=inv)
                 for i in range(0, n, BLOCK)]
        sims, idx = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        sims, idx = index.search(X, k + 1)
    del X, index
    indices, distances = _drop_self(idx, 1.0 - sims, k)
    graph = KnnGraph(indices, distances, method, time.perf_counter() - start)
    if (distances[:, 0] <= 1e-6).any():  # exact duplicates: every member of a set sees the others at 0
        graph = _correct_duplicates(graph, features)
    label = method + (f", PCA {settings.pca_dim}" if reduced else "")
    log.info("kNN graph (%s%s, n=%d, k=%d) in %.1f s", label, f", re-ranked x{refine}" if refine else "", n, k,
             graph.seconds)
    return graph


def rerank(features: np.ndarray, candidates: np.ndarray, keep: int, *, start: int = 0,
           inverse_norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` most cosine-similar of the ``candidates`` (m, c) (-1: none) of the rows
    ``start .. start + m`` of ``features`` (n, d), by the exact cosine on the full rows, as
    (similarities, indices), most similar first. Inner products by FAISS
    (``fvec_inner_products_by_idx``) on the rows in place, divided by the rows' norms
    (``inverse_norms``: 1 / norm of each row, computed when not given)."""
    import faiss

    F = _float32_rows(features)
    inv = _inverse_norms(F) if inverse_norms is None else inverse_norms
    m, c = candidates.shape
    sims = np.empty((m, keep), dtype=np.float32)
    out = np.empty((m, keep), dtype=np.int64)
    for i in range(0, m, BLOCK):
        ids = np.ascontiguousarray(candidates[i:i + BLOCK], dtype=np.int64)
        rows = slice(start + i, start + i + len(ids))
        ip = np.empty(ids.shape, dtype=np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(ip), faiss.swig_ptr(np.ascontiguousarray(F[rows])),
                                         faiss.swig_ptr(F), faiss.swig_ptr(ids), F.shape[1], len(ids), c)
        cos = ip * inv[rows, None] * inv[np.maximum(ids, 0)]
        cos[ids < 0] = -np.inf
        top = np.argsort(-cos, axis=1, kind="stable")[:, :keep]
        sims[i:i + len(ids)] = np.take_along_axis(cos, top, axis=1)
        out[i:i + len(ids)] = np.where(np.isfinite(sims[i:i + len(ids)]), np.take_along_axis(ids, top, axis=1), -1)
    return sims, out


def _float32_rows(features: np.ndarray) -> np.ndarray:
    """``features`` as C-ordered float32 (the array itself, or a memory-mapped one, when it is)."""
    return np.ascontiguousarray(features, dtype=np.float32)


def _inverse_norms(F: np.ndarray) -> np.ndarray:
    norms = np.concatenate([np.linalg.norm(F[i:i + BLOCK], axis=1) for i in range(0, len(F), BLOCK)])
    return (1.0 / np.maximum(norms, 1e-12)).astype(np.float32)


def _index(X: np.ndarray, method: str, settings: GraphSettings, wanted: int):
    import faiss

    n, d = X.shape
    if method == "exact":
        index = faiss.IndexFlatIP(d)
    elif method == "hnsw":
        if settings.hnsw_storage == "flat":
            index = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            qtype = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
            index = faiss.IndexHNSWSQ(d, qtype[settings.hnsw_storage], settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:  # sq8 learns each dimension's range on a sample; fp16 needs nothing
                sample = np.random.default_rng(settings.seed).choice(n, min(n, 50_000), replace=False)
                index.train(X[np.sort(sample)])
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = max(settings.ef_search, wanted)  # FAISS does not widen it to k itself
    else:
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = settings.seed
        index.cp.max_points_per_centroid = 64  # k-means on a sample: the lists need not be perfect
        index.train(X)
        index.nprobe = min(settings.nprobe, nlist)
    index.add(X)
    return index


def _drop_self(idx: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k first neighbours of each row other than the row itself (its own index removed where
    the search returned it, else the last one dropped)."""
    n = len(idx)
    not_self = idx != np.arange(n)[:, None]
    # stable order: keep the search's ranking, move the self column (or the surplus last one) out
    keep = np.argsort(~not_self, axis=1, kind="stable")[:, :k]
    indices = np.take_along_axis(idx, keep, axis=1).astype(np.int64)
    distances = np.take_along_axis(dist, keep, axis=1).astype(np.float32)
    distances = np.where(indices < 0, np.inf, np.maximum(distances, 0.0)).astype(np.float32)
    return indices, distances


def _correct_duplicates(graph: KnnGraph, features: np.ndarray) -> KnnGraph:
    """cleanlab's own correction for exact duplicates (what Datalab does to the graph it builds),
    with the duplicate sets (equal normalised rows) found among the rows that have a neighbour at
    distance 0 only."""
    from cleanlab.internal.neighbor.knn_graph import correct_knn_distances_and_indices

    rows = np.flatnonzero(graph.distances[:, 0] <= 1e-6)
    _, inverse, counts = np.unique(_unit_rows(features[rows]), return_inverse=True, return_counts=True, axis=0)
    inverse = inverse.reshape(-1)
    sets = [rows[inverse == u] for u in np.flatnonzero(counts > 1)]
    distances, indices = correct_knn_distances_and_indices(
        None, graph.distances.astype(np.float64), graph.indices, exact_duplicate_sets=sets)
    return KnnGraph(indices.astype(np.int64), distances.astype(np.float32), graph.method, graph.seconds)


def uniqueness(graph: KnnGraph) -> np.ndarray:
    """FiftyOne Brain's uniqueness from the graph: the weighted mean of the cosine distances to the
    3 nearest neighbours (weights 0.6, 0.3, 0.1, as ``fiftyone.brain.compute_uniqueness``), divided
    by its maximum. (n,) float, 1 = the most unique."""
    d = graph.first(3).distances.astype(np.float64)
    d = np.where(np.isfinite(d), d, np.nan)
    score = np.nanmean(d * np.array([0.6, 0.3, 0.1]), axis=1)
    top = np.nanmax(score) if np.isfinite(score).any() else 0.0
    return score / top if top > 0 else np.ones(len(score))


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours (n, k) that the approximate graph (n, k) found."""
    k = exact.shape[1]
    hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx[:, :k], exact))
    return hits / exact.size
