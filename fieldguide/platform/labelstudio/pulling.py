"""Pull the curators' answers back from Label Studio into the store, each task on its own.

:func:`pull` reads the answers, decides per task (several annotators: ``votes`` and the
configured majority rule, :func:`decide`), and applies each task on its own through
:func:`store.set_labels` (``label_history``: old, new, source ``labelstudio``, annotator, time,
run id). A task's answer is fingerprinted (annotation ids and update times), so re-running
pull applies nothing twice, while an edited answer is applied once more. Only tasks that
fieldguide pushed (recorded in ``relabel_tasks``, :mod:`.records`) are applied. Each task is
applied under the project's write lock after re-reading what the store and the warehouse
hold, so two pulls at once apply an answer once. A task's row goes ``pushed`` → ``applying``
(the label is being written) → ``answered`` / ``skipped``; a pull that stopped in between is
finished by the next one without a second history entry.

A curator's decision in the App or the CLI (:func:`fieldguide.platform.review.decide`) wins over
answers given before it: such an answer, or any answer to a task that the decision closed
(:data:`CLOSED`), is reported as a conflict and not applied. Applied answers move the sample's
review state (``resolved`` when the label was decided, ``answered`` when nothing was).

On the class tree (the warehouse's ``taxa``), an answer may lie above the classes: a curator who
picks a genus in the ``Taxonomy``, or several whose species the majority rule cannot decide but
more than 2/3 of whom agree on a genus (iNaturalist's community taxon). The project labels at
its classes' rank, so such an answer never changes the label: it is recorded in
``label_history`` (the label kept, ``answer`` and ``answer_rank`` set, source ``labelstudio``)
and the sample stays ``answered``, unresolved at the species, until a curator decides (outcome
``coarse``). A genus that is itself a class of the project (a project labelling at mixed ranks)
is an ordinary answer. A "new species / not in list" name creates the class (the store's classes;
under its genus in ``taxa`` when its first word is a genus of the tree) and becomes the label.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Sequence

from fieldguide.config import Project
from fieldguide.errors import FieldguideError, NotReadyError
from fieldguide.platform import store
from fieldguide.platform.labelstudio.client import Client, connection
from fieldguide.platform.labelstudio.records import (
    ANSWERED, APPLYING, CLOSED, DELETED, ORPHANED, PUSHED, SETTLED, SKIPPED, py_time, task_records,
)
from fieldguide.platform.labelstudio.storages import protected_paths
from fieldguide.platform.labelstudio.tasks import UNSURE, choice, new_name, project_title
from fieldguide.platform import review, samples
from fieldguide.platform.lock import project_lock, writes
from fieldguide.platform.tree import class_tree
from fieldguide.platform.warehouse import now

log = logging.getLogger(__name__)

MAJORITY_RULES = ("majority", "plurality", "unanimous")


def decide(votes: Sequence[str], rule: str = "majority") -> str | None:
    """The label that ``votes`` (one choice per annotator, ``UNSURE`` allowed) decide on.

    ``majority``: a choice with more than half of the votes; ``plurality``: the most voted
    choice, a tie decides nothing; ``unanimous``: every vote the same. Returns the winning
    choice (possibly ``UNSURE``) or None when the rule decides nothing.
    """
    if rule not in MAJORITY_RULES:
        raise ValueError(f"majority rule {rule!r} is not one of {', '.join(MAJORITY_RULES)}")
    if not votes:
        return None
    counts = Counter(votes).most_common()
    top, n = counts[0]
    if rule == "unanimous":
        return top if n == len(votes) else None
    if rule == "majority":
        return top if n * 2 > len(votes) else None
    return top if len(counts) == 1 or counts[1][1] < n else None


@dataclasses.dataclass
class PullReport:
    accepted: int = 0
    changed: int = 0
    unsure: int = 0
    skipped: int = 0
    pending: int = 0
    unchanged: int = 0
    conflicts: int = 0
    coarse: int = 0  # answered above the classes' rank (a genus): recorded, the label kept
    new_classes: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    project_id: int | None = None
    run_id: str = ""

    @property
    def applied(self) -> int:
        """Answers taken in by this pull (accepted + changed + unsure + skipped + coarse)."""
        return self.accepted + self.changed + self.unsure + self.skipped + self.coarse

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), applied=self.applied)


@dataclasses.dataclass
class _Answer:
    annotation_id: int
    annotator: str
    choice: str | None
    cancelled: bool
    updated: str
    new: bool = False  # the choice is a "new species / not in list" name


def _answers(task, emails: dict[int, str]) -> list[_Answer]:
    out = []
    for a in getattr(task, "annotations", None) or []:
        a = a if isinstance(a, dict) else a.model_dump()
        who = a.get("completed_by")
        if isinstance(who, dict):
            who_id, who_mail = who.get("id"), who.get("email")
        else:
            who_id, who_mail = who, None
        out.append(_Answer(
            annotation_id=int(a["id"]),
            annotator=who_mail or emails.get(who_id) or f"user-{who_id}",
            choice=choice(a.get("result")),
            cancelled=bool(a.get("was_cancelled")),
            updated=str(a.get("updated_at") or a.get("created_at") or ""),
            new=new_name(a.get("result")) is not None,
        ))
    return out


def _fingerprint(answers: list[_Answer]) -> list:
    return json.loads(json.dumps(sorted([a.annotation_id, a.updated, a.choice, a.cancelled] for a in answers),
                                 default=str))


def _utc(text: str) -> dt.datetime | None:
    """Label Studio's ISO time as a naive UTC datetime (the store's and the warehouse's way)."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def _curator_time(history) -> dt.datetime | None:
    """When a curator last decided the sample's label (set or confirmed), from its history, as a
    naive UTC datetime (FiftyOne gives aware ones when ``fo.config.timezone`` is set)."""
    times = [e.time for e in history or [] if getattr(e, "source", None) == "curator" and e.time]
    times = [t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t for t in times]
    return max(times) if times else None


class Puller:
    """Applies tasks one at a time; each task's writes stand or fall together."""

    def __init__(self, project: Project, client: Client, project_id: int, run_id: str):
        self.project = project
        self.client = client
        self.project_id = project_id
        self.run_id = run_id
        self.name = project.config.project.name
        self.rule = project.config.labelstudio.majority_rule
        self.wh = store.warehouse(project)
        self.ds = store.dataset(project, create=False)
        self.rows = task_records(project)
        self.emails = client.user_emails()
        ids, labels, votes, hist = self.ds.values(["id", "ground_truth.label", "votes", "label_history"])
        self.labels = dict(zip(ids, labels))
        self.votes = dict(zip(ids, votes))
        self.decided = {sid: _curator_time(h) for sid, h in zip(ids, hist)}
        self.classes = set(store.classes(self.ds))
        self.tree = class_tree(project)
        self.report = PullReport(project_id=project_id, run_id=run_id)

    def _row(self, sid: str, task_id: int, status: str, answer: dict | None, pushed=None) -> None:
        old = self.rows.get(sid) or {}
        row = {
            "project": self.name, "sample_id": sid, "task_id": task_id, "status": status,
            "pushed": py_time(old.get("pushed")) or pushed or now(),
            "answered": now() if status != PUSHED else None,
            "answer": json.dumps(answer, sort_keys=True, default=str) if answer else None,
        }
        self.wh.write("relabel_tasks", [row])
        self.rows[sid] = row

    def deleted(self, sid: str, task_id: int) -> None:
        self.report.problems.append(
            f"task {task_id} (sample {sid}) was deleted in Label Studio: nothing applied "
            "(run 'fieldguide relabel push' to make it again)"
        )
        self._row(sid, task_id, DELETED, None)

    def apply(self, task) -> None:
        """Apply one task's answers, unless it is not fieldguide's or they are applied already.

        The check and the writes happen under the project's write lock, after re-reading the
        sample's ``relabel_tasks`` row and label: another pull (a second ``relabel pull``, the
        webhook listener) may have applied this very answer since this pull started.
        """
        data = task.data or {}
        sid, task_id = data.get("sample_id"), int(task.id)
        if not sid:
            self.report.problems.append(f"task {task_id} has no sample_id: not a fieldguide task, ignored")
            return
        answers = _answers(task, self.emails)
        if not answers:
            self.report.pending += 1
            return
        with project_lock(self.project, "relabel pull"):
            self._refresh(sid)
            rec = self.rows.get(sid)
            if rec is None or rec.get("task_id") is None or int(rec["task_id"]) != task_id:
                self.report.problems.append(
                    f"task {task_id} names sample {sid}, but fieldguide did not push it: ignored"
                )
                return
            self._apply(task, sid, task_id, answers)

    def _refresh(self, sid: str) -> None:
        """Re-read the sample's ``relabel_tasks`` row, label and votes."""
        self.rows.pop(sid, None)
        self.rows.update(task_records(self.project, sid))
        found = self.ds.select([sid]).values(["id", "ground_truth.label", "votes", "label_history"])
        if found[0]:
            self.labels[sid], self.votes[sid] = found[1][0], found[2][0]
            self.decided[sid] = _curator_time(found[3][0])
        else:
            self.labels.pop(sid, None)
            self.votes.pop(sid, None)
            self.decided.pop(sid, None)

    def _apply(self, task, sid: str, task_id: int, answers: list[_Answer]) -> None:
        rec = self.rows.get(sid)
        stored = json.loads(rec["answer"]) if rec and rec.get("answer") else {}
        if rec and rec["status"] == CLOSED:  # leave out the decision that closed it, unless edited since
            answers = [a for a in answers if a.annotation_id != stored.get("closing_annotation")
                       or a.cancelled or a.choice != stored.get("decision")]
            if not answers:  # only the decision that closed it
                self.report.unchanged += 1
                return
        fingerprint = _fingerprint(answers)
        same = stored.get("fingerprint") == fingerprint
        if rec and rec["status"] in (*SETTLED, CLOSED) and same and rec["task_id"] == task_id:
            self.report.unchanged += 1
            return
        if self._conflict(sid, task_id, answers, rec, stored, fingerprint):
            return
        if sid not in self.labels:
            self.report.problems.append(
                f"task {task_id}: sample {sid} is no longer in the store: answer not applied"
            )
            self._row(sid, task_id, ORPHANED, {"fingerprint": fingerprint, "outcome": "orphaned"},
                      pushed=py_time(getattr(task, "created_at", None)))
            return
        given = self.labels[sid]
        votes = [(a.annotator, a.choice) for a in answers if not a.cancelled and a.choice]
        answer = {"fingerprint": fingerprint, "run_id": self.run_id, "given": given,
                  "votes": [list(v) for v in votes], "rule": self.rule}
        if rec and rec["status"] == APPLYING and same and self._history_has(sid, stored.get("run_id")):
            # an earlier pull changed the label and stopped before finishing: finish it only
            self._write_votes(sid, task_id, votes)
            if stored.get("outcome") == "coarse":
                self._answered(sid)
            else:
                review.set_states(self.ds, {sid: review.RESOLVED}, decided=True)
            self._row(sid, task_id, ANSWERED, stored)
            outcome = stored.get("outcome", "changed")
            setattr(self.report, outcome, getattr(self.report, outcome) + 1)
            return
        if not votes:
            self._row(sid, task_id, SKIPPED, dict(answer, outcome="skipped"))
            self._answered(sid)
            self.report.skipped += 1
            return
        decision = decide([c for _, c in votes], self.rule)
        coarse = self._above_classes(decision, [c for _, c in votes])
        if coarse is not None:
            self._coarse(sid, task_id, votes, answer, *coarse)
            return
        if decision is None or decision == UNSURE:
            self._write_votes(sid, task_id, votes)
            self._row(sid, task_id, ANSWERED, dict(answer, outcome="unsure", decision=decision))
            self._answered(sid)
            self.report.unsure += 1
            return
        new = decision not in self.classes and any(a.new and a.choice == decision for a in answers)
        if decision not in self.classes and not new:
            self.report.problems.append(
                f"task {task_id}: answer {decision!r} is not a class of the project: not applied"
            )
            return
        outcome = "accepted" if decision == given else "changed"
        answer.update(outcome=outcome, decision=decision)
        actor = ",".join(sorted({who for who, c in votes if c == decision}))
        self._row(sid, task_id, APPLYING, answer)
        try:
            store.set_labels(self.project, self.ds, {sid: decision}, source="labelstudio",
                             actor=actor, run_id=self.run_id, allow_new_classes=new)
        except FieldguideError as e:
            self._row(sid, task_id, rec["status"] if rec else PUSHED, stored or None)
            self.report.problems.append(f"task {task_id}: {e}")
            return
        self.labels[sid] = decision
        if new:
            self._new_class(decision)
        self._write_votes(sid, task_id, votes)
        review.set_states(self.ds, {sid: review.RESOLVED}, decided=True)
        self._row(sid, task_id, ANSWERED, answer)
        setattr(self.report, outcome, getattr(self.report, outcome) + 1)

    def _above_classes(self, decision: str | None, choices: list[str]) -> tuple[str, str] | None:
        """(name, rank) of an answer above the classes: a chosen node of the tree that is no class,
        or, when the rule decides nothing, the community taxon of the choices when it is such a node."""
        if decision is None:
            community = self.tree.community_taxon([c for c in choices if c != UNSURE])
            return community if community is not None and self.tree.is_inner(community[0]) else None
        if decision not in self.classes and self.tree.is_inner(decision):
            return decision, self.tree.rank_of(decision)
        return None

    def _coarse(self, sid: str, task_id: int, votes: list[tuple[str, str]], answer: dict, name: str,
                rank: str) -> None:
        """An answer above the classes: in the history (the label kept), the sample stays unresolved."""
        answer.update(outcome="coarse", decision=name, rank=rank)
        actor = ",".join(sorted({who for who, c in votes if c != UNSURE}))
        self._row(sid, task_id, APPLYING, answer)
        store.set_labels(self.project, self.ds, {sid: self.labels[sid]}, source="labelstudio", actor=actor,
                         run_id=self.run_id, answers={sid: (name, rank)})
        self._write_votes(sid, task_id, votes)
        self._row(sid, task_id, ANSWERED, answer)
        self._answered(sid)
        self.report.coarse += 1

    def _new_class(self, name: str) -> None:
        """A class a curator named: in the class list, and under its genus in ``taxa`` when known."""
        self.classes.add(name)
        rows = self.tree.new_class_rows(name)
        if rows:
            self.wh.write("taxa", rows)
            self.tree = class_tree(self.project)
        self.report.new_classes.append(name)

    def _answered(self, sid: str) -> None:
        """An answer that decided nothing: ``answered`` while the sample waits for a decision (a
        decision taken since stands)."""
        state = None
        if samples.has_field(self.ds, review.FIELD):
            column = samples.arrays(self.ds, [review.FIELD], ids=[sid])[review.FIELD]
            state = column.iloc[0] if len(column) else None
        if state is None or state in review.QUEUED:
            review.set_states(self.ds, {sid: review.ANSWERED})

    def _conflict(self, sid: str, task_id: int, answers: list[_Answer], rec, stored: dict, fingerprint) -> bool:
        """Whether the answers conflict with a curator's decision (then reported, not applied):
        any answer to a task the decision closed, or answers all given before the decision."""
        closed = bool(rec) and rec["status"] == CLOSED
        when = self.decided.get(sid)
        times = [_utc(a.updated) for a in answers]
        before = when is not None and all(t is not None and t <= when for t in times)
        if not answers or not (closed or before):
            return False
        choices = ", ".join(sorted({f"{a.choice} ({a.annotator})" for a in answers if a.choice})) or "skipped"
        label = self.labels.get(sid)
        self.report.conflicts += 1
        self.report.problems.append(
            f"task {task_id} (sample {sid}): the answer {choices} conflicts with a curator's decision "
            f"({label!r}, {when:%Y-%m-%d %H:%M} UTC): not applied (set the label again to change it)"
            if when else f"task {task_id} (sample {sid}): the answer {choices} came after the task was "
            f"closed with {stored.get('decision')!r}: not applied (set the label again to change it)"
        )
        self._row(sid, task_id, CLOSED, dict(stored, fingerprint=fingerprint, outcome="conflict",
                                             decision=stored.get("decision") or label))
        return True

    def _history_has(self, sid: str, run_id: str | None) -> bool:
        if not run_id:
            return False
        self.ds.reload()
        hist = self.ds[sid].label_history or []
        return any(e.source == "labelstudio" and e.run_id == run_id for e in hist)

    def _write_votes(self, sid: str, task_id: int, votes: list[tuple[str, str]]) -> None:
        """Each annotator's class vote into ``votes`` (replacing that annotator's earlier vote)."""
        import fiftyone as fo

        class_votes = [(who, c) for who, c in votes if c != UNSURE]
        if not class_votes:
            return
        old = self.votes.get(sid)
        by_annotator = {c.annotator: c for c in (old.classifications if old else []) if c.annotator}
        when = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        for who, label in class_votes:
            prev = by_annotator.get(who)
            if prev is not None and prev.label == label and getattr(prev, "ls_task_id", None) == task_id:
                continue
            by_annotator[who] = fo.Classification(
                label=label, annotator=who, time=when, source="labelstudio", ls_task_id=task_id,
            )
        value = fo.Classifications(classifications=list(by_annotator.values()))
        self.ds.set_values("votes", {sid: value}, key_field="id")
        self.votes[sid] = value


@writes("relabel pull")
def pull(project: Project, *, task_ids: Sequence[int] | None = None) -> PullReport:
    """Apply the curators' answers from Label Studio (all tasks, or just ``task_ids``).

    Each task is applied on its own (one :func:`store.set_labels` call, its votes, its
    ``relabel_tasks`` row); a problem with one task is a report line, not a failure.
    """
    conn = connection(project)
    client = Client(conn)
    client.check()
    proj = client.find_project(project_title(project))
    if proj is None:
        raise NotReadyError(
            f"Label Studio at {conn.url} has no project {project_title(project)!r} "
            "(run 'fieldguide relabel push' first)"
        )
    client.drop_leaking_storages(proj.id, protected_paths(project))
    if task_ids is None:
        tasks = client.tasks(proj.id, with_annotations=True)
        missing_ids: list[int] = []
    else:
        fetched = {int(t): client.task(int(t)) for t in task_ids}
        tasks = [t for t in fetched.values() if t is not None and t.project == proj.id]
        missing_ids = [t for t, v in fetched.items() if v is None]
    store.dataset(project, create=False)  # a clear error before the run starts
    wh = store.warehouse(project)
    with wh.run("relabel_pull", {"url": conn.url, "project_id": proj.id,
                                 "task_ids": list(task_ids) if task_ids else None}) as run_id:
        puller = Puller(project, client, proj.id, run_id)
        for task in sorted(tasks, key=lambda t: t.id):
            puller.apply(task)
        on_server = {t.id for t in tasks}
        by_task = {int(r["task_id"]): sid for sid, r in puller.rows.items() if r.get("task_id") is not None}
        gone = missing_ids if task_ids is not None else [
            tid for tid, sid in by_task.items()
            if tid not in on_server and puller.rows[sid]["status"] in (PUSHED, APPLYING, ANSWERED, SKIPPED)
        ]
        for tid in gone:
            if tid in by_task and puller.rows[by_task[tid]]["status"] != DELETED:
                puller.deleted(by_task[tid], tid)
        store.snapshot_samples(project, puller.ds)
    report = puller.report
    log.info("pull: %s", report.as_dict())
    return report
