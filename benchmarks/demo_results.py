"""What ``make demo`` measured, read back from the demo project's warehouse (read-only).

    .venv/bin/python benchmarks/demo_results.py [--project demo-project]

One row per (demo run, step, metric): the wall seconds of each step (``metric = wall_seconds``)
and every metric the step recorded (``predict``: the 5-fold out-of-fold top-1 on train;
``evaluate``: top-1/5, macro-F1, ECE on the test split; ``embed``: images/s; ...). ``demo`` numbers
the demo runs in order: each ``ingest`` run starts one (a re-run of ``make demo`` embeds
nothing and is faster). Writes ``benchmarks/results/demo_<project name>.csv`` and records the table in
the project's warehouse (a ``bench_demo`` run, table ``demo``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT / "demo-project")
    args = ap.parse_args()

    from fieldguide.config import open_project
    from fieldguide.platform import bench_results
    from fieldguide.platform.warehouse import Warehouse

    project = open_project(args.project)
    wh = Warehouse(project.warehouse_path)
    runs = wh.query("SELECT run_id, kind, started, finished FROM runs WHERE status = 'completed' "
                    "AND kind NOT LIKE 'bench_%' ORDER BY started")  # the demo's steps, not benchmarks
    runs["demo"] = (runs["kind"] == "ingest").cumsum()
    runs["wall_seconds"] = (runs["finished"] - runs["started"]).dt.total_seconds()
    metrics = wh.query("SELECT run_id, split, name AS metric, value FROM metrics")
    seconds = runs.assign(split="all", metric="wall_seconds", value=runs["wall_seconds"])
    table = (
        pd.concat([seconds[["run_id", "split", "metric", "value"]], metrics], ignore_index=True)
        .merge(runs[["run_id", "demo", "kind", "started"]], on="run_id")
        .rename(columns={"kind": "step"})
        .sort_values(["started", "split", "metric"])
    )[["demo", "step", "split", "metric", "value", "run_id"]]
    out = ROOT / "benchmarks" / "results" / f"demo_{project.config.project.name}.csv"
    table.to_csv(out, index=False, float_format="%.4f")
    rows = bench_results.long_rows(table.assign(
        collection=project.config.project.name, setting=table["demo"].map(lambda d: f"demo {d}"),
        method=[s if split == "all" else f"{s} ({split})" for s, split in zip(table["step"], table["split"])]),
        params=["split", "run_id"])
    run_id = bench_results.record_run(wh, "bench_demo", {"demo": rows}, {"project": str(args.project)})
    print(f"recorded as run {run_id} in {project.warehouse_path}")
    print(table[table["demo"] == 1].to_markdown(index=False, floatfmt=".4f"))
    print(f"\n{table['demo'].max()} demo run(s); table: {out}")


if __name__ == "__main__":
    main()
