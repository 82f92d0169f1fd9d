"""The class tree, unknown species and costly mistakes, measured on the suite's embeddings.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/taxonomy_bench.py --cache /work/main/benchmarks/.cache

Per collection and backbone (EfficientNet-Lite0 by default; ``--backbones`` for more: embeddings of the benchmark suite's cache, its train/test split;
``<cache>/arrays/<name>_<backbone>.npz`` when written, else the cached project), the project's
default head (``logreg``) fit on the training split, scored on the test split:

- ``rank``: top-1 and macro-F1 at each rank of the class tree (inat-plants-dev: species, genus,
  family from its metadata.csv; cub100: flat), and the mean taxonomic distance of the errors;
- ``backoff``: at ``models.backoff_threshold``'s default (and 0.5, 0.9), per rank the share of test images answered
  there (coverage) and the share of those answers that hold the true class (precision);
- (unknown species: ``benchmarks/open_set_bench.py``, its own CSV);
- ``cost``: ``--seeds`` times, 3 random classes made dangerous (FungiCLEF's costs: dangerous called
  harmless 100, the reverse 1, other errors 1); FungiCLEF track-3 score, mean cost, top-1 and the
  dangerous images called harmless, for argmax and for the expected-cost rule.

Writes ``benchmarks/results/taxonomy.csv`` (long form: collection, backbone, section, method, rank, metric,
seed, value; seed ``mean`` averages the seeds).
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "taxonomy.csv"
FIELDS = ["collection", "backbone", "section", "method", "rank", "metric", "seed", "value"]
THRESHOLDS = (0.5, 0.7, 0.9)  # back-off thresholds shown beside the default


def load(name: str, cache: Path, backbone: str):
    """``(classes, X_train, y_train, X_test, y_test)`` of a collection."""
    npz = cache / "arrays" / f"{name}_{backbone}.npz"
    if npz.exists():
        z = np.load(npz, allow_pickle=False)
        return [str(c) for c in z["classes"]], z["X_train"], z["y_train"], z["X_test"], z["y_test"]
    from fieldguide.suite.collections import bundled_collections, collection_features

    f = collection_features(bundled_collections(DATA)[name], cache, backbone=backbone)
    return f.classes, f.X_train, f.y_train, f.X_test, f.y_test


def tree_of(name: str, classes: list[str]):
    from fieldguide.models.taxonomy import flat_tree, tree_from_lineages

    meta = DATA / name / "metadata.csv"
    if not meta.exists():
        return flat_tree(classes)
    with meta.open(newline="", encoding="utf-8") as f:
        lineages = {r["scientific_name"]: {"family": r["family"], "genus": r["genus"]} for r in csv.DictReader(f)}
    return tree_from_lineages(classes, lineages, ranks=["family", "genus"], leaf_rank="species")


def run(name: str, cache: Path, backbone: str, seeds: int) -> list[dict]:
    from fieldguide.config.sections import ModelsSection
    from fieldguide.models.costs import dangerous_cost_matrix, expected_cost_decision, fungiclef_track3
    from fieldguide.models.crossval import aligned_proba
    from fieldguide.models.heads import make_head
    from fieldguide.models.taxonomy import backoff_metrics, rank_metrics

    classes, Xtr, ytr, Xte, yte = load(name, cache, backbone)
    tree = tree_of(name, classes)
    rows: list[dict] = []

    def add(section, method, rank, metric, value, seed="all"):
        rows.append({"collection": name, "backbone": backbone, "section": section, "method": method, "rank": rank, "metric": metric,
                     "seed": seed, "value": float(value)})

    head = make_head("logreg").fit(Xtr, ytr)
    probs = aligned_proba(head, Xte, len(classes))
    m = rank_metrics(yte, probs, tree)
    for rank in tree.levels:
        add("rank", "logreg", rank, "top1", m[f"top1_{rank}"])
        add("rank", "logreg", rank, "macro_f1", m[f"macro_f1_{rank}"])
    add("rank", "logreg", "", "mean_taxonomic_distance", m["mean_taxonomic_distance"])
    default = ModelsSection().backoff_threshold
    for threshold in sorted({*THRESHOLDS, default}):
        b = backoff_metrics(yte, probs, tree, threshold)
        method = f"threshold {threshold:g}" + (" (default)" if threshold == default else "")
        for rank in tree.levels:
            add("backoff", method, rank, "coverage", b[f"backoff_coverage_{rank}"])
            if not np.isnan(b[f"backoff_precision_{rank}"]):
                add("backoff", method, rank, "precision", b[f"backoff_precision_{rank}"])
        add("backoff", method, "any", "precision", b["backoff_precision"])
        add("backoff", method, "none", "coverage", b["backoff_abstained"])

    cost_rows: dict[tuple[str, str], list[float]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        rng.choice(len(classes), size=3, replace=False)  # the held-out draw this section shared: the same dangerous classes
        dangerous = np.zeros(len(classes), dtype=bool)
        dangerous[rng.choice(len(classes), size=3, replace=False)] = True
        cost = dangerous_cost_matrix(dangerous)
        for method, pred in (("argmax", probs.argmax(axis=1)), ("expected_cost", expected_cost_decision(probs, cost))):
            f = fungiclef_track3(yte, pred, dangerous)
            values = {"fungiclef_track3": f["fungiclef_track3"], "mean_cost": cost[yte, pred].mean(),
                      "top1": (pred == yte).mean(),
                      "dangerous_called_harmless": int((dangerous[yte] & ~dangerous[pred]).sum())}
            for metric, v in values.items():
                add("cost", method, "", metric, v, seed)
                cost_rows.setdefault((method, metric), []).append(v)
    for (method, metric), values in cost_rows.items():
        add("cost", method, "", metric, np.mean(values), "mean")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--collections", default="inat-plants-dev,cub100")
    ap.add_argument("--backbones", default="efficientnet_lite0",
                    help="comma-separated; a collection not cached for a backbone is embedded into the cache")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        for name in [n.strip() for n in args.collections.split(",") if n.strip()]:
            new = run(name, args.cache, backbone, args.seeds)
            rows += new
            for r in new:
                if r["seed"] in ("all", "mean"):
                    print(f"{name:16s} {backbone:18s} {r['section']:9s} {r['method']:24s} {r['rank']:8s} "
                          f"{r['metric']:26s} {r['value']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["collection"], r["backbone"]) for r in rows}
    if args.out.exists():  # keep the rows of the (collection, backbone) pairs not run this time
        with args.out.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if (r["collection"], r["backbone"]) not in done] + rows
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({**r, "value": round(float(r["value"]), 4)} for r in rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
