"""The main job: a project on a CUB-style folder through every step of the loop, then a summary.

``fieldguide demo DIR --data ../shared/data/cub100`` (``make demo``) creates the project (or
reuses it), ingests the data, embeds the images with the default backbone, makes out-of-sample
predictions, evaluates them on the test split, trains a two-stage entropy head, flags label issues (its
entropy trajectories among the signals), prints the top of the review queue, retrains with
the flagged samples down-weighted and compares, then starts Label Studio and pushes the top
of the queue. Each step is the same function the matching CLI verb calls; each is safe to
re-run (ingest adds nothing twice, embed embeds only new images), so a demo that was stopped
half-way resumes where it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fieldguide.config import init_project


def run_demo(directory: Path, data: Path, *, echo: Callable[[str], None] = print,
             fmt: str = "cub", head: str | None = None, labelstudio: bool = True, push_limit: int = 20) -> dict:
    """Run every step on ``data`` in the project at ``directory``; returns the summary numbers."""
    from fieldguide.curation.flag import flag
    from fieldguide.models.embed import embed
    from fieldguide.models.evaluate import evaluate
    from fieldguide.models.predict import predict
    from fieldguide.models.train import retrain, train
    from fieldguide.platform.ingest import ingest
    from fieldguide.platform.status import project_status

    summary: dict = {}
    project = init_project(directory)
    echo(f"project   {project.root}")

    t = time.perf_counter()
    rep = ingest(project, data, fmt=fmt)
    echo(f"ingest    added {rep.added}, already in the store {rep.existing}, rejected {len(rep.rejects)} "
         f"({time.perf_counter() - t:.0f} s)")

    t = time.perf_counter()
    emb = embed(project)
    echo(f"embed     {emb.backbone}: embedded {emb.embedded}, cached {emb.cached}, skipped {len(emb.skipped)} "
         f"({time.perf_counter() - t:.0f} s)")

    t = time.perf_counter()
    pred = predict(project, head=head)
    echo(f"predict   {pred.head}: {pred.n_cross_validated} samples out of fold "
         f"(top-1 {pred.oof_top1:.3f}), {pred.n_fit_all} by the head fit on all ({time.perf_counter() - t:.0f} s)")

    info = project_status(project)
    if info["splits"].get("test"):
        m = evaluate(project, split="test")
        summary["test"] = {k: m[k] for k in ("top1", "top5", "macro_f1", "ece")}
        echo(f"evaluate  test (n={m['n']}): top-1 {m['top1']:.3f}, top-5 {m['top5']:.3f}, "
             f"macro-F1 {m['macro_f1']:.3f}, ECE {m['ece']:.3f}; confusion matrix {m['confusion_png']}")

    t = time.perf_counter()
    tr = train(project, progress=False)
    echo(f"train     {tr.method} ({tr.mode}): test top-1 {tr.top1:.3f}, macro-F1 {tr.macro_f1:.3f}; "
         f"curves {tr.curves_png} ({time.perf_counter() - t:.0f} s)" if tr.top1 is not None else
         f"train     {tr.method} ({tr.mode}) on {tr.n_train} samples ({time.perf_counter() - t:.0f} s)")

    t = time.perf_counter()
    fl = flag(project)
    echo(f"flag      assessed {fl.assessed}, not assessable {fl.not_assessable}, flagged {fl.flagged}, "
         f"outliers {fl.outliers}, near-duplicates {fl.near_duplicates} ({time.perf_counter() - t:.0f} s); "
         f"review queue {fl.queued} ({fl.test_left_out} flagged test samples left out: 'flag --include-test')")
    if fl.top:
        echo("review queue (top by noise score; open it with 'fieldguide app --view to_review'):")
        for row in fl.top[:10]:
            echo(f"  {row['noise_score']:.3f}  given {row['label']:<32} predicted {row['predicted']:<32} "
                 f"{Path(row['filepath']).name}")

    t = time.perf_counter()
    rt, cmp = retrain(project, progress=False)
    line = f"retrain   {rt.method}, {rt.downweighted} flagged down-weighted, {rt.excluded} excluded"
    if cmp.get("delta_top1") is not None:
        line += (f": test top-1 {cmp['previous_top1']:.3f} -> {cmp['top1']:.3f} ({cmp['delta_top1']:+.3f}), "
                 f"macro-F1 {cmp['delta_macro_f1']:+.3f} vs {cmp['previous']}")
    echo(line + f" ({time.perf_counter() - t:.0f} s)")
    summary["retrain"] = {k: cmp.get(k) for k in ("top1", "previous_top1", "delta_top1")}

    if labelstudio and fl.flagged:
        _relabel(project, push_limit, echo, summary)

    info = project_status(project)
    summary.update(samples=info["samples"], classes=info["classes"], splits=info["splits"],
                   flagged=fl.flagged, assessed=fl.assessed)
    echo(f"summary   {info['samples']} samples, {info['classes']} classes, splits "
         + ", ".join(f"{k} {v}" for k, v in info["splits"].items())
         + f"; {fl.flagged} flagged, {fl.queued} in the review queue")
    echo("next:")
    echo(f"  review the queue in the FiftyOne App:  fieldguide --project {project.root} app --view to_review")
    echo(f"  dashboards:                            fieldguide --project {project.root} dashboard")
    if summary.get("labelstudio_url"):
        echo(f"  label in Label Studio at {summary['labelstudio_url']}, then:  "
             f"fieldguide --project {project.root} relabel pull")
        echo(f"  stop Label Studio:                     fieldguide --project {project.root} labelstudio stop")
    return summary


def _relabel(project, limit: int, echo: Callable[[str], None], summary: dict) -> None:
    """Start the project's Label Studio and push the top of the review queue (a failure is reported)."""
    from fieldguide.errors import FieldguideError
    from fieldguide.platform.labelstudio import push, start

    t = time.perf_counter()
    try:
        server = start(project)
        rep = push(project, view="to_review", limit=limit)
    except FieldguideError as e:
        echo(f"relabel   Label Studio step skipped: {e}")
        return
    summary["labelstudio_url"] = rep.url or server.url
    summary["pushed"] = rep.pushed + rep.already_pushed
    echo(f"relabel   pushed {rep.pushed}, already pushed {rep.already_pushed} to Label Studio project "
         f"{rep.project_id} at {summary['labelstudio_url']} (log in as {server.username}; password in "
         f"{server.data_dir}/credentials.json) ({time.perf_counter() - t:.0f} s)")
