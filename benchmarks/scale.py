"""Signals at scale: time and memory per signal on synthetic collections, the shared kNN graph's recall
against exact search, and the kNN signal's AUROC with the approximate graph against the exact one.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/scale.py [--cache benchmarks/.cache] \\
        [--sizes 100000,200000] [--recall-n 50000] [--method hnsw] [--pca-dim 128] \\
        [--parts signals,recall,frontier,storage,auroc]

``signals``: for each size n of ``--sizes`` (1,000,000 works too, given ~16 GB: the features are
5 GB and the pred_probs 4 GB in float32), a synthetic collection of n samples of 1,000 classes in
d = 1,280: class centroids and within-class deviations drawn from Gaussians with the covariances
of a real collection's embeddings (``--shape-of``: its spectrum, so the neighbour search is as
hard as on real data), 10% of the labels flipped to another class, and pred_probs the softmax
of a noisy score that favours the true class.
Timed one by one with :func:`fieldguide.curation.signals.compute_signals`: the kNN graph (built
once, ``--method`` / ``--pca-dim``), then the kNN signal, cleanlab and Datalab on that graph, and
uniqueness; the wall time and the peak resident memory above the start of the step (psutil, sampled
every 20 ms) of each.

``recall``: on the first ``--recall-n`` samples of the first size, recall@10 of the approximate
graphs (hnsw and ivf, full d and PCA-reduced) against exact search (``IndexFlatIP``), and the
AUROC of the kNN signal on the synthetic flips with each graph.

``frontier``: on the same ``--recall-n`` samples, HNSW graphs from cheap to thorough (links per
node M 16/32/48 x 4..24 candidates per neighbour re-ranked), their time and recall@10, and the
ceiling of any search on the PCA-reduced rows (their exact nearest candidates, re-ranked): the
price of recall on this spectrum.

``storage``: on the same samples, the default graph with the HNSW index keeping the PCA rows as
half floats (the default), 8-bit codes, or float32.

``auroc``: the noise benchmark's symmetric flips (10/20/40%) on the real embeddings of the suite
cache (the collection's project under ``--cache``, ingested and embedded first when it is not
there; training split), the kNN signal's AUROC with
the exact graph and with each approximate one.

The 2-core machine this ran on was shared with other jobs: the load average at the start of each
part is in the CSV (``load``). Writes ``benchmarks/results/scale.csv``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES, DIM = 1000, 1280
log = logging.getLogger("scale")


class PeakRss:
    """Wall time and peak resident memory (MB above the start) of a ``with`` block, by psutil."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.start_mb = self._proc.memory_info().rss / 2**20
        self.peak_mb, self._stop = self.start_mb, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self._t = time.perf_counter()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)
        self.added_mb = self.peak_mb - self.start_mb


def real_shape(train: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (d,), centroid basis (r, d), within-class basis (r', d)) of a real collection's training
    embeddings and labels ``train``: Gaussians with these covariances have its spectrum. Without
    them, a stand-in: centroids in a 64-dimensional subspace, within-class variation of rank 32,
    isotropic noise."""
    if train is not None:
        X, y = np.asarray(train[0], dtype=np.float64), np.asarray(train[1]).astype(int)
        classes = np.unique(y)
        cent = np.stack([X[y == c].mean(axis=0) for c in classes])
        resid = X - cent[np.searchsorted(classes, y)]
        _, sc, vc = np.linalg.svd(cent - cent.mean(axis=0), full_matrices=False)
        _, sw, vw = np.linalg.svd(resid, full_matrices=False)
        return (cent.mean(axis=0).astype(np.float32), (sc[:, None] * vc / np.sqrt(len(cent))).astype(np.float32),
                (sw[:, None] * vw / np.sqrt(len(X))).astype(np.float32))
    rng = np.random.default_rng(1)
    within = np.concatenate([rng.standard_normal((32, DIM)) / np.sqrt(32), 0.1 * np.eye(DIM)])
    return np.zeros(DIM, np.float32), (1.5 / 8 * rng.standard_normal((64, DIM))).astype(np.float32), within.astype(np.float32)


def suite_shape(cache: Path, data: Path, collection: str = "inat-plants-dev", backbone: str = "efficientnet_lite0",
                *, build: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`real_shape` of ``collection``'s training embeddings in the suite's project under
    ``cache`` (ingested and embedded first when it is not there and ``build``; else the stand-in)."""
    from fieldguide.config import CONFIG_NAME
    from fieldguide.suite.collections import bundled_collections, collection_features

    if not build and not (Path(cache) / collection / CONFIG_NAME).is_file():
        return real_shape(None)
    f = collection_features(bundled_collections(data)[collection], cache, backbone=backbone)
    return real_shape((f.X_train, f.y_train))


def synthetic(n: int, shape: tuple, *, seed: int = 0, noise_rate: float = 0.1):
    """(features (n, 1280) float32, clean labels, noisy labels, pred_probs (n, 1000) float32): 1,000
    class centroids and each sample's deviation from its centroid drawn from Gaussians with the
    covariances of ``shape`` (:func:`real_shape`)."""
    mean, cbasis, wbasis = shape
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, N_CLASSES, n)
    centroids = mean + rng.standard_normal((N_CLASSES, len(cbasis)), dtype=np.float32) @ cbasis
    X = np.empty((n, DIM), dtype=np.float32)
    for i in range(0, n, 50_000):  # in blocks: no (n, 1280) float64 temporaries
        m = min(n, i + 50_000) - i
        X[i:i + m] = centroids[clean[i:i + m]] + rng.standard_normal((m, len(wbasis)), dtype=np.float32) @ wbasis
    noisy = clean.copy()
    flip = rng.choice(n, int(noise_rate * n), replace=False)
    noisy[flip] = (clean[flip] + rng.integers(1, N_CLASSES, len(flip))) % N_CLASSES
    probs = np.empty((n, N_CLASSES), dtype=np.float32)
    for i in range(0, n, 50_000):
        m = min(n, i + 50_000) - i
        logits = rng.standard_normal((m, N_CLASSES), dtype=np.float32)
        logits[np.arange(m), clean[i:i + m]] += rng.uniform(1, 6, m).astype(np.float32)  # some confident, some not
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        probs[i:i + m] = logits / logits.sum(axis=1, keepdims=True)
    return X, clean, noisy, probs


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def signal_rows(n: int, settings, shape: tuple) -> list[dict]:
    """Time and memory of each step of the signals on a synthetic collection of ``n`` samples."""
    from fieldguide.curation import signals as sig
    from fieldguide.curation.knn_graph import build_knn_graph, uniqueness

    X, _, noisy, probs = synthetic(n, shape)
    load = _load()
    inputs = sig.SignalInputs(labels=noisy, pred_probs=probs, features=X)
    rows = []

    def row(step: str, m: PeakRss, method: str = "") -> None:
        rows.append({"part": "signals", "collection": "synthetic", "n": n, "step": step, "method": method,
                     "seconds": round(m.seconds, 1), "peak_mb": round(m.added_mb), "load": load})
        log.info("n=%d %s: %.1f s, +%.0f MB", n, step, m.seconds, m.added_mb)

    method = graph_label(settings)
    with PeakRss() as m:  # PCA, the approximate search and the re-ranking on the full rows
        inputs.knn_graph = build_knn_graph(X, sig.DATALAB_K, settings)
    row("kNN graph (FAISS)", m, method)
    for name in ("knn", "cleanlab", "datalab"):
        with PeakRss() as m:
            sig.compute_signals(inputs, [name])
        row(f"{name} signal", m, method if name != "cleanlab" else "")
    with PeakRss() as m:
        uniqueness(inputs.knn_graph)
    row("uniqueness", m, method)
    total = sum(r["seconds"] for r in rows)
    rows.append({**rows[-1], "step": "all signals", "seconds": round(total, 1),
                 "peak_mb": max(r["peak_mb"] for r in rows)})
    return rows


def knn_auroc(labels: np.ndarray, flipped: np.ndarray, graph) -> float:
    from sklearn.metrics import roc_auc_score

    from fieldguide import names
    from fieldguide.curation import signals as sig

    inp = sig.SignalInputs(labels=labels, pred_probs=np.zeros((len(labels), 1)), features=None, knn_graph=graph)
    return float(roc_auc_score(flipped, sig.compute_signals(inp, ["knn"])[names.KNN_DISAGREEMENT]))


def graph_rows(part: str, collection: str, X: np.ndarray, labels: np.ndarray, flipped: np.ndarray,
               variants: dict, setting: str = "", graphs: dict | None = None) -> list[dict]:
    """Exact graph and each approximate variant: build time, recall@10, kNN-signal AUROC (the
    exact graph is also left in ``graphs["exact"]`` when ``graphs`` is given)."""
    from fieldguide.curation.knn_graph import GraphSettings, build_knn_graph, recall_at_k

    load = _load()
    with PeakRss() as m:
        exact = build_knn_graph(X, 10, GraphSettings(method="exact"))
    if graphs is not None:
        graphs["exact"] = exact
    exact_auroc = knn_auroc(labels, flipped, exact)
    base = {"part": part, "collection": collection, "n": len(X), "setting": setting, "load": load}
    rows = [{**base, "method": "exact", "seconds": round(m.seconds, 1), "peak_mb": round(m.added_mb),
             "recall_at_10": 1.0, "knn_auroc": round(exact_auroc, 4), "auroc_diff": 0.0}]
    for label, settings in variants.items():
        with PeakRss() as m:
            graph = build_knn_graph(X, 10, settings)
        auroc = knn_auroc(labels, flipped, graph)
        rows.append({**base, "method": label, "seconds": round(m.seconds, 1), "peak_mb": round(m.added_mb),
                     "recall_at_10": round(recall_at_k(graph.indices, exact.indices), 4),
                     "knn_auroc": round(auroc, 4), "auroc_diff": round(auroc - exact_auroc, 4)})
        log.info("%s n=%d %s %s: recall %.4f, AUROC %+.4f vs exact", collection, len(X), setting, label,
                 rows[-1]["recall_at_10"], rows[-1]["auroc_diff"])
    return rows


def graph_label(settings) -> str:
    """How a graph was built, as the CSV's ``method`` says it."""
    method = settings.method + (f" {settings.hnsw_storage}" if settings.method == "hnsw" and
                                settings.hnsw_storage != "flat" else "")
    if settings.method == "exact" or not settings.pca_dim:
        return method
    return f"{method}, PCA {settings.pca_dim}" + (f", re-rank x{settings.refine}" if settings.refine else "")


def variants(pca_dim: int, refine: int) -> dict:
    """The approximate graphs compared with exact search: full rows, PCA-reduced rows, and
    PCA-reduced candidates re-ranked on the full rows (the default above ``knn_exact_below``)."""
    from fieldguide.curation.knn_graph import GraphSettings

    out = {}
    for method in ("hnsw", "ivf"):
        for settings in (GraphSettings(method=method, pca_dim=0),
                         GraphSettings(method=method, pca_dim=pca_dim, refine=0),
                         GraphSettings(method=method, pca_dim=pca_dim, refine=refine)):
            out[graph_label(settings)] = settings
    return out


def frontier_variants(pca_dim: int, ms=(16, 32, 48), refines=(4, 8, 12, 16, 24)) -> dict:
    """HNSW graphs on PCA-reduced rows from cheap to thorough: links per node x candidates re-ranked."""
    from fieldguide.curation.knn_graph import GraphSettings

    return {f"{graph_label(s)}, M {s.hnsw_m}": s for s in
            (GraphSettings(method="hnsw", pca_dim=pca_dim, refine=r, hnsw_m=m) for m in ms for r in refines)}


def ceiling_rows(X: np.ndarray, pca_dim: int, refines=(4, 8, 12, 16, 24), setting: str = "",
                 exact: np.ndarray | None = None) -> list[dict]:
    """The best any search on the PCA-reduced rows can do: their exact nearest candidates
    (``IndexFlatIP``), re-ranked on the full rows; recall@10 against ``exact`` (the exact graph's
    (n, 10) indices on the full rows; built when not given)."""
    import faiss

    from fieldguide.curation.knn_graph import (GraphSettings, _drop_self, build_knn_graph, normalized, recall_at_k,
                                               rerank)

    if exact is None:
        exact = build_knn_graph(X, 10, GraphSettings(method="exact")).indices
    Xr = normalized(X, pca_dim)
    index = faiss.IndexFlatIP(Xr.shape[1])
    index.add(Xr)
    rows = []
    for r in refines:
        with PeakRss() as m:
            _, cand = index.search(Xr, 11 * r)
            sims, idx = rerank(X, cand, 11)
        idx, _ = _drop_self(idx, 1.0 - sims, 10)
        rows.append({"part": "frontier", "collection": "synthetic", "n": len(X), "setting": setting, "load": _load(),
                     "method": f"exact on PCA {pca_dim}, re-rank x{r}", "seconds": round(m.seconds, 1),
                     "peak_mb": round(m.added_mb), "recall_at_10": round(recall_at_k(idx, exact), 4)})
        log.info("ceiling PCA %d x%d: recall %.4f", pca_dim, r, rows[-1]["recall_at_10"])
    return rows


def main() -> None:
    from fieldguide.curation.knn_graph import HNSW_STORAGE, GraphSettings
    from fieldguide.curation.noise_bench import inject_noise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--sizes", default="100000,200000", help="synthetic collection sizes (1000000: ~16 GB)")
    ap.add_argument("--recall-n", type=int, default=50_000)
    ap.add_argument("--method", default="hnsw", choices=["hnsw", "ivf", "exact"], help="graph of the signals part")
    ap.add_argument("--pca-dim", type=int, default=128, help="the approximate search's PCA dimensions (0: none)")
    ap.add_argument("--refine", type=int, default=16, help="candidates per neighbour re-ranked on the full rows")
    ap.add_argument("--graphs", default="", help="recall/auroc: only these approximate graphs (';'-separated "
                    "methods as the CSV names them); default: all")
    ap.add_argument("--collections", default="inat-plants-dev,cub100")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--shape-of", default="inat-plants-dev", help="the synthetic features take this collection's spectrum")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--parts", default="signals,recall,auroc")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.csv")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parts = set(args.parts.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    graphs = variants(args.pca_dim, args.refine)
    if args.graphs:
        graphs = {k: v for k, v in graphs.items() if k in args.graphs.split(";")}
    from fieldguide.suite.collections import bundled_collections, collection_features

    shape = None
    if parts & {"signals", "recall", "frontier", "storage"}:  # the synthetic collections take a real spectrum
        shape = suite_shape(args.cache, args.data, args.shape_of, args.backbone)
    if "signals" in parts:
        settings = GraphSettings(method=args.method, pca_dim=args.pca_dim, refine=args.refine)
        for n in sizes:
            rows += signal_rows(n, settings, shape)
    if "recall" in parts:
        X, clean, noisy, _ = synthetic(args.recall_n, shape)
        rows += graph_rows("recall", "synthetic", X, noisy, noisy != clean, graphs, "symmetric 10%")
    if "frontier" in parts:  # what recall each setting buys, and how far a search on PCA rows can go
        X, clean, noisy, _ = synthetic(args.recall_n, shape)
        built: dict = {}
        rows += graph_rows("frontier", "synthetic", X, noisy, noisy != clean, frontier_variants(args.pca_dim),
                           "symmetric 10%", graphs=built)
        rows += ceiling_rows(X, args.pca_dim, setting="symmetric 10%", exact=built["exact"].indices)
    if "storage" in parts:  # how the HNSW index keeps the PCA rows, at the default links and re-ranking
        X, clean, noisy, _ = synthetic(args.recall_n, shape)
        rows += graph_rows("storage", "synthetic", X, noisy, noisy != clean,
                           {graph_label(s): s for s in (GraphSettings(method="hnsw", hnsw_storage=st)
                                                        for st in HNSW_STORAGE)}, "symmetric 10%")
    if "auroc" in parts:
        for name in args.collections.split(","):
            # the suite's project of the collection (ingested and embedded first when not yet)
            f = collection_features(bundled_collections(args.data)[name], args.cache, backbone=args.backbone)
            X, y = f.X_train, f.y_train
            for rate in (0.1, 0.2, 0.4):
                noisy = inject_noise(y, f.n_classes, rate, "symmetric", seed=0)
                rows += graph_rows("auroc", name, X, noisy, noisy != y, graphs, f"symmetric {rate:.0%}")
    out = pd.DataFrame(rows)
    if args.out.exists():  # parts (and sizes of a part) not run this time keep their rows
        old = pd.read_csv(args.out)
        key = ["part", "collection", "n"]
        ran = pd.MultiIndex.from_frame(out[key].drop_duplicates())
        out = pd.concat([old[~pd.MultiIndex.from_frame(old[key]).isin(ran)], out], ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(out.to_markdown(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
