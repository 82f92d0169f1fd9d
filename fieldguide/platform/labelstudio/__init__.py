"""The Label Studio bridge: push flagged samples to Label Studio, pull the curators' answers back.

One module per job:

- :mod:`.server`: the project's own local Label Studio (start, stop, status, credentials);
- :mod:`.database`: its database, SQLite in its data dir or a team's PostgreSQL;
- :mod:`.storages`: which folders Label Studio may serve (the images, never the project's files);
- :mod:`.client`: how to reach a server (:func:`connection`) and the SDK calls, with retries
  and one-line errors (:class:`Client`);
- :mod:`.tasks`: the labeling config and each sample's task payload;
- :mod:`.records`: the warehouse's ``relabel_tasks`` rows;
- :mod:`.pushing`: :func:`push`; :mod:`.pulling`: :func:`pull` and the majority rules;
- :mod:`.webhook`: :func:`listen`, the webhook listener that pulls each annotated task.

Requests retry on transient errors (connection refused, timeouts, 5xx, 429); other failures
raise :class:`~fieldguide.errors.ServiceError` with one line. Nothing is written to the store
or the warehouse before the server has answered.
"""

from fieldguide.platform.labelstudio.client import Client, Connection, NotFound, connection
from fieldguide.platform.labelstudio.pulling import MAJORITY_RULES, PullReport, decide, pull
from fieldguide.platform.labelstudio.pushing import PushReport, push
from fieldguide.platform.labelstudio.server import HOST, ServerStatus, credentials, health, start, status, stop
from fieldguide.platform.labelstudio.storages import (
    images_root, protected_paths, served_folders, serves, storage_problem,
)
from fieldguide.platform.labelstudio.tasks import UNSURE, label_config, project_title
from fieldguide.platform.labelstudio.webhook import BUSY_RETRY_S, WEBHOOK_HEADER, listen, register_webhook

__all__ = [
    "BUSY_RETRY_S", "HOST", "MAJORITY_RULES", "UNSURE", "WEBHOOK_HEADER",
    "Client", "Connection", "NotFound", "PullReport", "PushReport", "ServerStatus",
    "connection", "credentials", "decide", "health", "images_root", "label_config", "listen",
    "project_title", "protected_paths", "pull", "push", "register_webhook", "served_folders",
    "serves", "start", "status", "stop", "storage_problem",
]
