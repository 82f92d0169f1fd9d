"""A sample's review state, shared by the App, Label Studio, the CLI and the dashboards.

``review_state`` (a sample field) moves ``to_review`` (flagged) → ``pushed`` (a Label Studio task
exists) → ``answered`` (an answer came back that decided nothing: unsure, a tie) → ``resolved`` (a
decision set the label: a curator's in the App or the CLI, or Label Studio's answer), or
``dismissed`` (a curator confirmed the given label). The review queue (tag and saved view
``to_review``) is the samples in :data:`QUEUED` states.
"""

from __future__ import annotations

FIELD = "review_state"
TO_REVIEW, PUSHED, ANSWERED, RESOLVED, DISMISSED = "to_review", "pushed", "answered", "resolved", "dismissed"
STATES = (TO_REVIEW, PUSHED, ANSWERED, RESOLVED, DISMISSED)
#: the states of a sample that waits for a decision (the ``to_review`` tag and view)
QUEUED = (TO_REVIEW, PUSHED, ANSWERED)
#: the states a decision ends in
DECIDED = (RESOLVED, DISMISSED)
