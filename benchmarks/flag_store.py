"""``fieldguide flag`` on a real store of 100,000 samples: wall time and peak memory of the step the
CLI runs (:func:`fieldguide.curation.flag.flag`), and of what comes before it.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/flag_store.py [--n 100000] [--classes 1000] \\
        [--work benchmarks/.cache/flag_store] [--out benchmarks/results/flag_store.csv]

1. ``images``: N tiny distinct PNGs (8x8, pixels from the sample's number: every file hash differs)
   in C class folders under ``<work>/n<N>_c<C>/images``; the class of image i is the noisy label of
   :func:`scale.synthetic`'s sample i (folded onto C classes), so ~10% of the folders hold a
   mislabelled image.
2. ``ingest``: a project (``init_project``) in ``<work>/n<N>_c<C>/project`` with its embedded MongoDB,
   and the real ``ingest`` (folder format) of those images.
3. ``embeddings``: no backbone runs on the images (100k on 2 CPU cores takes hours); the cache of
   the configured backbone (its real weights id) gets :func:`scale.synthetic`'s 1,280-d features of
   the samples, written by :func:`fieldguide.models.embed.write_embeddings` in parts as ``embed``
   writes them.
4. ``predictions``: likewise a ``predict`` run in the warehouse with ``runs/<run>/pred_probs.npz``
   (:func:`fieldguide.models.predict.save_pred_probs`, float64 and 5 folds as ``predict`` writes
   them) holding :func:`scale.synthetic`'s probabilities, and each sample's stored ``prediction``
   (with its 1,000 logits), ``unknown_score`` and ``prediction_backoff``, so that the store holds
   what ``predict`` leaves in it.
5. ``flag``, then ``flag rerun`` (idempotent: the same signals, the same queue): wall time and peak
   resident memory of this process above the start of the step (MongoDB is another process: its
   resident memory after the step is in the notes). The ``flag: ...`` rows break the first run down:
   the functions ``flag`` calls are wrapped with timers while it runs (only the outermost call of a
   piece counts); ``other`` is the rest (noise score, costs, the class tree, the loop over samples).

Each step is skipped when its output is already there (the images, the samples in the store, the
embeddings and predictions of every sample): a run that stopped resumes, and the rows of skipped
steps stay as the CSV had them. The ``load`` column is the 1-minute load average at the start of
the step (the 2-core machine is shared). Writes ``benchmarks/results/flag_store.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script scale.py
from scale import PeakRss, suite_shape, synthetic  # noqa: E402

CACHE, DATA = ROOT / "benchmarks" / ".cache", ROOT.parent / "shared" / "data"  # the suite's, for the spectrum
FOLDS = 5
CHUNK = 10_000  # samples per store write of the predictions (their logits as Python floats: ~300 MB)
log = logging.getLogger("flag_store")


def load() -> float:
    return round(os.getloadavg()[0], 1)


def synthetic_collection(n: int, classes: int, shape=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features (n, 1280) float32, noisy labels in 0..classes-1, pred_probs (n, classes) float64)``:
    :func:`scale.synthetic`'s 1,000 classes folded onto ``classes`` (class j -> j % classes)."""
    X, _, noisy, probs = synthetic(n, shape if shape is not None else suite_shape(CACHE, DATA, build=False))
    if classes != probs.shape[1]:
        fold = np.zeros((probs.shape[1], classes), dtype=np.float32)
        fold[np.arange(probs.shape[1]), np.arange(probs.shape[1]) % classes] = 1
        probs = probs @ fold
    return X, noisy % classes, probs.astype(np.float64)


def class_name(c: int) -> str:
    return f"c{c:04d}"


def make_images(folder: Path, labels: np.ndarray) -> int:
    """An 8x8 PNG per sample i at ``folder/<class>/<i>.png`` (pixels: i's bytes over the class's
    colour, so every file differs); existing files are kept. Returns how many were written."""
    from PIL import Image

    written = 0
    for i, c in enumerate(labels):
        path = folder / class_name(int(c)) / f"{i:07d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.full((8, 8, 3), (int(c) * 37 % 256, int(c) * 91 % 256, 128), dtype=np.uint8)
        arr[0, :4, :] = np.frombuffer(int(i).to_bytes(12, "little"), dtype=np.uint8).reshape(4, 3)
        Image.fromarray(arr).save(path)
        written += 1
    return written


def sample_rows(project) -> tuple[list[str], list[str], np.ndarray]:
    """``(sample ids, file hashes, synthetic row of each)`` of the store's samples, in store order
    (the row is the number in the file name)."""
    from fieldguide.platform import samples, store

    table = samples.arrays(store.dataset(project, create=False), ["filepath", "filehash"])
    rows = np.array([int(Path(p).stem) for p in table["filepath"]])
    return table["id"].tolist(), [h or "" for h in table["filehash"]], rows


def write_embeddings(project, X: np.ndarray) -> str:
    """The synthetic features into the cache of the configured backbone (its real weights id), as
    ``embed`` writes them. Returns the backbone's name."""
    from fieldguide.models.backbones import load_backbone
    from fieldguide.models.embed import cache_dir, write_embeddings as write

    cfg = project.config.models
    bb = load_backbone(cfg.backbone, cfg.weights or None, runs_dir=project.runs_dir)
    ids, hashes, rows = sample_rows(project)
    directory = cache_dir(project, bb.name, bb.weights_id)
    for part in directory.glob("part-*.parquet"):  # a rewrite, not a second copy of each row
        part.unlink()
    write(project, bb.name, bb.weights_id, ids, hashes, X[rows])
    return bb.name


def write_predictions(project, probs: np.ndarray, classes: int) -> str:
    """A ``predict`` run of the synthetic probabilities: pred_probs.npz and the stored predictions,
    as ``predict`` writes them. Returns the run id."""
    from fieldguide.models import open_set
    from fieldguide.models.predict import UNKNOWN_AT, UNKNOWN_VIEW, backoff_labels, prediction_values, \
        project_tree, save_pred_probs
    from fieldguide.platform import store
    from fieldguide.platform.fields import save_view, write_values

    ds = store.dataset(project, create=False)
    ids, _, rows = sample_rows(project)
    table = store.samples_table(ds).set_index("id").loc[ids]
    names = store.classes(ds)
    index = np.array([int(c[1:]) for c in names])  # stored class c0042 is synthetic class 42
    P = probs[rows][:, index]
    wh = store.warehouse(project)
    config = {"head": "synthetic (benchmarks/flag_store.py)", "folds": FOLDS, "backbone": project.config.models.backbone}
    with wh.run("predict", config) as run_id:
        fold = np.arange(len(ids)) % FOLDS
        scores = np.full((len(ids), len(open_set.SCORES) + 1), np.nan)
        save_pred_probs(project.run_dir(run_id) / "pred_probs.npz", ids, names, P, fold,
                        table["label"].fillna("").to_numpy().astype(str),
                        table["split"].fillna("").to_numpy().astype(str), scores)
        tree = project_tree(project, names)
        for start in range(0, len(ids), CHUNK):
            sl = slice(start, start + CHUNK)
            chunk = ids[sl]
            write_values(ds, {"prediction": prediction_values(chunk, names, P[sl], P[sl].argmax(axis=1)),
                              "unknown_score": dict.fromkeys(chunk),
                              "prediction_backoff": backoff_labels(chunk, P[sl], tree,
                                                                   project.config.models.backoff_threshold)})
        save_view(ds, UNKNOWN_VIEW, above=("unknown_score", UNKNOWN_AT), sort_by="unknown_score", reverse=True)
        store.snapshot_samples(project, ds)
    return run_id


# ---- the breakdown of flag -----------------------------------------------------------------------------
def _pieces() -> list[tuple[object, str, str]]:
    """(owner, attribute, piece) of the functions ``flag`` calls that are timed apart."""
    from fieldguide.curation import flag as flag_module
    from fieldguide.models import embed, predict
    from fieldguide.platform import review, store
    from fieldguide.platform.warehouse import Warehouse

    f = flag_module
    return [(store, "samples_table", "read the store"), (predict, "load_pred_probs", "read pred_probs"),
            (embed, "load_embeddings", "read embeddings"),
            (f.sig, "compute_signals", "signals (kNN graph, cleanlab, Datalab, ...)"),
            (f, "uniqueness", "uniqueness"), (f, "declare_fields", "store: field writes, tags"),
            (f, "write_values", "store: field writes, tags"), (f, "set_tags", "store: field writes, tags"),
            (review, "most_unknown", "store: review queue"), (review, "requeue", "store: review queue"),
            (f, "index_fields", "store: indexes, saved views"), (f, "save_view", "store: indexes, saved views"),
            (f, "brain_signals", "FiftyOne Brain fields"), (Warehouse, "write", "warehouse writes"),
            (store, "snapshot_samples", "warehouse samples snapshot")]


@contextlib.contextmanager
def timed_pieces(seconds: dict[str, float]):
    """While open, the functions of :func:`_pieces` add their wall time to ``seconds[piece]``
    (a call inside another timed call counts for the outer one only)."""
    active = []
    saved = []

    def wrap(fn, piece):
        def timed(*args, **kwargs):
            if active:
                return fn(*args, **kwargs)
            active.append(piece)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[piece] = seconds.get(piece, 0.0) + time.perf_counter() - t
                active.pop()
        return timed

    for owner, attr, piece in _pieces():
        fn = getattr(owner, attr)
        saved.append((owner, attr, fn))
        setattr(owner, attr, wrap(fn, piece))
    try:
        yield seconds
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def mongod_mb() -> float | None:
    """Resident memory of the embedded MongoDB (a child process of this one), in MB."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "mongod" in child.name():
                return child.memory_info().rss / 2**20
    return None


def run_flag(project) -> tuple[PeakRss, object, dict[str, float], str]:
    """The real ``flag`` timed: ``(measure, report, seconds per piece, kNN graph log line)``."""
    from fieldguide.curation.flag import flag

    handler, graph_log = _Lines(), logging.getLogger("fieldguide.curation.knn_graph")
    level = graph_log.level
    graph_log.addHandler(handler)
    graph_log.setLevel(logging.INFO)  # its line names the method, whatever the caller's logging
    seconds: dict[str, float] = {}
    try:
        gc.collect()
        with timed_pieces(seconds), PeakRss() as m:
            report = flag(project)
    finally:
        graph_log.removeHandler(handler)
        graph_log.setLevel(level)
    graph = next((line for line in handler.lines if line.startswith("kNN graph")), "")
    return m, report, seconds, graph


# ---- the benchmark -----------------------------------------------------------------------------------
def measure(n: int, classes: int, work: Path, shape=None) -> list[dict]:
    """The steps above on ``n`` samples of ``classes`` classes under ``work``; one row per step run."""
    from fieldguide.config import init_project
    from fieldguide.errors import NotReadyError
    from fieldguide.models.embed import load_embeddings
    from fieldguide.models.predict import load_pred_probs
    from fieldguide.platform import store
    from fieldguide.platform.ingest import ingest

    base = work / f"n{n}_c{classes}"
    rows: list[dict] = []

    def row(step: str, m: PeakRss, start_load: float, notes: str = "") -> None:
        rows.append({"part": "flag_store", "n": n, "classes": classes, "step": step, "seconds": round(m.seconds, 1),
                     "peak_mb": round(m.added_mb), "rss_mb": round(m.peak_mb), "load": start_load, "notes": notes})
        log.info("n=%d %s: %.1f s, +%.0f MB %s", n, step, m.seconds, m.added_mb, notes)

    X, labels, probs = synthetic_collection(n, classes, shape)
    images = base / "images"
    if not (base / "images.done").exists():
        start_load = load()
        with PeakRss() as m:
            written = make_images(images, labels)
        (base / "images.done").write_text(str(n))
        row("images", m, start_load, f"{written} 8x8 PNGs written")
    project = init_project(base / "project", "flagstore")
    ds = store.dataset(project)
    if len(ds) < n:
        start_load = load()
        with PeakRss() as m:
            rep = ingest(project, images, fmt="folder")
        row("ingest", m, start_load, f"{rep.added} added, {rep.existing} existing, {len(rep.rejects)} rejects, "
                                     f"{(rep.added + rep.existing) / m.seconds:.0f} images/s, workers {project.config.ingest.workers}")
    ids = set(sample_rows(project)[0])
    try:
        have = len(ids & set(load_embeddings(project)[0]))
    except NotReadyError:
        have = 0
    if have < len(ids):
        start_load = load()
        with PeakRss() as m:
            backbone = write_embeddings(project, X)
        row("embeddings (synthetic, written)", m, start_load, f"{backbone}, {X.shape[1]}-d, parts of 1,024 rows")
    try:
        have = len(ids & set(load_pred_probs(project).sample_ids))
    except NotReadyError:
        have = 0
    if have < len(ids):
        start_load = load()
        with PeakRss() as m:
            run_id = write_predictions(project, probs, classes)
        row("predictions (synthetic, written)", m, start_load,
            f"run {run_id}: pred_probs.npz (float64) and the stored predictions with {classes} logits each")
    del X, probs
    for step in ("flag", "flag rerun"):
        start_load = load()
        m, rep, seconds, graph = run_flag(project)
        mongo = mongod_mb()
        notes = (f"assessed {rep.assessed}, flagged {rep.flagged}, queued {rep.queued}, outliers {rep.outliers}, "
                 f"near duplicates {rep.near_duplicates}; " + re.sub(r"\s+", " ", graph)
                 + (f"; mongod RSS {mongo:.0f} MB" if mongo else ""))
        row(step, m, start_load, notes)
        if step == "flag":
            pieces = {**{p: 0.0 for _, _, p in _pieces()}, **seconds}
            for piece, s in pieces.items():
                rows.append({**rows[-1], "step": f"flag: {piece}", "seconds": round(s, 1), "peak_mb": None,
                             "rss_mb": None, "notes": ""})
            rows.append({**rows[-1], "step": "flag: other", "seconds": round(m.seconds - sum(pieces.values()), 1)})
            report = rep
    rows.append({"part": "flag_store", "n": n, "classes": classes, "step": "store", "seconds": None, "peak_mb": None,
                 "rss_mb": None, "load": None,
                 "notes": f"{len(store.dataset(project))} samples; queue {report.queued} "
                          f"({store.dataset(project).match_tags('to_review').count()} tagged to_review)"})
    return rows


def write_csv(rows: list[dict], out: Path) -> pd.DataFrame:
    """``rows`` into ``out``; the rows there of steps (and sizes) not run this time are kept."""
    df = pd.DataFrame(rows)
    if out.exists():
        old = pd.read_csv(out)
        ran = set(zip(df["n"], df["classes"], df["step"]))
        keep = [(n, c, s) not in ran and not (s.startswith("flag: ") and (n, c, "flag") in ran)
                for n, c, s in zip(old["n"], old["classes"], old["step"])]
        df = pd.concat([old[keep], df], ignore_index=True)
    order = ["images", "ingest", "embeddings (synthetic, written)", "predictions (synthetic, written)", "flag"]
    df["_o"] = [order.index(s) if s in order else (len(order) if s.startswith("flag") else len(order) + 1)
                for s in df["step"]]
    df = df.sort_values(["n", "classes", "_o"], kind="stable").drop(columns="_o")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "flag_store")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flag_store.csv")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    from fieldguide.platform.store import release_database

    try:
        rows = measure(args.n, args.classes, args.work)
    finally:
        release_database()
    df = write_csv(rows, args.out)
    print(df.to_markdown(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
