"""Ingest rate on a CUB-style folder (default ../shared/data/cub100) into a fresh project.

    .venv/bin/python benchmarks/ingest_bench.py [--data DIR] [--workers N]

Prints a table: images, seconds, images/s for the first ingest (image checks + metadata +
bulk insert) and for the re-run (which must add 0 samples). Writes
``benchmarks/results/ingest_<data folder name>.csv``; with ``--project`` also records it in that project's
warehouse (a ``bench_ingest`` run, table ``ingest``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cub100")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--project", type=Path, default=None,
                    help="Also record the table in this project's warehouse (the dashboards' Benchmarks page).")
    args = ap.parse_args()

    from fieldguide.config import init_project
    from fieldguide.platform.ingest import ingest
    from fieldguide.platform.store import dataset

    with tempfile.TemporaryDirectory() as tmp:
        project = init_project(Path(tmp) / "bench", "bench")
        if args.workers:
            project.config.ingest.workers = args.workers
        rows = []
        for label in ("first ingest", "re-run"):
            t = time.perf_counter()
            rep = ingest(project, args.data, fmt="cub")
            dt = time.perf_counter() - t
            n = rep.added + rep.existing
            rows.append({"step": label, "images": n, "added": rep.added, "seconds": dt, "images_per_s": n / dt})
        total = len(dataset(project))
        meta = dataset(project).exists("metadata").count()
        from fieldguide.platform.store import release_database

        release_database()  # stop MongoDB before its temporary folder goes
    df = pd.DataFrame(rows)
    df["with_metadata"] = meta
    out = ROOT / "benchmarks" / "results" / f"ingest_{args.data.name}.csv"
    df.to_csv(out, index=False, float_format="%.4f")
    if args.project is not None:
        from fieldguide.platform import bench_results

        rows = bench_results.long_form(
            df,
            metrics=["images", "added", "seconds", "images_per_s", "with_metadata"],
            method=df["step"],
            collection=args.data.name,
            setting="ingest")
        print(bench_results.record_in_project(args.project, "bench_ingest", {"ingest": rows}, vars(args)))
    print(df.to_markdown(index=False, floatfmt=".1f"))
    print(f"\nstore: {total} samples, {meta} with image metadata; table: {out}")


if __name__ == "__main__":
    main()
