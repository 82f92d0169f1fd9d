"""Heads on frozen embeddings: each head fit on the train split, scored on the test split.

    .venv/bin/python benchmarks/heads_bench.py [--project demo-project] [--heads logreg,mlp,knn,ensemble]

Uses the project's cached embeddings (``make demo`` embeds cub100 with EfficientNet-Lite0) and
prints test top-1, top-5, macro-F1, ECE and fit time per head; the ensemble is the mean of
its members' probabilities, weighted as fit (the weights and temperatures picked on inner
out-of-fold predictions). Writes ``benchmarks/results/heads_<project>.csv`` and, with the ensemble,
``benchmarks/results/heads_ensemble_<project>.csv`` (one row per member); the project's warehouse
records the same tables (a ``bench_heads`` run: tables ``heads``, ``heads_ensemble``) for the dashboards.
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
    ap.add_argument("--heads", default="logreg,mlp,knn,ensemble")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="Folder of the CSVs.")
    args = ap.parse_args()

    from fieldguide.config import open_project
    from fieldguide.models.embed import load_embeddings
    from fieldguide.models.evaluate import classification_metrics
    from fieldguide.models.heads import make_head
    from fieldguide.platform import bench_results, store

    project = open_project(args.project)
    ds = store.dataset(project, create=False)
    ids, X = load_embeddings(project, args.backbone, ds)
    table = store.samples_table(ds).set_index("id").loc[ids]
    classes = store.classes(ds)
    index = {c: i for i, c in enumerate(classes)}
    tr = ((table["split"] == "train") & table["label"].notna()).to_numpy()
    te = ((table["split"] == "test") & table["label"].notna()).to_numpy()
    ytr = np.array([index[v] for v in table["label"][tr]])
    yte = np.array([index[v] for v in table["label"][te]])
    rows, members = [], None
    for name in args.heads.split(","):
        t = time.perf_counter()
        head = make_head(name).fit(X[tr], ytr)
        fit_s = time.perf_counter() - t
        probs = np.zeros((te.sum(), len(classes)))
        probs[:, head.classes_] = head.predict_proba(X[te])
        m = classification_metrics(yte, probs, classes)
        rows.append({"head": name, "test_top1": m["top1"], "test_top5": m["top5"], "macro_f1": m["macro_f1"],
                     "ece": m["ece"], "fit_seconds": fit_s})
        print(rows[-1], flush=True)
        if hasattr(head, "weights_"):
            members = pd.DataFrame({"member": head.members, "weight": head.weights_,
                                    "temperature": head.temperatures_})
    df = pd.DataFrame(rows)
    name = project.config.project.name
    out = args.results / f"heads_{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4f")
    tables = {"heads": bench_results.long_form(df, metrics=list(df.columns[1:]), method=df["head"], collection=name,
                                                setting="test")}
    if members is not None:
        members.to_csv(out.with_name(f"heads_ensemble_{name}.csv"), index=False, float_format="%.4f")
        print(members.to_markdown(index=False, floatfmt=".3f"))
        tables["heads_ensemble"] = bench_results.long_form(members, metrics=["weight", "temperature"],
                                                            method=members["member"], collection=name, setting="ensemble")
    run_id = bench_results.record_run(store.warehouse(project), "bench_heads", tables,
                                      {"heads": args.heads, "backbone": args.backbone or project.config.models.backbone})
    print(f"recorded as run {run_id} in {project.warehouse_path}")
    print(df.to_markdown(index=False, floatfmt=".3f"))
    print(f"\n{int(tr.sum())} train / {int(te.sum())} test samples, {len(classes)} classes; table: {out}")


if __name__ == "__main__":
    main()
