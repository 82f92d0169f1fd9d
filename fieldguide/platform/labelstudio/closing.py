"""Close the Label Studio tasks of samples a curator decided elsewhere (the App, the CLI, the API).

The task gets the decision as an annotation by fieldguide's own account (so Label Studio counts
it as done and shows the answer) and its data says who decided what; its ``relabel_tasks`` row
becomes :data:`CLOSED` with that annotation's id, which :mod:`.pulling` leaves out. Any other
answer pulled later for the task is a conflict with the curator's decision, reported and not
applied.
"""

from __future__ import annotations

import json
import logging

from fieldguide.config import Project
from fieldguide.errors import FieldguideError
from fieldguide.platform import store
from fieldguide.platform.labelstudio.client import Client, NotFound, connection
from fieldguide.platform.labelstudio.records import CLOSED, OPEN, task_records
from fieldguide.platform.labelstudio.tasks import class_paths, decision_result
from fieldguide.platform.warehouse import now

log = logging.getLogger(__name__)


def close(project: Project, decisions: dict[str, str], *, run_id: str) -> tuple[int, list[str]]:
    """Close the open tasks of the samples in ``decisions`` (sample id → the decided label).

    Returns how many were closed and the problems (Label Studio unreachable, a task gone): a
    problem never undoes the decision; the task stays open there, and an answer pulled for it
    that is older than the decision is a conflict.
    """
    rows = {sid: r for sid, r in task_records(project).items()
            if sid in decisions and r.get("status") in OPEN and r.get("task_id") is not None}
    if not rows:
        return 0, []
    try:
        client = Client(connection(project))
        client.check()
    except FieldguideError as e:
        return 0, [f"{len(rows)} Label Studio task(s) stay open ({e}); their answers will not be applied "
                   "over the decision"]
    wh = store.warehouse(project)
    paths = class_paths(project)
    closed, problems = 0, []
    for sid, row in rows.items():
        task_id, label = int(row["task_id"]), decisions[sid]
        if label is None:  # a label removed is no answer Label Studio can show: the task stays open
            continue
        try:
            annotation = client.annotate(task_id, decision_result(label, paths))
        except (FieldguideError, NotFound) as e:
            problems.append(f"task {task_id} (sample {sid}) stays open in Label Studio: {e or 'not found'}")
            continue
        # recorded at once: from here on, a pull knows this answer for fieldguide's own
        answer = json.loads(row["answer"]) if row.get("answer") else {}
        answer.update(outcome="closed", decision=label, run_id=run_id, closing_annotation=int(annotation))
        wh.write("relabel_tasks", [{**row, "status": CLOSED, "answered": now(),
                                    "answer": json.dumps(answer, sort_keys=True, default=str)}])
        try:  # what the data manager shows; best effort, the task is closed either way
            client.update_task_data(task_id, {"review_state": f"decided by a curator: {label}",
                                              "given_label": label})
        except (FieldguideError, NotFound) as e:
            log.warning("task %s: closed, but its data could not be updated (%s)", task_id, e or "not found")
        closed += 1
    log.info("closed %d Label Studio task(s) after a curator's decision", closed)
    return closed, problems
