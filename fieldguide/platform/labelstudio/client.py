"""How fieldguide reaches a Label Studio server, and the calls the bridge makes on it.

:func:`connection` resolves the project's server: a team's own (``labelstudio.url`` in
fieldguide.toml, the token in the environment variable named by ``labelstudio.token_env``, or
``labelstudio.token``), else the project's local one (:mod:`.server`). :class:`Client` wraps
label-studio-sdk's ``LabelStudio`` with fieldguide's retry budget and one-line errors; its
methods are the few things push, pull and the webhook listener ask of the server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from fieldguide.config import Project
from fieldguide.errors import ServiceError
from fieldguide.platform.labelstudio.server import credentials, read_state
from fieldguide.platform.labelstudio.storages import DEFAULT_DOCUMENT_ROOT, serves

log = logging.getLogger(__name__)

#: the curation columns of a task's data; numbers typed as numbers (sorting, number filters)
CURATION_COLUMNS = {"given_label": "String", "noise_score": "Number", "predicted_label": "String",
                    "confidence": "Number"}
#: Label Studio's own Data Manager columns (1.2x), hidden in the review tab so that the curation
#: columns come first (the Data Manager puts task data after its own columns)
OWN_COLUMNS = ("inner_id", "completed_at", "total_annotations", "cancelled_annotations", "total_predictions",
               "annotators", "annotations_results", "annotations_ids", "predictions_score",
               "predictions_model_versions", "predictions_results", "file_upload", "storage_filename",
               "created_at", "updated_at", "updated_by", "avg_lead_time", "draft_exists", "comments",
               "unresolved_comment_count", "ground_truth", "agreement", "reviewers", "reviewed")
#: task data the review tab does not show (the task shows them)
HIDDEN_DATA = ("candidates", "info", "filepath", "sample_id")
REVIEW_TAB = {
    "title": "to review",
    "ordering": ["-tasks:data.noise_score"],
    "columnsDisplayType": {f"tasks:data.{c}": t for c, t in CURATION_COLUMNS.items() if t != "String"},
    "hiddenColumns": {
        "explore": [f"tasks:{c}" for c in OWN_COLUMNS] + [f"tasks:data.{c}" for c in HIDDEN_DATA],
        "labeling": [f"tasks:{c}" for c in OWN_COLUMNS] + [f"tasks:data.{c}" for c in HIDDEN_DATA],
    },
}


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where a Label Studio server is and how to authenticate; ``repr`` hides the token."""

    url: str
    token: str = dataclasses.field(repr=False)
    document_root: str
    local: bool
    timeout_s: float = 30.0
    retries: int = 3


def connection(project: Project) -> Connection:
    """How to reach this project's Label Studio: the configured one, else the local server.

    Raises :class:`ServiceError` (one line) when there is no token or no local server.
    """
    ls = project.config.labelstudio
    if ls.url:
        token = ls.token or os.environ.get(ls.token_env, "")
        if not token:
            raise ServiceError(
                f"no API token for Label Studio at {ls.url}: set the environment variable "
                f"{ls.token_env} (labelstudio.token_env) to your token"
            )
        return Connection(
            url=ls.url.rstrip("/"), token=token,
            document_root=str(Path(ls.files_root or DEFAULT_DOCUMENT_ROOT).expanduser()),
            local=False, timeout_s=ls.timeout_s, retries=ls.retries,
        )
    state = read_state(project)
    if not state:
        raise ServiceError(
            "the project's Label Studio server is not running (start it with 'fieldguide labelstudio start')"
        )
    token = credentials(project)["token"]
    return Connection(
        url=state["url"], token=token, document_root=state["document_root"], local=True,
        timeout_s=ls.timeout_s, retries=ls.retries,
    )


class NotFound(Exception):
    """The server answered 404 (a task, page or storage that is not there)."""


class Client:
    """label-studio-sdk's ``LabelStudio`` with one retry budget per call and one-line errors."""

    def __init__(self, conn: Connection):
        from label_studio_sdk import LabelStudio

        self.conn = conn
        self.sdk = LabelStudio(
            base_url=conn.url, api_key=conn.token, timeout=conn.timeout_s, max_retries=conn.retries
        )

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, a call of :attr:`sdk`, tried up to ``conn.retries + 1`` times.

        The SDK retries, with exponential backoff (1 s, 2 s, ... or the server's
        ``Retry-After``), refused and dropped connections (httpx's ``ConnectError`` and
        ``RemoteProtocolError``) and the answers 5xx, 429, 408 and 409. It does not retry
        timeouts nor reads or writes cut off mid-request (``ReadError``, ``WriteError``): those
        are retried here, with 0.5 s, 1 s, ... of backoff. Both draw on one budget of tries (a
        timeout counts as one): the SDK is told, per call, how many retries are left. When the
        budget is spent, or the server answers 401/403 or another 4xx, the failure is one line
        (:class:`ServiceError` naming ``what``); a 404 is :class:`NotFound`, for the caller.
        """
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        tries, used, delay = self.conn.retries + 1, 0, 0.5
        while True:
            try:
                return fn(*args, request_options={"max_retries": tries - used - 1}, **kwargs)
            except httpx.TimeoutException:
                reason = f"did not answer within {self.conn.timeout_s:g} s"
            except (httpx.ReadError, httpx.WriteError):
                reason = "dropped the connection"
            except httpx.ConnectError:  # the SDK has spent the budget's retries
                reason = "is not reachable (connection refused)"
                break
            except httpx.RemoteProtocolError:  # likewise
                reason = "dropped the connection"
                break
            except ApiError as e:
                code = e.status_code
                if code in (401, 403):
                    raise ServiceError(
                        f"Label Studio at {self.conn.url} refused the API token ({code}) while "
                        f"trying to {what}: check the token ({self._token_hint()})"
                    ) from None
                if code == 404:
                    raise NotFound(what) from None
                if code != 429 and (code is None or code < 500):
                    raise ServiceError(
                        f"Label Studio at {self.conn.url} could not {what} ({code}: {_detail(e.body)})"
                    ) from None
                reason = f"answered {code}"  # after the SDK's retries
                break
            used += 1
            if used >= tries:
                break
            log.info("Label Studio %s (%s); retrying in %.1f s", reason, what, delay)
            time.sleep(delay)
            delay *= 2
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
            if storage.path and any(serves(storage.path, p) for p in protected):
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
        """The Data Manager tab "to review" (best effort): most doubtful first, the curation
        columns first, typed (:data:`REVIEW_TAB`). A tab an older fieldguide made is brought up to date."""
        try:
            views = self.call("list views", self.sdk.views.list, project=project_id)
            old = next((v for v in views if (getattr(v, "data", None) or {}).get("title") == "to review"), None)
            if old is None:
                self.call("add the review tab", self.sdk.views.create, project=project_id, data=REVIEW_TAB)
            elif any(old.data.get(k) != v for k, v in REVIEW_TAB.items()):
                self.call("update the review tab", self.sdk.views.update, str(old.id), project=project_id,
                          data={**old.data, **REVIEW_TAB})
        except (ServiceError, NotFound) as e:
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
            except NotFound:  # past the last page
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
        except NotFound:
            return None

    def import_tasks(self, project_id: int, tasks: list[dict]) -> None:
        for i in range(0, len(tasks), 200):
            self.call(
                "import tasks", self.sdk.projects.import_tasks, project_id,
                request=tasks[i:i + 200], return_task_ids=True,
            )

    def annotate(self, task_id: int, result: list[dict]) -> int:
        """Add an annotation (``result``) to the task as fieldguide's account; returns its id."""
        made = self.call(f"annotate task {task_id}", self.sdk.annotations.create, task_id, result=result,
                         was_cancelled=False, ground_truth=False)
        return int(made.id)

    def update_task_data(self, task_id: int, data: dict) -> None:
        """Merge ``data`` into the task's data (the data manager's columns)."""
        task = self.task(task_id)
        if task is None:
            raise ServiceError(f"task {task_id} is not in Label Studio any more")
        self.call(f"update task {task_id}", self.sdk.tasks.update, str(task_id), data={**(task.data or {}), **data})

    def user_emails(self) -> dict[int, str]:
        users = self.call("list users", self.sdk.users.list)
        return {u.id: (u.email or u.username or f"user-{u.id}") for u in users}


def _detail(body) -> str:
    if isinstance(body, dict):
        for key in ("detail", "validation_errors", "message"):
            if body.get(key):
                return json.dumps(body[key], default=str)[:300]
    return str(body)[:300]
