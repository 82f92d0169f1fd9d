"""Taxonomy-aware label quality: the crowd's consensus up the class tree, and each label's ``error_rank``.

The crowd's consensus is cleanlab's (CROWDLAB: the votes weighed by annotator quality and the
model) unless the identifiers disagree below a common ancestor: then it backs off to
iNaturalist's community taxon, the deepest node of the tree that more than 2/3 of the votes fall
in (:meth:`~fieldguide.platform.tree.ClassTree.community_taxon`): votes split 2-2 between two
species of one genus give the genus. The consensus is recorded with its rank.

A label's ``error_rank`` is the coarsest rank at which its lineage and the evidence's differ
(``family`` for a label moved to another family, ``species`` for one moved to a sister species,
``label`` where the tree has no ranks); None where they agree or one lies within the other (a
genus-level consensus over a species of that genus). The evidence is the crowd's consensus where
the sample has votes, else the out-of-sample prediction. ``error_severity`` orders the ranks
(higher: coarser, a worse mistake), so that the review queue can put a label in the wrong family
above one in the wrong species.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fieldguide.platform.tree import ClassTree

ERROR_RANK = "error_rank"
ERROR_SEVERITY = "error_severity"
CONSENSUS_RANK = "consensus_rank"


@dataclass
class TaxonomyEvidence:
    """Per sample (aligned with the inputs): the crowd's consensus and its rank (None without
    votes), the label's ``error_rank`` and ``error_severity`` (NaN where there is no error)."""

    consensus: list[str | None]
    consensus_rank: list[str | None]
    error_rank: list[str | None]
    error_severity: np.ndarray


def taxonomy_evidence(tree: ClassTree, labels: Sequence[str], predicted: Sequence[str | None],
                      votes: Sequence[Sequence[str]], crowd: Sequence[str | None]) -> TaxonomyEvidence:
    """``labels``: the given labels; ``predicted``: the out-of-sample predictions; ``votes``: each
    sample's crowd votes (names, possibly above the classes: a genus); ``crowd``: cleanlab's
    consensus class (None where it gave none). All of length n."""
    if not len(labels) == len(predicted) == len(votes) == len(crowd):
        raise ValueError(f"taxonomy_evidence: inputs of lengths {len(labels)}, {len(predicted)}, {len(votes)}, "
                         f"{len(crowd)}; expected one length")
    consensus: list[str | None] = []
    for cons, names in zip(crowd, votes):
        community = tree.community_taxon(list(names)) if names else None
        consensus.append(community[0] if community is not None and community[0] not in names else cons)
    evidence = [c if v and c is not None else p for c, v, p in zip(consensus, votes, predicted)]
    ranks = tree.error_ranks(list(labels), evidence)
    severity = np.array([np.nan if r is None else tree.severity(r) for r in ranks], dtype=float)
    return TaxonomyEvidence(consensus=consensus, consensus_rank=[tree.rank_of(c) if c else None for c in consensus],
                            error_rank=ranks, error_severity=severity)
