"""FiftyOne Brain signals on stored samples: ``mistakenness`` and ``uniqueness`` as arrays.

Reported by ``flag``, not combined into its score: both repeat what the cleanlab and kNN signals
measure, but curators know them from the App, where they are sample fields to sort and filter by.
Uniqueness is the Brain's formula computed by ``flag`` on the shared kNN graph
(:func:`fieldguide.curation.knn_graph.uniqueness`): the Brain's own ``compute_uniqueness`` would
search all neighbours again, brute force; here it is only written to the samples.
"""

from __future__ import annotations

import logging

import numpy as np

from fieldguide.platform.fields import write_values

log = logging.getLogger(__name__)


def brain_signals(ds, sample_ids: list[str], uniqueness: np.ndarray | None, *,
                  mistakenness: bool = True) -> dict[str, np.ndarray]:
    """FiftyOne Brain on the samples ``sample_ids`` (in that order): ``mistakenness`` from the
    stored ``prediction`` logits against ``ground_truth``, absent when the Brain failed (logged) or
    when ``mistakenness`` is False (flag past ``curation.brain_mistakenness_max`` samples);
    ``uniqueness`` (n,) aligned with ``sample_ids``, when given, is written to the samples' field
    ``uniqueness`` and returned. Each is an (n,) float array."""
    view = ds.select(sample_ids, ordered=True)
    # the Brain logs its progress at INFO through FiftyOne's stdout handler: keep stdout for results
    brain_log = logging.getLogger("fiftyone.brain")
    level = brain_log.level
    brain_log.setLevel(logging.WARNING)
    try:
        out = _brain_fields(view) if mistakenness else {}
    finally:
        brain_log.setLevel(level)
    if not mistakenness:
        log.info("FiftyOne Brain mistakenness left out: %d samples, over curation.brain_mistakenness_max", len(sample_ids))
    if uniqueness is not None:
        write_values(ds, {"uniqueness": {sid: float(u) for sid, u in zip(sample_ids, uniqueness)}})
        out["uniqueness"] = np.asarray(uniqueness, dtype=float)
    return out


def _brain_fields(view) -> dict[str, np.ndarray]:
    import fiftyone.brain as fob

    out: dict[str, np.ndarray] = {}
    try:
        fob.compute_mistakenness(view, "prediction", label_field="ground_truth", use_logits=True, progress=False)
        out["mistakenness"] = np.array(view.values("mistakenness"), dtype=float)
    except Exception as e:  # noqa: BLE001 - a Brain failure must not lose the other signals
        log.warning("FiftyOne Brain mistakenness not computed: %s", e)
    return out
