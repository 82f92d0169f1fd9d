"""Backbones on the bundled collections: accuracy, embedding quality, cost and gradient activity.

    .venv/bin/python benchmarks/backbones.py [--collections cub100,inat-plants-dev]
        [--backbones efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,distilled:RUN,timm/ARCH=WEIGHTS]
        [--cache benchmarks/.cache] [--data ../shared/data] [--steps 5] [--project DIR]

Each collection's project under ``--cache`` (the suite's: ingested once, embeddings cached; a
backbone not embedded yet is embedded first) is measured by ``bench backbones``' own code
(:func:`fieldguide.models.backbone_bench.bench_backbones`): a ``logreg`` head on the train split's
embeddings scored on the test split (cub100: its own split; inat-plants-dev: the suite's split,
:func:`fieldguide.suite.table_split`), kNN top-1 (1-NN, cosine), silhouette, alignment, uniformity,
within/between distance ratio, parameters, MACs and FLOPs per image, images/s and peak memory on
this machine (the GPU when there is one), and per-block gradient norms over a few fine-tuning steps.

Writes ``benchmarks/results/backbones_<collection>.csv`` (a row per backbone; rows of backbones not
measured this time are kept, so a later run adds rows) and ``backbones_<collection>_gradients.csv``
(the mean gradient norm per block). Each backbone is a ``bench_backbone`` run in the collection
project's warehouse, or in ``--project``'s when given; the plots go to the collection project's
``runs/backbones/``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LITE = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def merge(path: Path, new: pd.DataFrame, key: str = "backbone") -> pd.DataFrame:
    """``new`` in place of the rows of ``path`` (a CSV) with the same ``key``; the others kept, first."""
    if path.is_file():
        old = pd.read_csv(path)
        new = pd.concat([old[~old[key].isin(new[key])], new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(path, index=False, float_format="%.6g")
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collections", default="cub100,inat-plants-dev")
    ap.add_argument("--backbones", default=LITE, help="Comma-separated NAME or NAME=WEIGHTS.")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--steps", type=int, default=5, help="Fine-tuning steps of the gradient activity.")
    ap.add_argument("--batch-size", type=int, default=8, help="Images per fine-tuning step.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--project", type=Path, default=None,
                    help="Record the runs in this project's warehouse (the dashboards' Backbones page).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from fieldguide.config import CONFIG_NAME, open_project
    from fieldguide.models.backbone_bench import bench_backbones
    from fieldguide.models.gradients import mean_by_block
    from fieldguide.platform.warehouse import Warehouse
    from fieldguide.suite import collection_features, resolve_collections, table_split

    warehouse = Warehouse(open_project(args.project).warehouse_path) if args.project else None
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    for coll in resolve_collections(args.data, args.collections, []):
        start = time.perf_counter()
        if not (args.cache / coll.name / CONFIG_NAME).is_file():  # ingested (and embedded) as the suite has it
            collection_features(coll, args.cache, backbone=backbones[0].split("=")[0])
        project = open_project(args.cache / coll.name)
        results, plots = bench_backbones(project, backbones, steps=args.steps, grad_batch_size=args.batch_size,
                                         device=args.device, split_fn=table_split, warehouse=warehouse)
        rows = pd.DataFrame([{**r.row(), "collection": coll.name, "split": r.config["split"],
                              "n_train": r.config["n_train"], "n_test": r.config["n_test"]} for r in results])
        rows = rows.drop(columns=["n"]).astype({c: "int64" for c in ("params", "macs", "flops")})  # exact counts
        table = merge(args.results / f"backbones_{coll.name}.csv", rows)
        grads = pd.concat([mean_by_block(r.gradients).assign(backbone=r.backbone) for r in results
                           if len(r.gradients)], ignore_index=True)
        merge(args.results / f"backbones_{coll.name}_gradients.csv",
              grads[["backbone", "block", "depth", "grad_norm"]])
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"{coll.name}: {time.perf_counter() - start:.0f} s; plots: {', '.join(map(str, plots))}")


if __name__ == "__main__":
    main()
