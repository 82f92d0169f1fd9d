"""The noise benchmark: inject label noise into clean labels, run the signals, score detection.

Noise kinds: ``symmetric`` (a flipped label goes to any other class, uniformly) and ``pairs``
(class-dependent: a flipped label goes to the class whose embedding centroid is nearest, the
confusable pair a tired curator would mix up). For each signal alone and for the combined
noise score it reports precision, recall and F1 of the flagged set, AUROC, and precision in the
top 5%. A continuous signal's flagged set is its top-n with n = cleanlab's estimate of the
number of issues (the rule ``flag`` uses), so every row is judged on the same budget.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import normalize
from tqdm.auto import tqdm

from fieldguide import names
from fieldguide.config.sections import DEFAULT_SIGNAL_WEIGHTS
from fieldguide.curation import plausibility, signals as sig  # plausibility registers its signal
from fieldguide.curation.noise_score import flag_top, noise_score, percentile_rank
from fieldguide.models.heads import make_head
from fieldguide.models.crossval import cross_val_pred_probs
from fieldguide.platform import bench_results
from fieldguide.platform.lock import writes

KINDS = ("symmetric", "pairs")


def confusable_partner(features: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """For each class, the class with the nearest (cosine) embedding centroid."""
    X = normalize(np.asarray(features, dtype=np.float32))
    cent = np.stack([X[y == c].mean(axis=0) if (y == c).any() else np.zeros(X.shape[1]) for c in range(n_classes)])
    cent = normalize(cent.astype(np.float32))
    sims = cent @ cent.T
    np.fill_diagonal(sims, -np.inf)
    return sims.argmax(axis=1)


def inject_noise(y: np.ndarray, n_classes: int, rate: float, kind: str = "symmetric", *, seed: int = 0,
                 features: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``y`` with ``round(rate * n)`` labels flipped (always to another class)."""
    if kind not in KINDS:
        raise ValueError(f"noise kind {kind!r}: use one of {KINDS}")
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=int)
    noisy = y.copy()
    idx = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
    if kind == "symmetric":
        shift = rng.integers(1, n_classes, size=len(idx))
        noisy[idx] = (y[idx] + shift) % n_classes
    else:
        if features is None:
            raise ValueError("pairs noise needs features to find the confusable classes")
        noisy[idx] = confusable_partner(features, y, n_classes)[y[idx]]
    return noisy


def _scores(truth: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict:
    ok = ~np.isnan(score)
    tp = int((flagged & truth).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    top = max(1, int(round(0.05 * ok.sum())))
    order = np.argsort(-np.where(ok, score, -np.inf), kind="stable")[:top]
    auroc = roc_auc_score(truth[ok], score[ok]) if 0 < truth[ok].sum() < ok.sum() else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "auroc": float(auroc),
            "precision_top5": float(truth[order].mean()), "flagged": int(flagged.sum())}


def detection_table(noisy: np.ndarray, clean: np.ndarray, values: dict[str, np.ndarray],
                    pred_probs: np.ndarray) -> pd.DataFrame:
    """Detection scores of every signal and of the combined score (rows), given the true flips."""
    truth = noisy != clean
    direction = sig.directions()
    n_issues = int(values["cl_issue"].sum())
    rows = []
    pred_differs = (pred_probs.argmax(axis=1) != noisy).astype(float)
    candidates = dict(values)
    candidates["prediction_differs"] = pred_differs
    for name, arr in candidates.items():
        if name in ("label_issue", "consensus_label", "near_duplicate_of") or name.startswith("is_"):
            continue
        oriented = percentile_rank(arr, direction.get(name, "high"))
        if name in ("cl_issue", "prediction_differs"):  # boolean flaggers: their own set
            flagged = arr > 0
            oriented = arr.astype(float)
            if name == "cl_issue":  # rank inside the set by label quality, as cleanlab does
                oriented = arr + percentile_rank(values["label_quality"], "low") * 1e-3
        else:
            flagged = flag_top(oriented, n_issues)
        rows.append({"signal": name, **_scores(truth, oriented, flagged)})
    return pd.DataFrame(rows)


def entropy_trajectories(features: np.ndarray, labels: np.ndarray, n_classes: int, *, seed: int = 0,
                         train_settings: dict | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Trajectory summaries (``aum``, ``agreement``, ``mean_entropy``) of a two-stage entropy head
    trained on ``labels``: the inputs of the ``entropy`` signal."""
    from fieldguide.models.fit import fit_head, trajectory_signals

    _, state = fit_head(features, labels, n_classes, seed=seed, progress=progress, **(train_settings or {}))
    return trajectory_signals(state.trajectories)


def run_noise_benchmark(features: np.ndarray, clean: np.ndarray, n_classes: int, *,
                        rates=(0.1, 0.2, 0.4), kinds=KINDS, seed: int = 0, head: str = "logreg",
                        folds: int = 5, signals: list[str] | None = None, entropy: bool = True,
                        train_settings: dict | None = None, entropy_weights: tuple[float, ...] = (),
                        weights: dict[str, float] | None = None, metadata: np.ndarray | None = None,
                        metadata_weights: tuple[float, ...] = (), progress: bool = True) -> pd.DataFrame:
    """The full table over ``kinds`` x ``rates`` (one row per signal and setting).

    With ``entropy`` a two-stage entropy head is trained on the noisy labels and its
    trajectories feed the ``entropy`` signal; the row ``noise_score_without_entropy`` is then the
    combined score without it, so the table shows what the signal adds; each weight ``w`` in
    ``entropy_weights`` adds a row ``noise_score@entropy=w`` (the combined score with that weight).
    ``weights``: each signal output's share in the combined score (default: ``signals.weights``'
    defaults). ``metadata``: the samples' encoded dates and places (rows of
    :data:`fieldguide.models.metadata.COLUMNS`) for the ``metadata_plausibility`` signal; the row
    ``noise_score_without_metadata`` is then the combined score without it, and each weight ``w``
    of ``metadata_weights`` adds a row ``noise_score@metadata=w``.
    """
    weights = sig.check_weights(DEFAULT_SIGNAL_WEIGHTS if weights is None else weights)
    direction = sig.directions()
    frames = []
    settings = [(kind, rate) for kind in kinds for rate in rates]
    for kind, rate in tqdm(settings, desc="noise benchmark", unit="setting", disable=None if progress else True):
        start = time.perf_counter()
        noisy = inject_noise(clean, n_classes, rate, kind, seed=seed, features=features)
        probs, _ = cross_val_pred_probs(make_head(head), features, noisy, n_classes, folds=folds, seed=seed)
        extra = (entropy_trajectories(features, noisy, n_classes, seed=seed, train_settings=train_settings)
                 if entropy else {})
        if metadata is not None:
            extra[plausibility.METADATA] = metadata
        inputs = sig.SignalInputs(labels=noisy, pred_probs=probs, features=features, extra=extra)
        values = sig.compute_signals(inputs, signals)
        values["noise_score"] = noise_score(values, weights, direction)
        if entropy and "entropy_aum" in values:
            without = {k: v for k, v in weights.items() if not k.startswith("entropy_")}
            values["noise_score_without_entropy"] = noise_score(values, without, direction)
            for w in entropy_weights:
                values[f"noise_score@entropy={w:g}"] = noise_score(values, dict(weights, entropy_aum=w), direction)
        if names.METADATA_PLAUSIBILITY in values:
            without = {k: v for k, v in weights.items() if k != names.METADATA_PLAUSIBILITY}
            values["noise_score_without_metadata"] = noise_score(values, without, direction)
            for w in metadata_weights:
                values[f"noise_score@metadata={w:g}"] = noise_score(
                    values, {**weights, names.METADATA_PLAUSIBILITY: w}, direction)
        df = detection_table(noisy, clean, values, probs)
        df.insert(0, "rate", rate)
        df.insert(0, "kind", kind)
        df["seconds"] = time.perf_counter() - start
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


@writes('bench noise')
def project_noise_benchmark(project, *, rates=(0.1, 0.2, 0.4), kinds=KINDS, seed: int = 0,
                            head: str | None = None, folds: int | None = None, backbone: str | None = None,
                            splits: tuple[str, ...] = ("train", "val"), entropy_weights: tuple[float, ...] = (),
                            progress: bool = True):
    """The noise benchmark on a project's own labels, taken as clean (``fieldguide bench noise``).

    Uses the cached embeddings of the labeled samples of ``splits``; writes the table to
    ``PROJECT/runs/benchmarks/noise-<run>.csv``, and to the warehouse a ``bench_noise`` run with its
    headline numbers (combined score's F1 and AUROC per setting) and the table itself
    (``bench_results``, table ``noise``: what the dashboards show).
    Returns ``(table, csv_path)``.
    """
    from fieldguide.errors import FieldguideError, NotReadyError
    from fieldguide.models.embed import embedded_table
    from fieldguide.platform import store

    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise FieldguideError(f"noise kind(s) {', '.join(bad) or 'none'}: use one or more of {', '.join(KINDS)}")
    if not rates or not all(0 < r < 1 for r in rates):
        raise FieldguideError(f"noise rates {list(rates)}: each must be between 0 and 1 (exclusive)")
    ids, X, table = embedded_table(project, backbone)
    keep = (table["label"].notna() & table["split"].isin(splits)).to_numpy()
    if keep.sum() < 10:
        raise NotReadyError(f"the noise benchmark needs labeled {'/'.join(splits)} samples with embeddings "
                            f"(have {int(keep.sum())}; run 'fieldguide ingest' and 'fieldguide embed')")
    labels = table["label"][keep].to_numpy()
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    clean = np.array([index[v] for v in labels])
    head = head or project.config.predict.head
    folds = folds or project.config.predict.folds
    wh = store.warehouse(project)
    config = {"rates": list(rates), "kinds": list(kinds), "seed": seed, "head": head, "folds": folds,
              "backbone": backbone or project.config.models.backbone, "samples": int(keep.sum())}
    with wh.run("bench_noise", config) as run_id:
        result = run_noise_benchmark(X[keep], clean, len(classes), rates=rates, kinds=kinds, seed=seed,
                                     head=head, folds=folds, entropy_weights=entropy_weights,
                                     weights=project.config.signals.weights, progress=progress)
        folder = project.runs_dir / "benchmarks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"noise-{run_id}.csv"
        result.to_csv(path, index=False, float_format="%.4f")
        combined = result[result["signal"] == "noise_score"]
        wh.write("metrics", [
            {"run_id": run_id, "split": f"{r.kind}@{r.rate:g}", "name": name, "value": float(getattr(r, name))}
            for r in combined.itertuples() for name in ("f1", "auroc", "precision_top5")
        ])
        bench_results.record(wh, run_id, "noise", results_rows(result, project.config.project.name))
    return result, path


#: the table's roles: the combined score is what ``flag`` decides with; cleanlab's label quality alone,
#: the plain baseline (the suite's ``noise`` family compares the same two)
ROLES = {"noise_score": "default", "label_quality": "baseline"}


def results_rows(table: pd.DataFrame, collection: str) -> pd.DataFrame:
    """The benchmark's table (:func:`run_noise_benchmark`) as ``bench_results`` rows: the setting is
    ``<kind> <rate>``, the method the signal."""
    setting = table["kind"] + " " + table["rate"].map(lambda r: f"{r:.0%}")
    metrics = [c for c in table.columns if c not in ("kind", "rate", "signal")]
    return bench_results.long_form(table, metrics=metrics, method=table["signal"], collection=collection,
                                   setting=setting, role=table["signal"].map(ROLES))
