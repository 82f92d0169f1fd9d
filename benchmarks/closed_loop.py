"""Closed-loop benchmark: does training tolerate the noise, and does curating it pay off?

    .venv/bin/python benchmarks/closed_loop.py [--data ../shared/data/cub100] [--embeddings-from demo-project]

In a scratch project over a CUB-style folder (embeddings reused from ``--embeddings-from`` when
it has them, matched by file hash; else embedded), for each noise setting (symmetric and
confusable-pair flips of the train labels at 20% and 40%, fixed seed; applied through the one
label-changing function as crowd labels), it measures test top-1 of:

- ``ce noisy``: cross-entropy head on the noisy labels;
- ``two-stage entropy``: max→min entropy schedule (and ``reverse (min→max)``, the ablation);
- ``grpo``: the GRPO classifier loss with the same schedule;
- ``remove flagged + retrain``: predict (5-fold) → flag → retrain (CE) with flagged samples excluded;
- ``relabel flagged + retrain``: a simulated curator answers every flagged sample with its clean
  label through ``store.set_labels(source="labelstudio")`` (what a Label Studio pull calls), then
  retrain (CE);
- ``ce clean``: cross-entropy on the clean labels (the ceiling);

plus the share of the noisy-to-clean gap each recovers and the wall time of each arm. A 0% row
checks that two-stage entropy costs nothing on clean labels. Seeds are fixed: re-running gives
the same table. Writes ``benchmarks/results/closed_loop.csv`` and prints a Markdown table; with
``--project`` also records it in that project's warehouse (a ``bench_closed_loop`` run, table ``closed_loop``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cub100")
    ap.add_argument("--embeddings-from", type=Path, default=ROOT / "demo-project")
    ap.add_argument("--settings", default="symmetric:0.2,symmetric:0.4,pairs:0.2,pairs:0.4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--project", type=Path, default=None,
                    help="Also record the table in this project's warehouse (the dashboards' Benchmarks page).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "closed_loop.csv")
    args = ap.parse_args()

    from fieldguide.config import init_project, open_project
    from fieldguide.curation.flag import flag
    from fieldguide.curation.noise_bench import inject_noise
    from fieldguide.errors import NotReadyError
    from fieldguide.models.embed import embed, import_embeddings, load_embeddings
    from fieldguide.models.predict import predict
    from fieldguide.models.train import train
    from fieldguide.platform import store
    from fieldguide.platform.ingest import ingest

    settings = [(k, float(r)) for k, r in (s.split(":") for s in args.settings.split(","))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        p = init_project(Path(tmp) / "loop", "closedloop")
        p.config.train.seed = args.seed
        p.config.predict.seed = args.seed
        ingest(p, args.data, fmt="cub")
        try:
            n = import_embeddings(p, open_project(args.embeddings_from))
            print(f"reused {n} embeddings from {args.embeddings_from}")
        except (NotReadyError, Exception) as e:  # noqa: BLE001 - fall back to embedding
            print(f"embedding from scratch ({e})")
        embed(p)
        ds = store.dataset(p)
        ids, X = load_embeddings(p, None, ds)
        table = store.samples_table(ds).set_index("id").loc[ids]
        train_ids = [s for s, split in zip(ids, table["split"]) if split == "train"]
        classes = store.classes(ds)
        index = {c: i for i, c in enumerate(classes)}
        clean = {s: table.at[s, "label"] for s in train_ids}
        y_clean = np.array([index[clean[s]] for s in train_ids])
        feats = X[[ids.index(s) for s in train_ids]]

        def set_train_labels(labels: dict, source: str, actor: str) -> None:
            store.set_labels(p, ds, labels, source=source, actor=actor)

        def arm(name: str, fn) -> tuple[float, float]:
            t = time.perf_counter()
            top1 = fn()
            return top1, time.perf_counter() - t

        def train_top1(method: str, *, reverse: bool = False, flagged: str = "keep", kind: str = "train") -> float:
            p.config.train.reverse_schedule = reverse
            try:
                return train(p, method=method, flagged=flagged, kind=kind, progress=False).top1
            finally:
                p.config.train.reverse_schedule = False

        for kind, rate in [("none", 0.0), *settings]:
            set_train_labels(clean, "curator", "benchmark-reset")
            if rate > 0:
                noisy_y = inject_noise(y_clean, len(classes), rate, kind, seed=args.seed, features=feats)
                noisy = {s: classes[v] for s, v in zip(train_ids, noisy_y)}
                set_train_labels(noisy, "crowd", f"noise-injection-{kind}-{rate}")
            else:
                noisy = dict(clean)
            res = {}
            res["ce noisy"] = arm("ce", lambda: train_top1("ce"))
            res["two-stage entropy"] = arm("tse", lambda: train_top1("two-stage-entropy"))
            if rate > 0:
                res["reverse (min→max)"] = arm("rev", lambda: train_top1("two-stage-entropy", reverse=True))
                res["grpo"] = arm("grpo", lambda: train_top1("grpo"))
                t = time.perf_counter()
                predict(p)
                report = flag(p)
                flag_s = time.perf_counter() - t
                top1, s = arm("remove", lambda: train_top1("ce", flagged="exclude", kind="retrain"))
                res["remove flagged + retrain"] = (top1, s + flag_s)
                flagged_ids = [sid for sid in ds.match({"label_issue": True}).values("id") if sid in clean]
                t = time.perf_counter()
                set_train_labels({sid: clean[sid] for sid in flagged_ids}, "labelstudio", "simulated-curator")
                top1, s = arm("relabel", lambda: train_top1("ce", kind="retrain"))
                res["relabel flagged + retrain"] = (top1, s + flag_s + time.perf_counter() - t - s)
                fixed = sum(noisy[sid] != clean[sid] for sid in flagged_ids)
                print(f"{kind} {rate}: flagged {report.flagged}, of which {fixed} truly noisy "
                      f"(of {sum(noisy[s] != clean[s] for s in train_ids)} flips)")
                set_train_labels(clean, "curator", "benchmark-reset")
                res["ce clean"] = arm("clean", lambda: train_top1("ce"))
            lo, hi = res["ce noisy"][0], res.get("ce clean", res["ce noisy"])[0]
            for name, (top1, secs) in res.items():
                gap = (top1 - lo) / (hi - lo) if rate > 0 and hi - lo > 1e-9 else float("nan")
                rows.append({"noise": kind, "rate": rate, "arm": name, "test_top1": top1,
                             "gap_recovered": gap, "seconds": secs})
            print(pd.DataFrame(rows[-len(res):]).to_string(index=False))
        from fieldguide.platform.store import release_database

        release_database()  # stop MongoDB before its temporary folder goes
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.4f")
    if args.project is not None:
        from fieldguide.platform import bench_results

        rows = bench_results.long_form(
            df,
            metrics=["test_top1", "gap_recovered", "seconds"],
            method=df["arm"],
            collection=args.data.name,
            setting=df["noise"] + " " + df["rate"].map(lambda r: f"{r:.0%}"),
            role=df["arm"].map(lambda a: "baseline" if a == "ce noisy" else None if a == "ce clean" else "default"))
        print(bench_results.record_in_project(args.project, "bench_closed_loop", {"closed_loop": rows}, vars(args)))
    print(df.to_markdown(index=False, floatfmt=".3f"))
    print(f"\ntable: {args.out}")


if __name__ == "__main__":
    main()
