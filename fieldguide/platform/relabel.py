"""The relabel bridge: push flagged samples to Label Studio, pull the curators' answers back.

- :func:`push` makes one Label Studio project per fieldguide project (a single-choice config
  built from the class list, plus "none of these / unsure"), and one task per sample: the
  image served from the project's own files (``/data/local-files/?d=...``, no copies, no
  base64; Label Studio serves the image folders only, never the project folder: see
  :func:`labelstudio_server.served_folders`), its metadata, the given label and noise
  score, and the model's prediction as a pre-annotation. The server's task list and the
  warehouse's ``relabel_tasks`` make it idempotent: a sample never gets a second task.
- :func:`pull` reads the answers, decides per task (several annotators: ``votes`` and the
  configured majority rule), and applies each task on its own through
  :func:`store.set_labels` (``label_history``: old, new, source ``labelstudio``, annotator,
  time, run id). A task's answer is fingerprinted (annotation ids and update times), so
  re-running pull applies nothing twice, while an edited answer is applied once more. Only
  tasks that fieldguide pushed (recorded in ``relabel_tasks``) are applied. Each task is
  applied under the project's write lock after re-reading what the store and the warehouse
  hold, so two pulls at once apply an answer once.
- :func:`listen` receives Label Studio's ANNOTATION_CREATED / UPDATED webhooks on 127.0.0.1
  and pulls just that task.

A webhook is a hint, never an answer. Label Studio shows every webhook's URL and headers to
anyone holding an API token (``/api/webhooks``), so no secret a webhook carries stays secret
from Label Studio's users. The listener therefore takes nothing from the body but a task id
(strictly validated, malformed requests get a 4xx), and pulls that task: the answer is read
from Label Studio's API with the project's token, and applied only when the task is one
fieldguide pushed for that sample. A forged webhook can at worst make fieldguide read a task
early. Each ``listen`` also makes a fresh random secret, kept in its memory and sent by Label
Studio as a header: hooks left by an earlier listener, or aimed at it by a process that
cannot read Label Studio's API, are refused (403). ``credentials.json`` holds no webhook secret.

Requests retry with backoff on transient errors (connection refused, timeouts, 5xx, 429);
other failures raise :class:`ServiceError` with one line. Nothing is written to the store or
the warehouse before the server has answered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
import xml.sax.saxutils as sax
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from fieldguide.config import Project
from fieldguide.errors import FieldguideError, NotReadyError, ServiceError
from fieldguide.platform import labelstudio_server as lss
from fieldguide.platform import store
from fieldguide.platform.lock import ProjectBusyError, project_lock, writes
from fieldguide.platform.warehouse import now

log = logging.getLogger(__name__)

UNSURE = "none of these / unsure"
FROM_NAME = "label"
TO_NAME = "image"
MAJORITY_RULES = ("majority", "plurality", "unanimous")
WEBHOOK_HEADER = "X-Fieldguide-Secret"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
MAX_WEBHOOK_BYTES = 1 << 20  # Label Studio's annotation payloads are a few kB
# statuses of relabel_tasks rows
PUSHED, APPLYING, ANSWERED, SKIPPED, DELETED, ORPHANED = (
    "pushed", "applying", "answered", "skipped", "deleted", "orphaned",
)
_SETTLED = (ANSWERED, SKIPPED, ORPHANED)


# ---- pure parts ----------------------------------------------------------------------------
def label_config(classes: Sequence[str]) -> str:
    """The single-choice labeling config: the image, its facts, one choice per class + unsure."""
    if not classes:
        raise NotReadyError("the project has no classes yet (ingest labelled images first)")
    choices = "\n".join(f"    <Choice value={sax.quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        '  <Text name="facts" value="$info"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="false" required="true">\n'
        f"{choices}\n"
        f"    <Choice value={sax.quoteattr(UNSURE)}/>\n"
        "  </Choices>\n"
        "</View>"
    )


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


def project_title(project: Project) -> str:
    """The Label Studio project's title (at most 50 characters): the FiftyOne dataset's name."""
    return project.dataset_name[:50]


def _choice(result: Sequence[dict] | None) -> str | None:
    for r in result or []:
        if r.get("from_name") == FROM_NAME and r.get("type") == "choices":
            picked = (r.get("value") or {}).get("choices") or []
            if picked:
                return picked[0]
    return None


# ---- reports -------------------------------------------------------------------------------
@dataclasses.dataclass
class PushReport:
    pushed: int = 0
    already_pushed: int = 0
    config_updated: bool = False
    project_id: int | None = None
    url: str = ""
    run_id: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PullReport:
    accepted: int = 0
    changed: int = 0
    unsure: int = 0
    skipped: int = 0
    pending: int = 0
    unchanged: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    project_id: int | None = None
    run_id: str = ""

    @property
    def applied(self) -> int:
        """Answers taken in by this pull (accepted + changed + unsure + skipped)."""
        return self.accepted + self.changed + self.unsure + self.skipped

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), applied=self.applied)


# ---- the client: retries, one-line errors ---------------------------------------------------
class _NotFound(Exception):
    pass


class _Client:
    """label-studio-sdk's ``LabelStudio`` with our retries and one-line errors."""

    def __init__(self, conn: lss.Connection):
        from label_studio_sdk import LabelStudio

        self.conn = conn
        self.sdk = LabelStudio(
            base_url=conn.url, api_key=conn.token, timeout=conn.timeout_s, max_retries=0
        )

    def call(self, what: str, fn: Callable, *args, **kwargs):
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        delay, reason = 0.5, ""
        for attempt in range(self.conn.retries + 1):
            try:
                return fn(*args, **kwargs)
            except httpx.TimeoutException:
                reason = f"did not answer within {self.conn.timeout_s:g} s"
            except httpx.ConnectError:
                reason = "is not reachable (connection refused)"
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                reason = "dropped the connection"
            except ApiError as e:
                code = e.status_code
                if code in (401, 403):
                    raise ServiceError(
                        f"Label Studio at {self.conn.url} refused the API token ({code}) while "
                        f"trying to {what}: check the token ({self._token_hint()})"
                    ) from None
                if code == 404:
                    raise _NotFound(what) from None
                if code != 429 and (code is None or code < 500):
                    raise ServiceError(
                        f"Label Studio at {self.conn.url} could not {what} ({code}: {_detail(e.body)})"
                    ) from None
                reason = f"answered {code}"
            if attempt < self.conn.retries:
                log.info("Label Studio %s (%s); retrying in %.1f s", reason, what, delay)
                time.sleep(delay)
                delay *= 2
        tries = self.conn.retries + 1
        hint = (
            "start it with 'fieldguide labelstudio start'" if self.conn.local
            else "check labelstudio.url in fieldguide.toml and that the server is up"
        )
        raise ServiceError(
            f"Label Studio at {self.conn.url} {reason} (trying to {what}, {tries} tries): {hint}"
        )

    def _token_hint(self) -> str:
        if self.conn.local:
            return "the project's local server keeps it in labelstudio/credentials.json"
        return "set the environment variable named by labelstudio.token_env"

    # ---- what the bridge needs ----------------------------------------------------------
    def check(self) -> None:
        """Fail early, before anything is written, when the server is down or the token is wrong."""
        self.call("check the API token", self.sdk.users.whoami)

    def find_project(self, title: str):
        page = self.call("list projects", self.sdk.projects.list, title=title, page_size=100)
        for p in page.items or []:
            if p.title == title:
                return p
        return None

    def ensure_project(self, title: str, config: str, description: str) -> tuple[object, bool]:
        """The project with ``title`` and ``config`` (created, or its config updated)."""
        proj = self.find_project(title)
        if proj is None:
            proj = self.call(
                "create the project", self.sdk.projects.create, title=title, label_config=config,
                description=description, show_skip_button=True, maximum_annotations=1,
                sampling="Sequential sampling",
            )
            return proj, True
        if (proj.label_config or "").strip() != config.strip():
            self.call("update the labeling config", self.sdk.projects.update, proj.id, label_config=config)
            return proj, True
        return proj, False

    def drop_leaking_storages(self, project_id: int, protected: Sequence[Path]) -> list[str]:
        """Remove the project's local storages that serve a ``protected`` path (an older
        fieldguide made them); returns the paths of the storages left."""
        existing = self.call(
            "list local storages", self.sdk.import_storage.local.list, project=project_id
        )
        kept = []
        for storage in existing:
            if storage.path and any(lss.serves(storage.path, p) for p in protected):
                log.warning("removing the local-files storage %s: it serves the project's own files", storage.path)
                self.call(f"remove the local-files storage {storage.path}",
                          self.sdk.import_storage.local.delete, storage.id)
            elif storage.path:
                kept.append(os.path.normpath(storage.path))
        return kept

    def ensure_storages(self, project_id: int, folders: Iterable[Path], protected: Sequence[Path]) -> None:
        """A Local Files import storage covering each folder (never synced: no tasks from it);
        leaking storages are removed first (:meth:`drop_leaking_storages`)."""
        have = self.drop_leaking_storages(project_id, protected)
        for folder in sorted({os.path.normpath(f) for f in folders}):
            if any(folder == h or folder.startswith(h + os.sep) for h in have):
                continue
            self.call(
                f"add a local-files storage for {folder}", self.sdk.import_storage.local.create,
                project=project_id, path=folder, title="fieldguide images", use_blob_urls=True,
                description="the fieldguide project's images, served in place",
            )
            have.append(folder)

    def ensure_review_tab(self, project_id: int) -> None:
        """A Data Manager tab sorted by noise score, most doubtful first (best effort)."""
        try:
            views = self.call("list views", self.sdk.views.list, project=project_id)
            if any((getattr(v, "data", None) or {}).get("title") == "to review" for v in views):
                return
            self.call(
                "add the review tab", self.sdk.views.create, project=project_id,
                data={"title": "to review", "ordering": ["-tasks:data.noise_score"]},
            )
        except (ServiceError, _NotFound) as e:
            log.warning("could not add the 'to review' tab: %s", e)

    def tasks(self, project_id: int, *, with_annotations: bool) -> list:
        """All tasks of the project (paged)."""
        out, page_no = [], 1
        while True:
            try:
                page = self.call(
                    "list tasks", self.sdk.tasks.list, project=project_id, page=page_no,
                    page_size=100, fields="all" if with_annotations else "task_only",
                    resolve_uri=False,
                )
            except _NotFound:  # past the last page
                break
            items = page.items or []
            out.extend(items)
            if not page.has_next or len(items) < 100:
                break
            page_no += 1
        return out

    def task(self, task_id: int):
        try:
            return self.call(f"read task {task_id}", self.sdk.tasks.get, str(task_id))
        except _NotFound:
            return None

    def import_tasks(self, project_id: int, tasks: list[dict]) -> None:
        for i in range(0, len(tasks), 200):
            self.call(
                "import tasks", self.sdk.projects.import_tasks, project_id,
                request=tasks[i:i + 200], return_task_ids=True,
            )

    def user_emails(self) -> dict[int, str]:
        users = self.call("list users", self.sdk.users.list)
        return {u.id: (u.email or u.username or f"user-{u.id}") for u in users}


def _detail(body) -> str:
    if isinstance(body, dict):
        for key in ("detail", "validation_errors", "message"):
            if body.get(key):
                return json.dumps(body[key], default=str)[:300]
    return str(body)[:300]


# ---- push ----------------------------------------------------------------------------------
def _task_rows(project: Project, view, document_root: str) -> tuple[list[dict], set[Path]]:
    """One task payload per sample of ``view`` (in view order) and the folders holding them."""
    schema = view.get_field_schema()
    want = ["id", "filepath", "ground_truth.label", "tags"]
    optional = [f for f in ("noise_score", "observer", "observed_at", "location") if f in schema]
    has_pred = "prediction" in schema
    fields = want + optional + (["prediction.label", "prediction.confidence"] if has_pred else [])
    values = dict(zip(fields, view.values(fields)))
    root = Path(document_root)
    rows, folders, outside = [], set(), []
    for i, sid in enumerate(values["id"]):
        path = Path(values["filepath"][i])
        try:
            rel = path.relative_to(root)
        except ValueError:
            outside.append(str(path))
            continue
        if len(rel.parts) < 2:
            outside.append(str(path))
            continue
        folders.add(path.parent)
        get = lambda f: values[f][i] if f in values else None  # noqa: E731
        given, noise = get("ground_truth.label"), get("noise_score")
        pred, conf = get("prediction.label"), get("prediction.confidence")
        facts = [f"given label: {given or '(none)'}"]
        if pred is not None:
            facts.append(f"model: {pred}" + (f" ({conf:.2f})" if conf is not None else ""))
        if noise is not None:
            facts.append(f"noise score: {noise:.3f}")
        split = store.split_of(get("tags") or [])
        if split:
            facts.append(f"split: {split}")
        if get("observer"):
            facts.append(f"observer: {get('observer')}")
        if get("observed_at"):
            facts.append(f"observed: {get('observed_at'):%Y-%m-%d}")
        loc = get("location")
        if loc is not None and getattr(loc, "point", None):
            facts.append(f"location: {loc.point[1]:.4f}, {loc.point[0]:.4f}")
        facts.append(f"file: {path.name}")
        data = {
            "image": "/data/local-files/?d=" + quote(rel.as_posix()),
            "sample_id": sid,
            "filepath": str(path),
            "given_label": given,
            "noise_score": None if noise is None else float(noise),
            "predicted_label": pred,
            "confidence": None if conf is None else float(conf),
            "split": split,
            "observer": get("observer"),
            "observed_at": None if get("observed_at") is None else get("observed_at").isoformat(),
            "info": "  ·  ".join(facts),
        }
        rows.append({"data": data, "prediction": (pred, conf)})
    if outside:
        raise ServiceError(
            f"{len(outside)} image(s) lie outside the Label Studio server's file root {document_root} "
            f"(e.g. {outside[0]}): restart the project's server ('fieldguide labelstudio stop', then "
            "'start') or set labelstudio.files_root"
        )
    return rows, folders


def _storage_folders(ds, pushed_dirs: set[Path], document_root: str, protected: Sequence[Path]) -> list[Path]:
    """The folders Label Studio serves: those of every image of the store that may be served
    (a stable set, push after push), which must include those of the pushed images."""
    servable = {
        d for d in {Path(p).parent for p in ds.values("filepath")}
        if not lss.storage_problem(d, document_root=document_root, protected=protected)
    }
    return lss.served_folders(pushed_dirs | servable, document_root=document_root, protected=protected)


def _model_version(project: Project, ds) -> str:
    last = store.warehouse(project).last_run("predict") if project.warehouse_path.exists() else None
    if last:
        return str(last["run_id"])
    return str(ds.info.get("prediction_model") or "fieldguide")


def _relabel_rows(project: Project, sample_id: str | None = None) -> dict[str, dict]:
    """The ``relabel_tasks`` rows of the project (or of one sample), by sample id."""
    if not project.warehouse_path.exists():
        return {}
    sql, params = "SELECT * FROM relabel_tasks WHERE project = ?", [project.config.project.name]
    if sample_id is not None:
        sql, params = sql + " AND sample_id = ?", params + [sample_id]
    df = store.warehouse(project).query(sql, params)
    rows = {}
    for r in df.to_dict("records"):
        r = {k: (None if _isnull(v) else v) for k, v in r.items()}
        rows[r["sample_id"]] = r
    return rows


def _isnull(v) -> bool:
    try:
        import pandas as pd

        return v is None or (not isinstance(v, (list, dict, str)) and bool(pd.isna(v)))
    except (TypeError, ValueError):
        return False


def _py_time(v):
    if v is None:
        return None
    if hasattr(v, "to_pydatetime"):
        return v.to_pydatetime()
    return v


@writes("relabel push")
def push(project: Project, *, view: str = "to_review", limit: int | None = None,
         sample_ids: Sequence[str] | None = None) -> PushReport:
    """Push the samples of the saved ``view`` (the first ``limit``) to Label Studio.

    ``sample_ids`` pushes those samples instead (a selection in the App). A sample that already
    has a task (on the server, or recorded in ``relabel_tasks``) gets no second one; classes
    added since the last push are added to the labeling config.
    """
    ds = store.dataset(project, create=False)
    if sample_ids is not None:
        samples = ds.select(list(sample_ids), ordered=True)
        if len(samples) != len(set(sample_ids)):
            raise NotReadyError(f"{len(set(sample_ids)) - len(samples)} selected sample(s) are not in the store")
        view = "selection"
    else:
        if not ds.has_saved_view(view):
            names = ", ".join(ds.list_saved_views()) or "none yet"
            raise NotReadyError(f"no saved view {view!r} (saved views: {names}; run 'fieldguide flag' first)")
        samples = ds.load_saved_view(view)
    if limit is not None:
        if limit < 0:
            raise FieldguideError(f"--limit must be 0 or more (got {limit})")
        samples = samples.limit(limit)
    conn = lss.connection(project)
    rows, image_dirs = _task_rows(project, samples, conn.document_root)
    protected = lss.protected_paths(project)
    folders = _storage_folders(ds, image_dirs, conn.document_root, protected)
    config = label_config(store.classes(ds))
    client = _Client(conn)
    client.check()  # nothing is written before the server has answered
    report = PushReport(url=conn.url)
    wh = store.warehouse(project)
    name = project.config.project.name
    with wh.run("relabel_push", {"view": view, "limit": limit, "url": conn.url}) as run_id:
        report.run_id = run_id
        proj, report.config_updated = client.ensure_project(
            project_title(project), config, f"fieldguide project {name}: relabel flagged samples"
        )
        report.project_id = proj.id
        client.ensure_storages(proj.id, folders, protected)
        client.ensure_review_tab(proj.id)
        on_server = {
            (t.data or {}).get("sample_id"): t for t in client.tasks(proj.id, with_annotations=False)
        }
        known = _relabel_rows(project)
        version = _model_version(project, ds)
        class_set = set(store.classes(ds))
        new, recovered = [], []
        for row in rows:
            sid = row["data"]["sample_id"]
            if sid in on_server:
                report.already_pushed += 1
                rec = known.get(sid)
                task = on_server[sid]
                if rec is None or rec["task_id"] != task.id or rec["status"] == DELETED:
                    recovered.append({
                        "project": name, "sample_id": sid, "task_id": task.id, "status": PUSHED,
                        "pushed": _py_time(task.created_at) or now(), "answered": None, "answer": None,
                    })
                continue
            task = {"data": row["data"]}
            pred, conf = row["prediction"]
            if pred is not None and pred in class_set:
                task["predictions"] = [{
                    "model_version": version,
                    "score": None if conf is None else float(conf),
                    "result": [{
                        "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                        "value": {"choices": [pred]},
                    }],
                }]
            new.append(task)
        if new:
            client.import_tasks(proj.id, new)
            by_sample = {
                (t.data or {}).get("sample_id"): t.id for t in client.tasks(proj.id, with_annotations=False)
            }
            when = now()
            recovered += [
                {"project": name, "sample_id": t["data"]["sample_id"],
                 "task_id": by_sample[t["data"]["sample_id"]], "status": PUSHED, "pushed": when,
                 "answered": None, "answer": None}
                for t in new if t["data"]["sample_id"] in by_sample
            ]
            report.pushed = len(new)
        if recovered:
            wh.write("relabel_tasks", recovered)
    log.info("pushed %d, already pushed %d (project %s)", report.pushed, report.already_pushed, proj.id)
    return report


# ---- pull ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Answer:
    annotation_id: int
    annotator: str
    choice: str | None
    cancelled: bool
    updated: str


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
            choice=_choice(a.get("result")),
            cancelled=bool(a.get("was_cancelled")),
            updated=str(a.get("updated_at") or a.get("created_at") or ""),
        ))
    return out


def _fingerprint(answers: list[_Answer]) -> list:
    return sorted([a.annotation_id, a.updated, a.choice, a.cancelled] for a in answers)


class _Puller:
    """Applies tasks one at a time; each task's writes stand or fall together."""

    def __init__(self, project: Project, client: _Client, project_id: int, run_id: str):
        self.project = project
        self.client = client
        self.project_id = project_id
        self.run_id = run_id
        self.name = project.config.project.name
        self.rule = project.config.labelstudio.majority_rule
        self.wh = store.warehouse(project)
        self.ds = store.dataset(project, create=False)
        self.rows = _relabel_rows(project)
        self.emails = client.user_emails()
        ids, labels, votes = self.ds.values(["id", "ground_truth.label", "votes"])
        self.labels = dict(zip(ids, labels))
        self.votes = dict(zip(ids, votes))
        self.classes = set(store.classes(self.ds))
        self.report = PullReport(project_id=project_id, run_id=run_id)

    def _row(self, sid: str, task_id: int, status: str, answer: dict | None, pushed=None) -> None:
        old = self.rows.get(sid) or {}
        row = {
            "project": self.name, "sample_id": sid, "task_id": task_id, "status": status,
            "pushed": _py_time(old.get("pushed")) or pushed or now(),
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
        self.rows.update(_relabel_rows(self.project, sid))
        found = self.ds.select([sid]).values(["id", "ground_truth.label", "votes"])
        if found[0]:
            self.labels[sid], self.votes[sid] = found[1][0], found[2][0]
        else:
            self.labels.pop(sid, None)
            self.votes.pop(sid, None)

    def _apply(self, task, sid: str, task_id: int, answers: list[_Answer]) -> None:
        fingerprint = _fingerprint(answers)
        rec = self.rows.get(sid)
        stored = json.loads(rec["answer"]) if rec and rec.get("answer") else {}
        same = stored.get("fingerprint") == json.loads(json.dumps(fingerprint, default=str))
        if rec and rec["status"] in _SETTLED and same and rec["task_id"] == task_id:
            self.report.unchanged += 1
            return
        if sid not in self.labels:
            self.report.problems.append(
                f"task {task_id}: sample {sid} is no longer in the store: answer not applied"
            )
            self._row(sid, task_id, ORPHANED, {"fingerprint": fingerprint, "outcome": "orphaned"},
                      pushed=_py_time(getattr(task, "created_at", None)))
            return
        given = self.labels[sid]
        votes = [(a.annotator, a.choice) for a in answers if not a.cancelled and a.choice]
        answer = {"fingerprint": fingerprint, "run_id": self.run_id, "given": given,
                  "votes": [list(v) for v in votes], "rule": self.rule}
        if rec and rec["status"] == APPLYING and same and self._history_has(sid, stored.get("run_id")):
            # an earlier pull changed the label and stopped before finishing: finish it only
            self._write_votes(sid, task_id, votes)
            self._row(sid, task_id, ANSWERED, stored)
            outcome = stored.get("outcome", "changed")
            setattr(self.report, outcome, getattr(self.report, outcome) + 1)
            return
        if not votes:
            self._row(sid, task_id, SKIPPED, dict(answer, outcome="skipped"))
            self.report.skipped += 1
            return
        decision = decide([c for _, c in votes], self.rule)
        if decision is None or decision == UNSURE:
            self._write_votes(sid, task_id, votes)
            self._row(sid, task_id, ANSWERED, dict(answer, outcome="unsure", decision=decision))
            self.report.unsure += 1
            return
        if decision not in self.classes:
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
                             actor=actor, run_id=self.run_id)
        except FieldguideError as e:
            self._row(sid, task_id, rec["status"] if rec else PUSHED, stored or None)
            self.report.problems.append(f"task {task_id}: {e}")
            return
        self.labels[sid] = decision
        self._write_votes(sid, task_id, votes)
        self._row(sid, task_id, ANSWERED, answer)
        setattr(self.report, outcome, getattr(self.report, outcome) + 1)

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
    conn = lss.connection(project)
    client = _Client(conn)
    client.check()
    proj = client.find_project(project_title(project))
    if proj is None:
        raise NotReadyError(
            f"Label Studio at {conn.url} has no project {project_title(project)!r} "
            "(run 'fieldguide relabel push' first)"
        )
    client.drop_leaking_storages(proj.id, lss.protected_paths(project))
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
        puller = _Puller(project, client, proj.id, run_id)
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


# ---- webhook listener ----------------------------------------------------------------------
def register_webhook(project: Project, url: str, secret: str) -> int:
    """Register (or refresh) the project's webhook to ``url``, sending ``secret`` as a header."""
    conn = lss.connection(project)
    client = _Client(conn)
    client.check()
    proj = client.find_project(project_title(project))
    if proj is None:
        raise NotReadyError("no Label Studio project yet (run 'fieldguide relabel push' first)")
    settings = dict(url=url, headers={WEBHOOK_HEADER: secret}, is_active=True, send_payload=True,
                    send_for_all_actions=False, actions=list(WEBHOOK_ACTIONS))
    hooks = client.call("list webhooks", client.sdk.webhooks.list, project=str(proj.id))
    for hook in hooks:
        if hook.url == url and getattr(hook, "project", proj.id) == proj.id:
            client.call("update the webhook", client.sdk.webhooks.update, hook.id, **settings)
            return hook.id
    hook = client.call("register the webhook", client.sdk.webhooks.create, project=proj.id, **settings)
    return hook.id


def _unregister_webhook(project: Project, hook_id: int) -> None:
    try:
        client = _Client(lss.connection(project))
        client.call("remove the webhook", client.sdk.webhooks.delete, hook_id)
    except (FieldguideError, _NotFound) as e:
        log.warning("could not remove webhook %s: %s", hook_id, e)


class _Refused(Exception):
    """A webhook request answered with ``status`` (4xx) and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _check_secret(given: str, secret: str) -> None:
    # compare bytes: hmac.compare_digest raises TypeError on a non-ASCII str
    if not hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode("utf-8")):
        raise _Refused(403, f"missing or wrong {WEBHOOK_HEADER} header")


def _content_length(value: str | None) -> int:
    """The body's length in bytes: a plain non-negative integer, at most ``MAX_WEBHOOK_BYTES``."""
    if value is None:
        raise _Refused(411, "a Content-Length header is required")
    if not re.fullmatch(r"[0-9]{1,20}", value.strip()):
        raise _Refused(400, f"Content-Length {value[:40]!r} is not a non-negative integer")
    length = int(value)
    if length > MAX_WEBHOOK_BYTES:
        raise _Refused(413, f"the body is over {MAX_WEBHOOK_BYTES} bytes")
    return length


def _parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Refused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _Refused(400, f"the body is a JSON {type(body).__name__}, not an object")
    return body


def _as_task_id(value) -> int:
    if isinstance(value, dict):
        value = value.get("id")
    if type(value) is not int or not 0 < value < 2**63:
        raise _Refused(400, f"task id {value!r:.40} is not a positive integer")
    return value


def _webhook_task_id(body: dict) -> int | None:
    """The task an annotation webhook names (``task.id`` and/or ``annotation.task``).

    None for other actions (nothing to do). A hint only: the answer itself is read from
    Label Studio by :func:`pull`. Raises ``_Refused`` (400) on a malformed body.
    """
    if body.get("action") not in WEBHOOK_ACTIONS:
        return None
    ids = set()
    if body.get("task") is not None:
        ids.add(_as_task_id(body["task"]))
    annotation = body.get("annotation")
    if annotation is not None:
        if not isinstance(annotation, dict):
            raise _Refused(400, "'annotation' is not an object")
        if annotation.get("task") is not None:
            ids.add(_as_task_id(annotation["task"]))
    if len(ids) != 1:
        raise _Refused(400, "no task id" if not ids else "'task' and 'annotation.task' differ")
    return ids.pop()


def _hook_handler(secret: str, work: queue.Queue):
    """The request handler class: checks each request, queues its task id, answers at once."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a client that stops sending gets 408, not a thread held forever

        def do_POST(self):  # noqa: N802 - http.server's name
            self.consumed = 0
            try:
                _check_secret(self.headers.get(WEBHOOK_HEADER, ""), secret)
                length = _content_length(self.headers.get("Content-Length"))
                raw = self._read(length)
                task_id = _webhook_task_id(_parse_body(raw))
            except _Refused as e:
                self._answer(e.status, e.reason)
                return
            if task_id is not None:
                work.put(task_id)
            self._answer(200, f"task {task_id} queued" if task_id else "ignored: not an annotation event")

        def _read(self, length: int) -> bytes:
            try:
                raw = self.rfile.read(length)
            except OSError:  # the timeout
                raw = b""
            self.consumed = len(raw)
            if len(raw) < length:
                raise _Refused(408, f"the body did not arrive in full ({length} bytes announced)")
            return raw

        def _answer(self, status: int, message: str) -> None:
            if status >= 400:
                self.close_connection = True
                self._drain()
            body = (message + "\n").encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client went away
                self.close_connection = True

        def _drain(self) -> None:
            """Drop what is left of a refused body (briefly), so the client reads the answer."""
            declared = (self.headers.get("Content-Length") or "").strip()
            limit = 4 * MAX_WEBHOOK_BYTES
            if re.fullmatch(r"[0-9]{1,20}", declared):
                limit = min(int(declared), limit)
            limit -= self.consumed
            self.connection.settimeout(0.3)
            try:
                while limit > 0:
                    chunk = self.rfile.read1(min(limit, 1 << 16))
                    if not chunk:
                        break
                    limit -= len(chunk)
            except OSError:
                pass

        def log_message(self, fmt, *args):  # keep the console quiet; use logging
            log.debug("webhook %s", fmt % args)

    return Handler


def listen(
    project: Project,
    *,
    port: int | None = None,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    on_report: Callable[[list[int], PullReport], None] | None = None,
) -> None:
    """Serve Label Studio's webhooks on 127.0.0.1:``port`` and pull each annotated task.

    Requests without this listener's secret are refused (403), malformed ones get a 4xx (see
    the module docstring for why the body is never trusted). Pulls run one at a time in this
    thread, so Label Studio's short webhook timeout is never hit. Runs until ``stop`` is set
    (or Ctrl-C); the webhook is removed on the way out.
    """
    from http.server import ThreadingHTTPServer

    port = port or project.config.labelstudio.webhook_port
    secret = secrets.token_urlsafe(32)  # this process's only; never written anywhere
    work: queue.Queue[int] = queue.Queue()
    stop = stop or threading.Event()
    try:
        server = ThreadingHTTPServer((lss.HOST, port), _hook_handler(secret, work))
    except OSError as e:
        raise ServiceError(f"cannot listen on {lss.HOST}:{port} ({e.strerror}): pass --port") from None
    server.daemon_threads = True
    url = f"http://{lss.HOST}:{server.server_address[1]}/"
    try:
        hook_id = register_webhook(project, url, secret)
    except BaseException:
        server.server_close()
        raise
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    serving.start()
    log.info("listening for Label Studio webhooks on %s", url)
    if ready is not None:
        ready.set()
    try:
        _pull_queued(project, work, stop, on_report)
    finally:
        server.shutdown()
        server.server_close()
        _unregister_webhook(project, hook_id)


BUSY_RETRY_S = 2.0  # a webhook that arrives while another step writes the project is pulled after it


def _pull_queued(project: Project, work: queue.Queue, stop: threading.Event,
                 on_report: Callable[[list[int], PullReport], None] | None) -> None:
    while not stop.is_set():
        try:
            task_id = work.get(timeout=0.2)
        except queue.Empty:
            continue
        batch = {task_id}
        while not work.empty():  # several events for one task: one pull
            batch.add(work.get_nowait())
        try:
            report = pull(project, task_ids=sorted(batch))
        except ProjectBusyError as e:  # another step writes the project: try again, answers are kept
            log.info("pull of task(s) %s waits: %s", sorted(batch), e)
            for tid in batch:
                work.put(tid)
            stop.wait(BUSY_RETRY_S)
            continue
        except FieldguideError as e:
            log.error("pull of task(s) %s failed: %s", sorted(batch), e)
            continue
        if on_report is not None:
            on_report(sorted(batch), report)
