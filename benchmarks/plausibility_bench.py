"""The noise benchmark with and without the ``metadata_plausibility`` signal, on a collection with dates.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/plausibility_bench.py \
        [--cache benchmarks/.cache] [--collection inat-plants-dev] [--rates 0.1,0.2,0.4] [--seeds 0,1,2]

Reads the suite cache's arrays (``<cache>/arrays/<collection>_<backbone>.npz``: the training split's
embeddings, labels and ``observed_on_train``), injects symmetric (a random other class) and
confusable-pair (the class with the nearest embedding centroid) noise into the training labels
with each seed, and runs :func:`fieldguide.curation.noise_bench.run_noise_benchmark` as ``bench
noise`` does (5-fold logreg pred_probs, the combined signals, the default weights; no entropy head:
``flag`` has none before a ``train`` run), with the encoded dates. Rows per setting: the combined
score with the default weights (``metadata_plausibility`` weighs 0 there), the score with the
signal at each weight of ``--weights``, and the signal alone. Writes
``benchmarks/results/plausibility_<collection>.csv`` (per seed, and the mean over seeds).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"noise_score": "noise score (default weights)", "metadata_plausibility": "metadata_plausibility alone",
           "label_quality": "label_quality alone (cleanlab)"}
log = logging.getLogger("plausibility_bench")


def dates_matrix(observed_on: np.ndarray) -> np.ndarray:
    """The encoded metadata (:func:`fieldguide.models.metadata.encode`) of dates as stored in the arrays."""
    from fieldguide.models import metadata as md

    when = pd.to_datetime(pd.Series(observed_on).replace("", None), errors="coerce")
    return md.encode([None if pd.isna(t) else t.to_pydatetime() for t in when], [None] * len(when))


def main() -> None:
    from fieldguide.config.sections import DEFAULT_SIGNAL_WEIGHTS
    from fieldguide.curation.noise_bench import run_noise_benchmark
    from fieldguide.curation.signals import registered_signals
    from fieldguide.models import metadata as md

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--collection", default="inat-plants-dev")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--rates", default="0.1,0.2,0.4")
    ap.add_argument("--kinds", default="symmetric,pairs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--weights", default="0.1,0.25,0.5", help="weights of metadata_plausibility to try")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    z = np.load(args.cache / "arrays" / f"{args.collection}_{args.backbone}.npz", allow_pickle=True)  # observed_on_* are object arrays
    X, y = z["X_train"], z["y_train"].astype(int)
    M = dates_matrix(z["observed_on_train"])
    log.info("%s: %d training samples, %d classes, %d with a date", args.collection, len(y), len(z["classes"]),
             int((M[:, md.COLUMNS.index("day_missing")] == 0).sum()))
    weights = tuple(float(w) for w in args.weights.split(","))
    combined = [n for n, spec in registered_signals().items()
                if n == "metadata_plausibility" or any(DEFAULT_SIGNAL_WEIGHTS.get(o, 0) > 0 for o in spec.noisy_when)]
    frames = []
    for seed in (int(s) for s in args.seeds.split(",")):
        table = run_noise_benchmark(X, y, len(z["classes"]), rates=tuple(float(r) for r in args.rates.split(",")),
                                    kinds=tuple(args.kinds.split(",")), seed=seed, signals=combined, entropy=False,
                                    metadata=M, metadata_weights=weights, progress=False)
        table.insert(0, "seed", str(seed))
        frames.append(table)
        log.info("seed %d done", seed)
    runs = pd.concat(frames, ignore_index=True)
    keep = list(METHODS) + [f"noise_score@metadata={w:g}" for w in weights]
    runs = runs[runs["signal"].isin(keep)]
    mean = runs.groupby(["kind", "rate", "signal"], sort=False, as_index=False)[["auroc", "f1", "precision_top5"]].mean()
    mean.insert(0, "seed", "mean")
    out = pd.concat([runs[["seed", "kind", "rate", "signal", "auroc", "f1", "precision_top5"]], mean], ignore_index=True)
    out["method"] = out["signal"].map(lambda s: METHODS.get(s, s.replace("noise_score@metadata=",
                                                                         "noise score + metadata_plausibility w=")))
    out["setting"] = out["kind"] + " " + out["rate"].map(lambda r: f"{r:.0%}")
    out.insert(0, "collection", args.collection)
    path = ROOT / "benchmarks" / "results" / f"plausibility_{args.collection}.csv"
    out.to_csv(path, index=False, float_format="%.4f")
    print(out[out["seed"] == "mean"].pivot_table(index="method", columns="setting", values="auroc", sort=False)
          .to_markdown(floatfmt=".4f"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
