"""Pseudo-labeling with few labels: supervised-only vs Semi-ViT-style pseudo-labeling, on embeddings.

    .venv/bin/python benchmarks/pseudolabel_bench.py [--project demo-project] [--k 3,5,10]

Keeps k labeled images per class of the project's train split (fixed seed), treats the rest of
train as unlabeled (labels hidden), and prints test top-1 and macro-F1 of a linear head trained on
the k labels only, and of the EMA teacher trained with pseudo-labels, plus the precision of the
pseudo-labels selected at the threshold. Writes ``benchmarks/results/pseudolabel.csv`` and records the
table in the project's warehouse (a ``bench_pseudolabel`` run, table ``pseudolabel``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT / "demo-project")
    ap.add_argument("--k", default="3,5,10")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="Folder of the CSV.")
    args = ap.parse_args()

    from sklearn.metrics import f1_score

    from fieldguide.config import open_project
    from fieldguide.curation.semi import fit_semi_supervised, select_pseudo_labels
    from fieldguide.models.embed import load_embeddings
    from fieldguide.models.fit import fit_head, predict_head
    from fieldguide.platform import bench_results, store

    project = open_project(args.project)
    ds = store.dataset(project, create=False)
    ids, X = load_embeddings(project, None, ds)
    table = store.samples_table(ds).set_index("id").loc[ids]
    classes = store.classes(ds)
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in table["label"]])
    tr = (table["split"] == "train").to_numpy()
    te = (table["split"] == "test").to_numpy()
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in (int(v) for v in args.k.split(",")):
        lab = np.zeros(len(y), dtype=bool)
        for c in range(len(classes)):
            members = np.where(tr & (y == c))[0]
            lab[rng.choice(members, size=min(k, len(members)), replace=False)] = True
        unl = tr & ~lab
        t = time.perf_counter()
        head, _ = fit_head(X[lab], y[lab], len(classes), method="ce", seed=args.seed, progress=False)
        sup = predict_head(head, X[te])
        sup_s = time.perf_counter() - t
        t = time.perf_counter()
        res = fit_semi_supervised(X[lab], y[lab], X[unl], len(classes), threshold=args.threshold, seed=args.seed)
        semi = predict_head(res.teacher, X[te])
        semi_s = time.perf_counter() - t
        sel, labels, _ = select_pseudo_labels(predict_head(res.teacher, X[unl]), args.threshold)
        precision = float((labels == y[unl][sel]).mean()) if len(sel) else float("nan")
        for name, probs, secs in (("supervised only", sup, sup_s), ("pseudo-labeling", semi, semi_s)):
            pred = probs.argmax(axis=1)
            rows.append({"k": k, "method": name, "test_top1": float((pred == y[te]).mean()),
                         "macro_f1": float(f1_score(y[te], pred, average="macro")), "seconds": secs,
                         "pseudo_selected": len(sel) if name != "supervised only" else None,
                         "pseudo_precision": precision if name != "supervised only" else None})
        print(pd.DataFrame(rows[-2:]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    out = args.results / "pseudolabel.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4f")
    rows = bench_results.long_form(
        df, metrics=["test_top1", "macro_f1", "seconds", "pseudo_selected", "pseudo_precision"], method=df["method"],
        collection=project.config.project.name, setting=df["k"].map(lambda k: f"{k}/class"),
        role=df["method"].map({"pseudo-labeling": "default", "supervised only": "baseline"}))
    run_id = bench_results.record_run(store.warehouse(project), "bench_pseudolabel", {"pseudolabel": rows},
                                      {"k": args.k, "threshold": args.threshold, "seed": args.seed})
    print(f"recorded as run {run_id} in {project.warehouse_path}")
    print(df.to_markdown(index=False, floatfmt=".3f"))
    print(f"\ntable: {out}")


if __name__ == "__main__":
    main()
