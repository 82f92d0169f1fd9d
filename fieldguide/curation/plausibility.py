"""The ``metadata_plausibility`` signal: is the given label plausible at the sample's date and place?

A label moved to a species that flowers in another season, or lives on another continent, is
unlikely under the spatio-temporal prior p(class | date, place) of
:class:`fieldguide.models.metadata.KdePrior`, whatever the image looks like. The prior is fitted on
the assessed samples' given labels and read leave-one-out (a sample's own label never supports
itself); the signal is ``log p(given | m) - max_c log p(c | m)``: 0 where the given label is the
most plausible class there, more negative the less plausible it is (noisy when low). NaN where a
sample has neither a date nor a place. ``flag`` passes the encoded metadata as
``SignalInputs.extra["metadata"]`` (rows of :data:`fieldguide.models.metadata.COLUMNS`) when the
samples have dates or places; without them the signal is not computed.
"""

from __future__ import annotations

import numpy as np

from fieldguide import names
from fieldguide.curation.signals import SignalInputs, SignalUnavailable, register_signal
from fieldguide.models import metadata as md
from fieldguide.platform import samples

#: the ``SignalInputs.extra`` key of the encoded metadata
METADATA = "metadata"


def label_plausibility(M: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``log p(labels | M) - max_c log p(c | M)`` under the leave-one-out KDE prior fitted on
    ``(M, labels)``; shape (n,), values <= 0, NaN where a row has neither a date nor a place.

    Args:
        M: (n, len(COLUMNS)) encoded metadata (:func:`fieldguide.models.metadata.encode`).
        labels: (n,) given class indices in ``[0, n_classes)``.
    """
    M, labels = np.asarray(M, dtype=float), np.asarray(labels, dtype=int)
    if M.shape != (len(labels), len(md.COLUMNS)):
        raise ValueError(f"metadata: expected shape ({len(labels)}, {len(md.COLUMNS)}), got {M.shape}")
    known = (M[:, md.COLUMNS.index("day_missing")] == 0) | (M[:, md.COLUMNS.index("geo_missing")] == 0)
    out = np.full(len(labels), np.nan)
    if known.sum() < 2:
        return out
    prior = md.KdePrior().fit(M[known], labels[known])
    logp = np.full((int(known.sum()), n_classes), -np.inf)
    logp[:, prior.classes_] = np.log(prior.loo_proba())
    out[known] = logp[np.arange(len(logp)), labels[known]] - logp.max(axis=1)
    return out


@register_signal("metadata_plausibility", noisy_when={names.METADATA_PLAUSIBILITY: "low"})
def metadata_plausibility_signal(inp: SignalInputs) -> dict[str, np.ndarray]:
    """See the module docstring."""
    if METADATA not in inp.extra:
        raise SignalUnavailable("no dates or places")
    values = label_plausibility(inp.extra[METADATA], inp.labels, inp.pred_probs.shape[1])
    if np.isnan(values).all():
        raise SignalUnavailable("no sample has a date or a place")
    return {names.METADATA_PLAUSIBILITY: values}


def metadata_inputs(ds, ids: list[str], mode: str) -> dict[str, np.ndarray]:
    """``{METADATA: encoded metadata of the samples ids, in that order}`` for ``SignalInputs.extra``
    when ``mode`` is ``auto`` and some of them have a date or a place; else ``{}``."""
    from fieldguide.models.predict import metadata_fields, metadata_matrix, prior_groups

    fields = metadata_fields(ds, mode)
    if not fields or not ids:
        return {}
    M = metadata_matrix(samples.arrays(ds, fields, ids=ids), fields)
    return {METADATA: M} if prior_groups(M) else {}
