"""Label-noise detection benchmark on a project's clean labels (default: the demo project on cub100).

    .venv/bin/python benchmarks/noise_bench.py [--project demo-project] [--rates 0.1,0.2,0.4]

Injects symmetric and confusable-pair noise with a fixed seed into the train split's labels
(kept clean aside), builds 5-fold out-of-sample pred_probs with the project's head on its cached
embeddings, runs every registered signal and the combined noise score, and prints precision,
recall, F1, AUROC and precision in the top 5% per signal and setting. The table is also written
to ``benchmarks/results/noise_<project name>.csv`` (shown by the dashboards) and the project's
``runs/benchmarks/``. Run ``make demo`` first (it embeds cub100).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT / "demo-project")
    ap.add_argument("--rates", default="0.1,0.2,0.4")
    ap.add_argument("--kinds", default="symmetric,pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--entropy-weights", default="",
                    help="also the combined score with these weights of the entropy signal, e.g. 0.05,0.1,0.25")
    args = ap.parse_args()

    from fieldguide.config import open_project
    from fieldguide.curation.noise_bench import project_noise_benchmark

    project = open_project(args.project)
    table, path = project_noise_benchmark(
        project, rates=tuple(float(r) for r in args.rates.split(",")), kinds=tuple(args.kinds.split(",")),
        seed=args.seed, entropy_weights=tuple(float(w) for w in args.entropy_weights.split(",") if w),
    )
    out = ROOT / "benchmarks" / "results" / f"noise_{project.config.project.name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4f")
    cols = ["kind", "rate", "signal", "precision", "recall", "f1", "auroc", "precision_top5", "flagged"]
    print(table[cols].to_markdown(index=False, floatfmt=".3f"))
    sweep = table[table["signal"].str.startswith("noise_score")]
    if sweep["signal"].nunique() > 2:  # what each weight of the entropy signal does to the AUROC
        print("\nAUROC of the combined score by weight of the entropy signal:")
        print(sweep.pivot_table(index="signal", columns=["kind", "rate"], values="auroc")
              .to_markdown(floatfmt=".4f"))
    print(f"\ntable: {out} and {path}")


if __name__ == "__main__":
    main()
