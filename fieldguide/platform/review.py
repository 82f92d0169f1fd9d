"""A sample's review state, shared by the App, Label Studio, the CLI and the dashboards.

``review_state`` (a sample field) moves ``to_review`` (flagged) → ``pushed`` (a Label Studio task
exists) → ``answered`` (an answer came back that decided nothing: unsure, a tie, an answer at
the genus where the classes are species, recorded in ``label_history`` with its rank) → ``resolved`` (a
decision set the label: a curator's in the App or the CLI, or Label Studio's answer), or
``dismissed`` (a curator confirmed the given label). The review queue (tag and saved view
``to_review``) is the samples in :data:`QUEUED` states.

A decision keeps ``review_decided_at`` and ``review_evidence`` (the given label, the model's
prediction and the number of crowd votes when it was taken): :func:`requeue` (run by ``flag``)
leaves a decided sample out of the queue until that evidence changes, and leaves test samples
out unless asked, so that reviewing never moves the evaluation baseline silently. The queue's
order is ``curation.review_order`` (:data:`QUEUE_ORDERS`, :func:`queue`): by noise score, by
``error_rank`` (a label in the wrong family before one in the wrong species), by ``cost`` (the
noise score times the expected cost of keeping the label), or by ``unknown_score``. ``flag
--unknown N`` queues the N samples most likely of an unknown species beside the flagged ones
(``review_reason`` says which).
:func:`decide` is a curator's decision from the App, the CLI or the Python API: the label (with
its history), the state, a ``set_label`` run, and the Label Studio task closed when one is open.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

from fieldguide.config import Project
from fieldguide.errors import FieldguideError
from fieldguide.names import (ANSWERED, DISMISSED, PUSHED, QUEUED_STATES, RESOLVED, REVIEW_STATES,  # noqa: F401
                              TO_REVIEW)
from fieldguide.platform import samples, store
from fieldguide.platform.fields import set_tags, write_values
from fieldguide.platform.lock import writes
from fieldguide.platform.warehouse import now

log = logging.getLogger(__name__)

FIELD = "review_state"
STATES = REVIEW_STATES
#: the states of a sample that waits for a decision (the ``to_review`` tag and view)
QUEUED = QUEUED_STATES
#: the states a decision ends in
DECIDED = (RESOLVED, DISMISSED)
QUEUE_TAG = "to_review"
#: the review queue's orders (``curation.review_order``): (field, -1 descending) pairs, a sample
#: without a value last. ``error_severity`` ranks a label's error on the class tree (higher: a
#: coarser rank, :mod:`fieldguide.curation.error_rank`): at equal noise score a label in the
#: wrong family comes before one in the wrong species; ``error_rank`` puts it first.
#: ``cost`` puts first the labels whose error would cost most (``cost_priority``: noise score x
#: the expected cost of keeping the label under ``classes.costs``); ``unknown_score`` the samples
#: most likely of a species no class covers.
QUEUE_ORDERS: dict[str, list[tuple[str, int]]] = {
    "noise_score": [("noise_score", -1), ("error_severity", -1)],
    "error_rank": [("error_severity", -1), ("noise_score", -1)],
    "cost": [("cost_priority", -1), ("noise_score", -1)],
    "unknown_score": [("unknown_score", -1), ("noise_score", -1)],
}
#: why a sample is in the queue (``review_reason``, comma-separated when both)
REASON_LABEL_ISSUE, REASON_UNKNOWN = "label_issue", "unknown"
REASON = "review_reason"

_READ = ["tags", "ground_truth.label", "prediction.label", "votes", FIELD, "review_evidence", REASON]


def _evidence(label, predicted, votes) -> str:
    n_votes = len(votes.classifications) if votes is not None else 0
    return f"{label}|{predicted}|{n_votes}"


def _table(ds, ids: Iterable[str] | None = None):
    fields = [f for f in _READ if f in ("tags", "ground_truth.label")
              or samples.has_field(ds, f.split(".")[0])]
    df = samples.arrays(ds, fields, ids=ids)
    for f in _READ:
        if f not in df:
            df[f] = None
    return df


def set_states(ds, states: Mapping[str, str | None], *, decided: bool = False,
               reasons: Mapping[str, str | None] | None = None) -> None:
    """Write ``review_state`` for the samples of ``states`` (sample id → state, None clears it) and
    keep the ``to_review`` tag on exactly the queued ones. ``decided``: also stamp the decision's
    time and evidence (the samples' current label, prediction and votes). ``reasons``: the queued
    samples' ``review_reason``; without it a queued sample keeps its reason. A sample out of the
    queue has none."""
    if not states:
        return
    columns: dict[str, dict] = {FIELD: dict(states)}
    reason = {s: (reasons or {}).get(s) if v in QUEUED else None for s, v in states.items()
              if reasons is not None or v not in QUEUED}
    if samples.has_field(ds, REASON) or any(r is not None for r in reason.values()):
        columns[REASON] = reason
    if decided:
        df = _table(ds, list(states))
        when = now()
        columns["review_decided_at"] = {sid: when for sid in df["id"]}
        columns["review_evidence"] = {
            sid: _evidence(lab, pred, votes)
            for sid, lab, pred, votes in zip(df["id"], df["ground_truth.label"], df["prediction.label"], df["votes"])
        }
    write_values(ds, columns)
    queued = [s for s, v in states.items() if v in QUEUED]
    out = [s for s, v in states.items() if v not in QUEUED]
    set_tags(ds, remove=[QUEUE_TAG], ids=out)
    set_tags(ds, add=[QUEUE_TAG], ids=queued)


@dataclasses.dataclass
class Requeue:
    queued: int = 0
    kept_decided: int = 0  # flagged again, but a curator decided and the evidence is the same
    test_left_out: int = 0  # flagged (or unknown) test samples not queued (``--include-test`` queues them)
    unknown: int = 0  # queued as likely unknown species


def most_unknown(ds, n: int, *, include_test: bool = False) -> list[str]:
    """The ids of the ``n`` samples of highest ``unknown_score`` (written by ``predict``), test
    samples only with ``include_test`` (the queue takes no others); none when ``n`` is 0 or no
    sample has one."""
    if n <= 0 or not samples.has_field(ds, "unknown_score"):
        return []
    df = samples.arrays(ds, ["unknown_score", "tags"]).dropna(subset=["unknown_score"])
    if not include_test:  # the split is a tag
        df = df[[store.split_of(tags or []) != "test" for tags in df["tags"]]]
    return df.sort_values("unknown_score", ascending=False, kind="stable")["id"].head(n).tolist()


def requeue(ds, flagged: Iterable[str], *, unknown: Iterable[str] = (), include_test: bool = False) -> Requeue:
    """The review queue after a ``flag`` run that flagged ``flagged`` (label issues) and picked
    ``unknown`` (likely unknown species, :func:`most_unknown`).

    A sample with an open Label Studio task (pushed, answered) stays as it is; a flagged or
    unknown sample joins the queue unless a decision about it stands (same label, prediction and
    votes since) or it is a test sample (unless ``include_test``); a queued sample neither
    flagged nor unknown now leaves. ``review_reason`` records why a queued sample is there
    (:data:`REASON_LABEL_ISSUE`, :data:`REASON_UNKNOWN`, or both).
    """
    flagged, unknown = set(flagged), set(unknown)
    df = _table(ds)
    report = Requeue()
    states: dict[str, str | None] = {}
    reasons: dict[str, str | None] = {}
    for sid, tags, label, pred, votes, state, evidence, reason in zip(
            df["id"], df["tags"], df["ground_truth.label"], df["prediction.label"], df["votes"],
            df[FIELD], df["review_evidence"], df[REASON]):
        reasons[sid] = ",".join(r for r, ids in ((REASON_LABEL_ISSUE, flagged), (REASON_UNKNOWN, unknown))
                                if sid in ids) or None
        if state in (PUSHED, ANSWERED):
            states[sid], reasons[sid] = state, reason if isinstance(reason, str) else None
        elif sid in flagged or sid in unknown:
            if store.split_of(tags or []) == "test" and not include_test:
                report.test_left_out += 1
                states[sid] = None if state == TO_REVIEW else state
            elif state in DECIDED and evidence == _evidence(label, pred, votes):
                report.kept_decided += 1
                states[sid] = state
            else:
                states[sid] = TO_REVIEW
        else:
            states[sid] = None if state == TO_REVIEW else state
    report.queued = sum(v in QUEUED for v in states.values())
    report.unknown = sum(states[s] == TO_REVIEW for s in unknown if s in states)
    set_states(ds, states, reasons=reasons)
    return report


def counts(ds) -> dict[str, int]:
    """How many samples are in each review state (every state present, 0 when none)."""
    out = dict.fromkeys(STATES, 0)
    if samples.has_field(ds, FIELD):
        for state in samples.arrays(ds, [FIELD])[FIELD]:
            if state in out:
                out[state] += 1
    return out


def queue(ds, *, order: str = "noise_score", limit: int | None = None):
    """The review queue (samples in :data:`QUEUED` states) in ``order`` (a key of :data:`QUEUE_ORDERS`),
    at most ``limit``: a DataFrame with ``id``, ``label``, ``predicted``, ``consensus``, ``error_rank``,
    ``noise_score``, ``cost_priority``, ``unknown_score``, ``review_state`` and ``reason`` (None where
    the step writing it has not run)."""
    if order not in QUEUE_ORDERS:
        raise FieldguideError(f"review order {order!r} is not one of {', '.join(QUEUE_ORDERS)}")
    columns = {"label": "ground_truth.label", "predicted": "prediction.label", "consensus": "consensus_label",
               "error_rank": "error_rank", "noise_score": "noise_score", "cost_priority": "cost_priority",
               "unknown_score": "unknown_score", "review_state": FIELD, "reason": REASON}
    present = {col: path for col, path in columns.items() if path == "ground_truth.label"
               or samples.has_field(ds, path.split(".")[0])}
    view = ds.match_tags(QUEUE_TAG)
    keys = [(f, o) for f, o in QUEUE_ORDERS[order] if samples.has_field(ds, f)]
    df = samples.arrays(view.sort_by(keys) if keys else view, list(present.values()), limit=limit)
    df = df.rename(columns={path: col for col, path in present.items()})
    return df.reindex(columns=["id", *columns])


@dataclasses.dataclass
class Decision:
    run_id: str = ""
    samples: int = 0
    changed: int = 0
    confirmed: int = 0
    closed_tasks: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@writes("set label")
def decide(project: Project, labels: Mapping[str, str], *, actor: str | None = None,
           source: str = "curator", close_tasks: bool = True) -> Decision:
    """A curator's decision on the samples of ``labels`` (sample id → label).

    The label is set (``label_history`` keeps old → new, source, actor, time and this
    ``set_label`` run); a changed label is ``resolved``, a confirmed one ``dismissed``; both leave
    the review queue. A sample with an open Label Studio task gets it closed with the decision
    (a later answer pulled for it is a conflict, not a change); when Label Studio cannot be
    reached the decision stands and the problem is reported.
    """
    ds = store.dataset(project, create=False)
    store.check_labels(ds, labels)  # bad input: one line, no run row, nothing written
    actor = actor or project.config.project.curator
    wh = store.warehouse(project)
    report = Decision(samples=len(labels))
    with wh.run("set_label", {"samples": len(labels), "source": source, "actor": actor}) as run_id:
        report.run_id = run_id
        df = samples.arrays(ds, ["ground_truth.label"], ids=list(labels))
        before = dict(zip(df["id"], df["ground_truth.label"]))
        report.changed = store.set_labels(project, ds, dict(labels), source=source, actor=actor, run_id=run_id)
        report.confirmed = report.samples - report.changed
        set_states(ds, {sid: (DISMISSED if before.get(sid) == label else RESOLVED)
                        for sid, label in labels.items()}, decided=True)
        if close_tasks:
            from fieldguide.platform.labelstudio.closing import close

            report.closed_tasks, report.problems = close(project, dict(labels), run_id=run_id)
        wh.write("metrics", [{"run_id": run_id, "split": "all", "name": k, "value": float(getattr(report, k))}
                             for k in ("samples", "changed", "confirmed", "closed_tasks")])
        store.snapshot_samples(project, ds)
    return report


@writes("confirm labels")
def confirm(project: Project, sample_ids: Iterable[str], *, actor: str | None = None) -> Decision:
    """A curator confirms the given labels of ``sample_ids`` (each is ``dismissed``)."""
    ids = list(sample_ids)
    ds = store.dataset(project, create=False)
    df = samples.arrays(ds, ["ground_truth.label"], ids=ids)
    missing = sorted(set(ids) - set(df["id"]))
    if missing:
        raise FieldguideError(f"{len(missing)} sample(s) are not in the store (e.g. {missing[0]}); nothing changed")
    unlabeled = [sid for sid, label in zip(df["id"], df["ground_truth.label"]) if label is None]
    if unlabeled:
        raise FieldguideError(f"{len(unlabeled)} sample(s) have no label to confirm (e.g. {unlabeled[0]}); "
                              "nothing changed")
    return decide(project, dict(zip(df["id"], df["ground_truth.label"])), actor=actor)
