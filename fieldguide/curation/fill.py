"""``fieldguide fill``: pseudo-labels and diffusion augmentation for the classes under a count."""

from __future__ import annotations

from fieldguide.config import Project
from fieldguide.errors import ConfigError, NotReadyError
from fieldguide.platform import store
from fieldguide.platform.lock import writes


@writes('fill')
def fill(project: Project, *, min_per_class: int | None = None, threshold: float | None = None) -> list[str]:
    """Run both fillers for the scarce classes; returns report lines (per class: synthetic images
    added, pseudo-labels pending a curator's review, candidates rejected by the filters).

    ``min_per_class`` defaults to ``curation.scarce_class_count``, ``threshold`` to
    ``pseudolabel.threshold``."""
    from fieldguide.curation.augment import augment, scarce_classes
    from fieldguide.curation.pseudolabel import pseudolabel
    from fieldguide.models.embed import embed

    min_per_class = min_per_class or project.config.curation.scarce_class_count
    ds = store.dataset(project, create=False)
    scarce = scarce_classes(project, ds, min_per_class)
    lines = [f"{len(scarce)} classes with fewer than {min_per_class} labeled training samples"]
    if not scarce:
        return lines
    pending: dict[str, int] = {}
    try:
        rep = pseudolabel(project, threshold=threshold)
        pending = {c: n for c, n in rep.per_class.items() if c in scarce}
        if rep.abstained:
            lines.append(f"pseudo-labels: abstained ({rep.reason}; pseudolabel --no-abstain writes them anyway)")
    except NotReadyError as e:
        lines.append(f"pseudo-labels: skipped ({e})")
    added, rejected = {}, {}
    try:
        arep = augment(project, classes=scarce)
        added = {c: f.kept for c, f in arep.classes.items()}
        rejected = {c: f.rejected_semantic + f.rejected_classifier for c, f in arep.classes.items()}
        embed(project)  # the synthetic images join the embedding cache (training mixes them in)
    except ConfigError as e:
        lines.append(f"augmentation: skipped ({e})")
    for c in scarce:
        lines.append(f"  {c}: added {added.get(c, 0)} synthetic, {pending.get(c, 0)} pseudo-labels pending review, "
                     f"rejected {rejected.get(c, 0)}")
    return lines
