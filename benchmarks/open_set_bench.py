"""Unknown species: which open-set score separates held-out species best, over backbones and draws.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/open_set_bench.py --cache /work/main/benchmarks/.cache

Per collection (inat-plants-dev, and cub100 when its arrays are cached) and backbone (Lite0,
Lite1, Lite2), ``--seeds`` times: 3 classes drawn at random (a new draw per seed) are held out of
training, the project's default head (``logreg``) is fit on the other classes' training images,
and each score's AUROC separating the held-out classes' test images from the known classes' ones
is recorded:

- every registered score of :mod:`fieldguide.models.open_set` with its hyper-parameters swept
  (``energy`` T, ``knn_distance`` k, ``(rel_)mahalanobis`` and ``vim`` PCA dims), ``method`` is the
  score, ``params`` the setting;
- two diagnostics: ``energy_unnormalised`` (the head's weights on the embedding before its L2
  normalisation: logits that keep the feature norm) and ``feature_norm`` (minus the embedding's norm);
- combinations (``combined``, ``params`` the scores joined by ``+``): a logistic regression fitted
  on simulated unknowns of the training split only (:func:`~fieldguide.models.open_set.simulated_unknowns`,
  5 rounds); ``combined`` of one score is its calibration.

The default ``unknown_score`` (:data:`~fieldguide.models.open_set.DEFAULT_SCORES`) is the best
``combined`` by the mean over every collection, backbone and seed (``collection`` ``all``).

Writes ``benchmarks/results/open_set.csv`` (collection, backbone, score (method and params), method,
params, seed, auroc;
seed ``mean`` averages the seeds; collection/backbone ``all`` averages every row of a method).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from taxonomy_bench import load  # noqa: E402 - a sibling script (benchmarks/ is on sys.path when run)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "open_set.csv"
FIELDS = ["collection", "backbone", "score", "method", "params", "seed", "auroc"]
HELD_OUT = 3
#: each score's swept setting (a ScoreInputs parameter) and its values; the module's default first
SWEEPS = {"max_softmax": ("", [None]), "max_logit": ("", [None]), "energy": ("temperature", [1.0, 0.5, 2.0, 5.0]),
          "knn_distance": ("k", [1, 5, 10, 20]), "mahalanobis": ("pca_dims", [128, 32, 64, 256]),
          "rel_mahalanobis": ("pca_dims", [128, 32, 64, 256]), "vim": ("pca_dims", [128, 64, 256])}
COMBINATIONS = [("max_softmax", "energy", "knn_distance"), ("max_softmax",), ("rel_mahalanobis",),
                ("max_softmax", "rel_mahalanobis"), ("max_softmax", "max_logit", "rel_mahalanobis"),
                ("max_softmax", "energy", "knn_distance", "rel_mahalanobis"),
                ("max_softmax", "max_logit", "energy", "knn_distance", "mahalanobis", "rel_mahalanobis", "vim")]


def scores_of_seed(Xtr, ytr, Xte, yte, n_classes: int, seed: int) -> dict[tuple[str, str], float]:
    """(method, params) -> AUROC for one held-out draw."""
    from fieldguide.models import open_set as osr
    from fieldguide.models.heads import make_head

    rng = np.random.default_rng(seed)
    out = rng.choice(n_classes, size=HELD_OUT, replace=False)
    keep = ~np.isin(ytr, out)
    unknown = np.isin(yte, out)
    Xk, yk = Xtr[keep], ytr[keep]
    head = make_head("logreg").fit(Xk, yk)
    res: dict[tuple[str, str], float] = {}
    for name, (param, values) in SWEEPS.items():
        for v in values:
            kw = {param: v} if param else {}
            score = osr.score_table(head, Xk, yk, Xte, scores=(name,), **kw)[:, 0]
            res[(name, f"{param}={v:g}" if param else "")] = osr.open_set_auroc(unknown, score)
    lr = head.model_[-1]
    res[("energy_unnormalised", "")] = osr.open_set_auroc(unknown, -logsumexp(Xte @ lr.coef_.T + lr.intercept_, axis=1))
    res[("feature_norm", "")] = osr.open_set_auroc(unknown, -np.linalg.norm(Xte, axis=1))

    names = tuple(dict.fromkeys(s for c in COMBINATIONS for s in c))
    sim, target = osr.simulated_unknowns(make_head("logreg"), Xk, yk, scores=names, seed=seed)
    test = osr.score_table(head, Xk, yk, Xte, scores=names)
    for combo in COMBINATIONS:
        cols = [names.index(s) for s in combo]
        combiner = osr.fit_combiner(sim[:, cols], target)
        res[("combined", "+".join(combo))] = osr.open_set_auroc(unknown, osr.combined_score(combiner, test[:, cols]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--collections", default="inat-plants-dev,cub100")
    ap.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows: list[dict] = []
    per_method: dict[tuple[str, str], list[float]] = {}
    for name in [n.strip() for n in args.collections.split(",") if n.strip()]:
        for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            if not (args.cache / "arrays" / f"{name}_{backbone}.npz").exists():
                logging.info("%s %s: no cached arrays, left out", name, backbone)
                continue
            classes, Xtr, ytr, Xte, yte = load(name, args.cache, backbone)
            seeds: dict[tuple[str, str], list[float]] = {}
            for seed in range(args.seeds):
                t0 = time.time()
                for key, a in scores_of_seed(Xtr, ytr, Xte, yte, len(classes), seed).items():
                    rows.append({"collection": name, "backbone": backbone, "method": key[0], "params": key[1],
                                 "seed": seed, "auroc": a})
                    seeds.setdefault(key, []).append(a)
                    per_method.setdefault(key, []).append(a)
                logging.info("%s %s seed %d: %.0f s", name, backbone, seed, time.time() - t0)
            for key, values in seeds.items():
                rows.append({"collection": name, "backbone": backbone, "method": key[0], "params": key[1],
                             "seed": "mean", "auroc": float(np.mean(values))})
    for key, values in per_method.items():
        rows.append({"collection": "all", "backbone": "all", "method": key[0], "params": key[1], "seed": "mean",
                     "auroc": float(np.mean(values))})
    for r in sorted((r for r in rows if r["collection"] == "all"), key=lambda r: -r["auroc"]):
        print(f"{r['method']:20s} {r['params']:70s} {r['auroc']:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df["score"] = (df["method"] + " " + df["params"]).str.strip()
    df[FIELDS].round({"auroc": 4}).to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
