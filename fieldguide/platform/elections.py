"""A replica set's elections, seen from a step: recognising the errors a change of primary causes,
and writing through them.

On a replica set (``store.database_uri = "mongodb://h1,h2,h3/?replicaSet=rs0"``) the primary can
step down at any moment (maintenance, a lost node); an election picks another within a second or
two. pymongo retries a single-document write and a read once on its own (retryable writes and
reads, on by default), but not a multi-document update (FiftyOne's tag and untag), nor a second
election during the retry. The bulk writes of :mod:`fieldguide.platform.fields` set values,
add or remove tags and save views: doing one twice does what doing it once does, so they run
through :func:`retrying`. An election error that still escapes a step (a read cut off
mid-cursor, a primary that does not come back) stops the step with one line saying to run it
again: every step writes what it computed as whole values, so a re-run finishes the job.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: MongoDB's error codes for "this node is not (or no longer) the primary", and for operations a
#: stepping-down or shutting-down node interrupted
ELECTION_CODES = frozenset({
    91,     # ShutdownInProgress
    189,    # PrimarySteppedDown
    10107,  # NotWritablePrimary
    11600,  # InterruptedAtShutdown
    11602,  # InterruptedDueToReplStateChange
    13435,  # NotPrimaryNoSecondaryOk
    13436,  # NotPrimaryOrSecondary
})

#: attempts of a write in all (the first and the retries), and the wait before the n-th retry (n x this)
ATTEMPTS = 5
BACKOFF_S = 0.5


def is_election_error(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from: FiftyOne re-raises a bulk write's error
    as a ``ValueError``) comes from a change of primary or a lost connection to one. Not a server
    selection timeout: pymongo has already waited ``serverSelectionTimeoutMS`` for a primary then."""
    from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure, ServerSelectionTimeoutError

    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, AutoReconnect) and not isinstance(error, ServerSelectionTimeoutError):
            return True  # NotPrimaryError, a connection the old primary closed
        if isinstance(error, BulkWriteError):
            codes = {e.get("code") for e in error.details.get("writeErrors", [])}
            if codes & ELECTION_CODES:
                return True
        if isinstance(error, OperationFailure) and (
                error.code in ELECTION_CODES or error.has_error_label("RetryableWriteError")):
            return True
        error, seen = error.__cause__, seen + 1
    return False


def retrying(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for an idempotent write: run it again (up to :data:`ATTEMPTS` times in all, waiting
    longer each time for the election to end) when a change of primary interrupted it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        attempt = 1
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if attempt == ATTEMPTS or not is_election_error(e):
                    raise
                log.warning("%s: the database's primary changed (%s); writing again", fn.__name__,
                            type(e).__name__)
            time.sleep(BACKOFF_S * attempt)
            attempt += 1

    return wrapper


def lost_primary_message(what: str) -> str:
    """The one line a step stops with when an election error escaped it."""
    return (f"'{what}' stopped: the database lost its primary while it ran (a replica-set election) "
            "and no other took over in time; run it again")
