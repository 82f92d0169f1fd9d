"""Embedding throughput: ``fieldguide embed`` (DataLoader, cache, store) vs a bare timm forward loop.

    .venv/bin/python benchmarks/embed_bench.py [--data DIR] [--n 512] [--backbone efficientnet_lite0]

Both embed the same N images of a CUB-style folder with the same model, batch size and
preprocessing. The bare loop decodes and transforms the images in the main process and runs
``model(batch)`` under ``torch.inference_mode``; fieldguide's number is end to end (reading the
store, decoding in workers, writing the Parquet cache). The issue's target: fieldguide within
1.5x of the bare loop's time. Writes ``benchmarks/results/embed_<backbone>.csv``; with ``--project``
also records it in that project's warehouse (a ``bench_embed`` run, table ``embed``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(bb, paths: list[str], batch_size: int) -> float:
    import torch
    from PIL import Image

    tf = bb.transform()
    model = bb.model.eval()
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + batch_size]])
            model(batch)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cub100")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--project", type=Path, default=None,
                    help="Also record the table in this project's warehouse (the dashboards' Benchmarks page).")
    args = ap.parse_args()

    import torch

    from fieldguide.config import init_project
    from fieldguide.models.backbones import load_backbone
    from fieldguide.models.embed import embed
    from fieldguide.platform.ingest import ingest
    from fieldguide.platform.store import dataset

    print(f"torch threads {torch.get_num_threads()}, {args.n} images, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        # a folder of N images (links, not copies) so the project holds exactly those
        src = Path(tmp) / "images"
        files = sorted((args.data / "images").rglob("*.jpg"))[: args.n]
        for f in files:
            dst = src / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f)
        project = init_project(Path(tmp) / "bench", "bench")
        project.config.models.backbone = args.backbone
        project.config.models.batch_size = args.batch_size
        project.config.models.num_workers = args.workers
        ingest(project, src, fmt="folder", root=args.data)  # links resolve into the data folder
        paths = dataset(project).values("filepath")
        bb = load_backbone(args.backbone)
        bare_loop(bb, paths[: args.batch_size], args.batch_size)  # warm-up
        bare = bare_loop(bb, paths, args.batch_size)
        t = time.perf_counter()
        rep = embed(project, bb=bb)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        again = embed(project, bb=bb)
        cached = time.perf_counter() - t
        from fieldguide.platform.store import release_database

        release_database()  # stop MongoDB before its temporary folder goes
    n = len(paths)
    df = pd.DataFrame([
        {"method": "bare timm loop", "images": n, "seconds": bare, "images_per_s": n / bare, "time_vs_bare": 1.0},
        {"method": "fieldguide embed", "images": rep.embedded, "seconds": ours, "images_per_s": rep.embedded / ours,
         "time_vs_bare": ours / bare},
        {"method": "fieldguide embed, re-run (cached)", "images": again.embedded, "seconds": cached,
         "images_per_s": None, "time_vs_bare": None},
    ]).assign(batch_size=args.batch_size, workers=args.workers, torch_threads=torch.get_num_threads())
    out = ROOT / "benchmarks" / "results" / f"embed_{args.backbone}.csv"
    df.to_csv(out, index=False, float_format="%.4f")
    if args.project is not None:
        from fieldguide.platform import bench_results

        rows = bench_results.long_form(
            df,
            metrics=["images", "seconds", "images_per_s", "time_vs_bare"],
            method=df["method"],
            collection=args.data.name,
            setting=args.backbone,
            role=df["method"].map({"fieldguide embed": "default", "bare timm loop": "baseline"}),
            params=["batch_size", "workers", "torch_threads"])
        print(bench_results.record_in_project(args.project, "bench_embed", {"embed": rows}, vars(args)))
    print(df.to_markdown(index=False, floatfmt=".2f"))
    print(f"\ntable: {out}")


if __name__ == "__main__":
    main()
