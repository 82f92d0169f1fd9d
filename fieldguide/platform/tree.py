"""The class tree (the warehouse's ``taxa``) and the questions curation asks of it.

- :meth:`ClassTree.error_rank`: the coarsest rank at which two names' lineages differ (a label
  moved to another family errs at ``family``, one moved to a sister species at ``species``);
- :meth:`ClassTree.community_taxon`: iNaturalist's community taxon of several identifications,
  the deepest node that more than 2/3 of them fall in (votes split 2-2 between two species of
  one genus give the genus);
- :meth:`ClassTree.new_class_rows`: the ``taxa`` rows of a class a curator names that no class
  covers (a binomial under its genus when the genus is known).

A name is a class or an inner node of the tree (a genus, a family, ...). A class without ranks
(a project whose classes carry none has a flat tree) stands alone at :data:`LABEL_RANK`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from fieldguide.config import Project
from fieldguide.platform.sources.taxonomy import rank_order

#: the rank of a name the tree does not place (a class of a flat tree, a name outside the tree)
LABEL_RANK = "label"
#: iNaturalist's community taxon: more than this share of the identifications must agree
COMMUNITY_SHARE = 2 / 3

Lineage = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ClassTree:
    """``lineages``: class -> ((rank, name), ...) coarse to fine, ending at the class."""

    lineages: Mapping[str, Lineage] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping]) -> ClassTree:
        """From rows of ``taxa`` (``class``, ``rank``, ``name``, ``depth``)."""
        by_class: dict[str, list[tuple[int, str, str]]] = {}
        for r in rows:
            by_class.setdefault(r["class"], []).append((int(r["depth"]), r["rank"], r["name"]))
        return cls({c: tuple((rank, name) for _, rank, name in sorted(v)) for c, v in by_class.items()})

    @cached_property
    def ranks(self) -> tuple[str, ...]:
        """The tree's ranks, coarse to fine, then :data:`LABEL_RANK`."""
        order = rank_order([rank for rank, _ in lineage] for lineage in self.lineages.values())
        return (*order, LABEL_RANK)

    @cached_property
    def _nodes(self) -> dict[str, Lineage]:
        nodes: dict[str, Lineage] = {}
        for lineage in self.lineages.values():
            for i, (_, name) in enumerate(lineage):
                nodes.setdefault(name, lineage[: i + 1])
        return nodes

    def lineage(self, name: str, nodes: Mapping[str, Lineage] | None = None) -> Lineage:
        """``name``'s lineage, coarse to fine: a class's, an inner node's, or ``((LABEL_RANK, name),)``."""
        if name in self.lineages:
            return self.lineages[name]
        return (nodes if nodes is not None else self._nodes).get(name) or ((LABEL_RANK, name),)

    def rank_of(self, name: str) -> str:
        return self.lineage(name)[-1][0]

    def is_inner(self, name: str) -> bool:
        """Whether ``name`` is a node above the classes (a genus, a family, ...) and no class itself."""
        return name not in self.lineages and name in self._nodes

    def paths(self) -> dict[str, list[str]]:
        """class -> names from the coarsest rank down to the class."""
        return {c: [name for _, name in lineage] for c, lineage in self.lineages.items()}

    def error_rank(self, given: str | None, evidence: str | None, nodes: Mapping[str, Lineage] | None = None) -> str | None:
        """The coarsest rank at which ``given`` and ``evidence`` differ; None when either is None or
        one lies within the other (a species and its genus do not disagree); :data:`LABEL_RANK`
        when they differ and share no rank (a flat tree)."""
        if given is None or evidence is None or given == evidence:
            return None
        nodes = nodes if nodes is not None else self._nodes
        a, b = self.lineage(given, nodes), dict(self.lineage(evidence, nodes))
        shared = False
        for rank, name in a:
            if rank in b:
                if b[rank] != name:
                    return rank
                shared = True
        return None if shared else LABEL_RANK

    def error_ranks(self, given: Sequence[str | None], evidence: Sequence[str | None]) -> list[str | None]:
        """:meth:`error_rank` of each pair."""
        nodes = self._nodes
        return [self.error_rank(g, e, nodes) for g, e in zip(given, evidence)]

    def severity(self, rank: str | None) -> float | None:
        """How coarse an error at ``rank`` is: 1 at :data:`LABEL_RANK`, +1 per rank above (None: no error)."""
        if rank is None:
            return None
        ranks = self.ranks
        return float(len(ranks) - ranks.index(rank)) if rank in ranks else 1.0

    def community_taxon(self, votes: Sequence[str], share: float = COMMUNITY_SHARE) -> tuple[str, str] | None:
        """The deepest node (name, rank) that more than ``share`` of ``votes`` fall in (a vote falls in
        its own name and every ancestor); None when no node has that support (no votes, or they
        share no ancestor)."""
        votes = [v for v in votes if v]
        if not votes:
            return None
        nodes = self._nodes
        support: Counter = Counter()
        for v in votes:
            support.update(set(self.lineage(v, nodes)))
        ranks = self.ranks
        backed = [node for node, n in support.items() if n > share * len(votes)]
        if not backed:
            return None
        rank, name = max(backed, key=lambda node: ranks.index(node[0]) if node[0] in ranks else -1)
        return name, rank

    def new_class_rows(self, name: str) -> list[dict]:
        """``taxa`` rows for a new class ``name``: a binomial whose first word is a genus of the tree
        goes under it, at the rank of that genus's classes; otherwise none (the class stands alone)."""
        if name in self.lineages:
            return []
        nodes = self._nodes
        genus = nodes.get(name.split(" ")[0]) if " " in name else None
        if genus is None or genus[-1][0] != "genus":
            return []
        below = Counter(lin[len(genus)][0] for lin in self.lineages.values()
                        if len(lin) > len(genus) and lin[: len(genus)] == genus)
        rank = below.most_common(1)[0][0] if below else "species"
        lineage = (*genus, (rank, name))
        rows, parent = [], (None, None)
        for depth, (r, n) in enumerate(lineage):
            rows.append({"class": name, "rank": r, "name": n, "depth": depth,
                         "parent_rank": parent[0], "parent_name": parent[1]})
            parent = (r, n)
        return rows


def class_tree(project: Project) -> ClassTree:
    """The project's class tree from the warehouse's ``taxa`` (empty when it has none)."""
    from fieldguide.platform.taxa import read_taxa

    if not project.warehouse_path.exists():
        return ClassTree()
    return ClassTree.from_rows(read_taxa(project))
