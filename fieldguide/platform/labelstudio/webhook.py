"""The webhook listener: Label Studio says a task was annotated, fieldguide pulls that task.

:func:`listen` receives Label Studio's ANNOTATION_CREATED / UPDATED webhooks on 127.0.0.1
and pulls just that task (:func:`.pulling.pull`).

A webhook is a hint, never an answer. Label Studio shows every webhook's URL and headers to
anyone holding an API token (``/api/webhooks``), so no secret a webhook carries stays secret
from Label Studio's users. The listener therefore takes nothing from the body but a task id
(strictly validated, malformed requests get a 4xx), and pulls that task: the answer is read
from Label Studio's API with the project's token, and applied only when the task is one
fieldguide pushed for that sample. A forged webhook can at worst make fieldguide read a task
early. Each ``listen`` also makes a fresh random secret, kept in its memory and sent by Label
Studio as a header: hooks left by an earlier listener, or aimed at it by a process that
cannot read Label Studio's API, are refused (403). ``credentials.json`` holds no webhook secret.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import re
import secrets
import threading
from collections.abc import Callable

from fieldguide.config import Project
from fieldguide.errors import FieldguideError, NotReadyError, ServiceError
from fieldguide.platform.labelstudio.client import Client, NotFound, connection
from fieldguide.platform.labelstudio.pulling import PullReport, pull
from fieldguide.platform.labelstudio.server import HOST
from fieldguide.platform.labelstudio.tasks import project_title
from fieldguide.platform.lock import ProjectBusyError

log = logging.getLogger(__name__)

WEBHOOK_HEADER = "X-Fieldguide-Secret"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
MAX_WEBHOOK_BYTES = 1 << 20  # Label Studio's annotation payloads are a few kB
BUSY_RETRY_S = 2.0  # a webhook that arrives while another step writes the project is pulled after it


def register_webhook(project: Project, url: str, secret: str) -> int:
    """Register (or refresh) the project's webhook to ``url``, sending ``secret`` as a header."""
    conn = connection(project)
    client = Client(conn)
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
        client = Client(connection(project))
        client.call("remove the webhook", client.sdk.webhooks.delete, hook_id)
    except (FieldguideError, NotFound) as e:
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
        server = ThreadingHTTPServer((HOST, port), _hook_handler(secret, work))
    except OSError as e:
        raise ServiceError(f"cannot listen on {HOST}:{port} ({e.strerror}): pass --port") from None
    server.daemon_threads = True
    url = f"http://{HOST}:{server.server_address[1]}/"
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
