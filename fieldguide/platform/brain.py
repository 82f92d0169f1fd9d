"""FiftyOne Brain signals on stored samples: ``mistakenness`` and ``uniqueness`` as arrays.

Reported by ``flag``, not combined into its score: both repeat what the cleanlab and kNN signals
measure, but curators know them from the App, where they are sample fields to sort and filter by.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def brain_signals(ds, sample_ids: list[str], features: np.ndarray | None) -> dict[str, np.ndarray]:
    """FiftyOne Brain on the samples ``sample_ids`` (in that order): ``mistakenness`` from the
    stored ``prediction`` logits against ``ground_truth``, and ``uniqueness`` from ``features``
    (n, d) aligned with ``sample_ids`` (no model is loaded). Each is an (n,) float array, absent
    when the Brain failed (logged) or, for uniqueness, with no features or 3 samples or fewer."""
    view = ds.select(sample_ids, ordered=True)
    # the Brain logs its progress at INFO through FiftyOne's stdout handler: keep stdout for results
    brain_log = logging.getLogger("fiftyone.brain")
    level = brain_log.level
    brain_log.setLevel(logging.WARNING)
    try:
        return _brain_fields(view, features)
    finally:
        brain_log.setLevel(level)


def _brain_fields(view, features) -> dict[str, np.ndarray]:
    import fiftyone.brain as fob

    out: dict[str, np.ndarray] = {}
    try:
        fob.compute_mistakenness(view, "prediction", label_field="ground_truth", use_logits=True, progress=False)
        out["mistakenness"] = np.array(view.values("mistakenness"), dtype=float)
    except Exception as e:  # noqa: BLE001 - a Brain failure must not lose the other signals
        log.warning("FiftyOne Brain mistakenness not computed: %s", e)
    if features is not None and len(view) > 3:
        try:
            fob.compute_uniqueness(view, embeddings=np.asarray(features, dtype=np.float32), progress=False)
            out["uniqueness"] = np.array(view.values("uniqueness"), dtype=float)
        except Exception as e:  # noqa: BLE001
            log.warning("FiftyOne Brain uniqueness not computed: %s", e)
    return out
