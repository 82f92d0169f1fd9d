"""Heads across backbones, measured: a head per backbone vs their combinations, on each collection's test split.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/backbone_ensemble.py [--cache benchmarks/.cache]
        [--collections cub100,inat-plants-dev] [--backbones efficientnet_lite0,efficientnet_lite1,efficientnet_lite2]

Reads the benchmark suite's cached arrays (``<cache>/arrays/<collection>_<backbone>.npz``: X_train,
y_train, X_test, y_test, classes, filepath_train/test; the suite's split, shared/data/README.md),
checks that every backbone's rows are the same images, and fits on the training split only:

- ``lr <backbone>``: the project's ``logreg`` head on one backbone (class-weighted, C=10);
- ``best single``: the one of those with the highest test top-1 (an oracle pick: the bar to beat);
- ``plain LR (best backbone)``: ``LogisticRegression(C=10)`` on L2-normalised features of that backbone;
- ``prob-mean``: the mean of the ``lr`` heads' probabilities;
- ``weighted``: their temperature-scaled probabilities, convex weights fitted on 5 inner folds;
- ``concat``: one ``logreg`` head on the concatenation of the L2-normalised embeddings;
- ``predict default``: what ``predict`` fits across backbones
  (:class:`~fieldguide.models.heads.across_backbones.AcrossBackbonesHead` ``auto``): weighted or concat,
  whichever ranks first on the inner folds (``chosen``).

``--long-tail`` adds the torch ``mlp`` head on the best backbone with each long-tail loss
(:data:`~fieldguide.models.heads.mlp.LOSSES`) against plain cross-entropy. Every row has test top-1,
macro-F1 and ``rare_f1``: the mean F1 of the rarest quarter of the classes (by training count).
Prints a table and writes ``benchmarks/results/backbone_ensemble.csv`` (rows of collections not run
this time are kept).
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "backbone_ensemble.csv"
FIELDS = ["collection", "method", "backbones", "top1", "macro_f1", "rare_f1", "chosen", "fit_seconds"]
LITE = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def load_arrays(cache: Path, collection: str, backbones: list[str]) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                            np.ndarray, np.ndarray, int]:
    """``(train blocks, test blocks, y_train, y_test, n_classes)``, one block per backbone, rows checked
    to be the same images in the same order."""
    from fieldguide.errors import NotReadyError

    tr, te, ref = [], [], None
    for name in backbones:
        path = cache / "arrays" / f"{collection}_{name}.npz"
        if not path.exists():
            raise NotReadyError(f"{path} does not exist (the benchmark cache has no {name} arrays of {collection} yet)")
        z = np.load(path, allow_pickle=False)
        rows = (z["y_train"], z["y_test"], z["filepath_train"], z["filepath_test"])
        if ref is None:
            ref, n_classes = rows, len(z["classes"])
        elif not all(np.array_equal(a, b) for a, b in zip(rows, ref)):
            raise NotReadyError(f"{path}: not the same images, in the same order, as {backbones[0]}'s")
        tr.append(z["X_train"].astype(np.float32))
        te.append(z["X_test"].astype(np.float32))
    return tr, te, ref[0].astype(int), ref[1].astype(int), n_classes


def scores(y_true: np.ndarray, probs: np.ndarray, rare: np.ndarray) -> dict[str, float]:
    """Top-1, macro-F1, and the mean F1 of the ``rare`` classes."""
    from sklearn.metrics import f1_score

    from fieldguide.suite.baselines import top1_macro_f1

    per_class = f1_score(y_true, probs.argmax(axis=1), labels=rare, average=None, zero_division=0)
    return {**top1_macro_f1(y_true, probs), "rare_f1": float(per_class.mean())}


def rare_classes(y_train: np.ndarray, n_classes: int) -> np.ndarray:
    """The rarest quarter of the classes by training count (ties by class index)."""
    counts = np.bincount(y_train, minlength=n_classes)
    return np.argsort(counts, kind="stable")[:max(1, n_classes // 4)]


def run_collection(cache: Path, collection: str, backbones: list[str], *, long_tail: bool) -> list[dict]:
    from fieldguide.models.crossval import aligned_proba
    from fieldguide.models.heads import make_head
    from fieldguide.models.heads.across_backbones import AcrossBackbonesHead
    from fieldguide.suite.baselines import plain_lr_probs

    tr, te, y, y_test, k = load_arrays(cache, collection, backbones)
    X, X_test, dims = np.hstack(tr), np.hstack(te), tuple(b.shape[1] for b in tr)
    rare = rare_classes(y, k)
    rows: list[dict] = []

    def add(method: str, probs: np.ndarray, seconds: float, used: str, chosen: str = "") -> None:
        rows.append({"collection": collection, "method": method, "backbones": used, **scores(y_test, probs, rare),
                     "chosen": chosen, "fit_seconds": round(seconds, 1)})
        print({key: (round(v, 4) if isinstance(v, float) else v) for key, v in rows[-1].items()}, flush=True)

    def fitted(**params) -> tuple[AcrossBackbonesHead, float]:
        t = time.perf_counter()
        return AcrossBackbonesHead(dims=dims, **params).fit(X, y), time.perf_counter() - t

    # the mean's members are the lr heads, one per backbone, fit on all training rows
    mean, mean_s = fitted(combine="mean")
    singles = [aligned_proba(m, X_test, k) for m in mean.model_.models_]
    for name, p in zip(backbones, singles):
        add(f"lr {name}", p, mean_s / len(backbones), name)
    best = int(np.argmax([scores(y_test, p, rare)["top1"] for p in singles]))
    add("best single", singles[best], mean_s / len(backbones), backbones[best])
    t = time.perf_counter()
    add("plain LR (best backbone)", plain_lr_probs(tr[best], y, te[best], k), time.perf_counter() - t, backbones[best])
    every = "+".join(backbones)
    add("prob-mean", aligned_proba(mean, X_test, k), mean_s, every)
    auto, auto_s = fitted(combine="auto")
    by_name = {auto.combination_: (auto, auto_s)}
    for name in ("weighted", "concat"):
        model, seconds = by_name.get(name) or fitted(combine=name)
        add(name, aligned_proba(model, X_test, k), seconds, every, _weights(model, backbones))
    inner = ", ".join(f"{n} {v[0]:.3f}" for n, v in auto.inner_.items())
    add("predict default", aligned_proba(auto, X_test, k), auto_s, every,
        f"{auto.combination_} (inner top-1 {inner})")
    if long_tail:
        for loss, params in LONG_TAIL.items():
            t = time.perf_counter()
            head = make_head("mlp", **params).fit(tr[best], y)
            add(f"mlp {loss}", aligned_proba(head, te[best], k), time.perf_counter() - t, backbones[best])
    return rows


def _weights(model, backbones: list[str]) -> str:
    if model.combination_ == "concat":
        return "concat"
    return ", ".join(f"{b} {w:g} (T {t:.2f})" for b, w, t in zip(backbones, model.weights_, model.temperatures_))


#: the long-tail arms: plain cross-entropy (no class weights) against each long-tail option
LONG_TAIL = {
    "ce": {"loss": "ce", "class_weight": None},
    "ce balanced": {"loss": "ce", "class_weight": "balanced"},
    "focal (default)": {},
    "logit-adjusted": {"loss": "ce", "class_weight": None, "logit_adjust": 1.0},
    "seesaw": {"loss": "seesaw", "class_weight": None},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--collections", default="cub100,inat-plants-dev")
    ap.add_argument("--backbones", default=LITE)
    ap.add_argument("--long-tail", action="store_true", help="Also the mlp head's long-tail losses on the best backbone.")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    rows = []
    for collection in args.collections.split(","):
        rows += run_collection(args.cache, collection.strip(), backbones, long_tail=args.long_tail)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {r["collection"] for r in rows}
    kept = []  # the other collections' rows of an earlier run stay
    if args.out.exists():
        with args.out.open(newline="") as f:
            kept = [r for r in csv.DictReader(f) if r["collection"] not in done]
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(kept)
        for r in rows:
            w.writerow({key: (f"{v:.4f}" if isinstance(v, float) and key != "fit_seconds" else v) for key, v in r.items()})
    import pandas as pd

    print(pd.DataFrame(rows).drop(columns="chosen").to_markdown(index=False, floatfmt=".4f"))
    print(f"table: {args.out}")


if __name__ == "__main__":
    from fieldguide.errors import FieldguideError

    try:
        main()
    except FieldguideError as e:
        raise SystemExit(f"error: {e}") from None
