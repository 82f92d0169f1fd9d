"""``fieldguide loop``: embed → predict → flag → relabel push/pull → retrain → evaluate.

Each step is the same function its CLI verb calls, and is skipped when its inputs did not
change since the loop last ran it: the inputs are fingerprinted (sample ids, file hashes,
labels and splits; the runs a step reads) and kept in ``PROJECT/runs/loop_state.json``. The
relabel step runs only when a Label Studio is configured (``labelstudio.url``) or the
project's own server is running.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from fieldguide.config import Project
from fieldguide.platform import samples, store
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)


def _state_path(project: Project) -> Path:
    return project.runs_dir / "loop_state.json"


def _read_state(project: Project) -> dict:
    path = _state_path(project)
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON: every step runs", path)
        return {}


def _write_state(project: Project, state: dict) -> None:
    path = _state_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


def labels_fingerprint(ds) -> str:
    """A hash of every sample's id, file hash, label and split (what predictions depend on)."""
    t = samples.arrays(ds, ["filehash", "ground_truth.label", "tags"])
    h = hashlib.sha1()
    rows = zip(t["id"], t["filehash"], t["ground_truth.label"], (store.split_of(tags) for tags in t["tags"]))
    for row in sorted(rows, key=lambda r: r[0]):
        h.update(repr(row).encode())
    return h.hexdigest()


def _last_run_id(project: Project, *kinds: str) -> str | None:
    last = store.warehouse(project).last_run(*kinds)
    return None if last is None else last["run_id"]


def _labelstudio_available(project: Project) -> bool:
    from fieldguide.platform import labelstudio

    if project.config.labelstudio.url:
        return True
    return labelstudio.status(project).running


@writes('loop')
def run_loop(project: Project, *, echo: Callable[[str], None] = print, force: bool = False,
             push_limit: int | None = None) -> dict:
    """One turn of the loop; returns ``{step: "ran" | "skipped" | reason}``."""
    from fieldguide.curation.flag import flag
    from fieldguide.models.embed import embed
    from fieldguide.models.evaluate import evaluate
    from fieldguide.models.predict import predict
    from fieldguide.models.train import retrain

    state = {} if force else _read_state(project)
    done: dict[str, str] = {}

    def should_run(step: str, inputs: dict) -> bool:
        key = json.dumps(inputs, sort_keys=True, default=str)
        if state.get(step) == key:
            done[step] = "skipped (inputs unchanged)"
            echo(f"{step:<9} skipped: inputs unchanged")
            return False
        return True

    def ran(step: str, inputs: dict, line: str) -> None:
        state[step] = json.dumps(inputs, sort_keys=True, default=str)
        _write_state(project, state)
        done[step] = "ran"
        echo(f"{step:<9} {line}")

    ds = store.dataset(project, create=False)
    rep = embed(project)
    done["embed"] = "ran"
    echo(f"{'embed':<9} embedded {rep.embedded}, cached {rep.cached}, skipped {len(rep.skipped)}")

    inputs = {"labels": labels_fingerprint(ds), "backbone": project.config.models.backbone,
              "head": project.config.predict.head, "folds": project.config.predict.folds}
    if should_run("predict", inputs):
        p = predict(project)
        ran("predict", inputs, f"{p.head}: {p.n_cross_validated} out of fold (top-1 {p.oof_top1:.3f})")
        if not samples.arrays(ds, tags="test", limit=1).empty:
            m = evaluate(project, split="test")
            echo(f"{'evaluate':<9} test top-1 {m['top1']:.3f}, macro-F1 {m['macro_f1']:.3f}")

    # the loop's own retrain runs do not re-trigger flag (that would never settle): a new
    # prediction or a training run made outside the loop does
    inputs = {"predict": _last_run_id(project, "predict"), "train": _last_run_id(project, "train")}
    if should_run("flag", inputs):
        f = flag(project)
        ran("flag", inputs, f"assessed {f.assessed}, flagged {f.flagged}")

    if _labelstudio_available(project):
        from fieldguide.errors import FieldguideError
        from fieldguide.platform.labelstudio import pull, push

        try:
            pushed = push(project, view="to_review", limit=push_limit)
            pulled = pull(project)
            done["relabel"] = "ran"
            echo(f"{'relabel':<9} pushed {pushed.pushed} (already {pushed.already_pushed}); applied "
                 f"{pulled.applied} answers (changed {pulled.changed}), waiting {pulled.pending}")
        except FieldguideError as e:
            done["relabel"] = f"failed: {e}"
            echo(f"{'relabel':<9} failed: {e}")
    else:
        done["relabel"] = "skipped (no Label Studio)"
        echo(f"{'relabel':<9} skipped: no Label Studio configured or running ('fieldguide labelstudio start')")

    samples.reload(ds)
    flagged = []
    if samples.has_field(ds, "label_issue"):
        issues = samples.arrays(ds, ["label_issue"])
        flagged = sorted(issues["id"][issues["label_issue"] == True])  # noqa: E712 - elementwise
    inputs = {"labels": labels_fingerprint(ds), "flagged": hashlib.sha1(repr(flagged).encode()).hexdigest(),
              "method": project.config.train.method, "policy": project.config.train.flagged}
    if should_run("retrain", inputs):
        report, comparison = retrain(project)
        line = f"{report.method}: test top-1 {report.top1:.3f}" if report.top1 is not None else report.method
        if comparison.get("delta_top1") is not None:
            line += f" ({comparison['delta_top1']:+.3f} vs {comparison['previous']})"
        ran("retrain", inputs, line)
    return done
