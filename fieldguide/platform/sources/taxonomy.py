"""Taxonomy as data: each sample's ranks (rank -> name, coarse to fine) and the class tree.

The class tree is the warehouse table ``taxa``: one row per class and rank of its lineage,
``(class, rank, name, depth, parent_rank, parent_name)``, the class itself at its own rank. A
label's ancestors are one query (``SELECT rank, name FROM taxa WHERE class = ? ORDER BY depth``),
and a label's name at a rank is one join (``... JOIN taxa t ON t.class = label AND t.rank = 'genus'``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from fieldguide.platform.sources.records import Record

# the ranks iNaturalist exports (taxon_<rank>_name), coarse to fine; Darwin Core's are among them
RANKS = ("kingdom", "phylum", "subphylum", "superclass", "class", "subclass", "superorder", "order",
         "suborder", "superfamily", "family", "subfamily", "supertribe", "tribe", "subtribe", "genus",
         "genushybrid", "species", "hybrid", "subspecies", "variety", "form")


def rank_of(label: str | None, taxonomy: dict[str, str]) -> str | None:
    """The finest rank whose name is ``label``, or None."""
    return next((rank for rank, name in reversed(taxonomy.items()) if name == label), None) if label else None


def lineage(record: Record) -> tuple[tuple[str, str], ...]:
    """The class's ranks, coarse to fine, down to the label's own rank (all ranks when it is not known)."""
    ranks = list(record.taxonomy.items())
    if record.label_rank in record.taxonomy:
        ranks = ranks[: list(record.taxonomy).index(record.label_rank) + 1]
    return tuple(ranks)


def class_tree(records: Iterable[Record]) -> tuple[list[dict], dict[str, str]]:
    """Rows of the ``taxa`` table for the labels of ``records``, and the classes whose rows
    disagree (class -> why; the tree keeps the lineage most rows give, the first on a tie)."""
    seen: dict[str, Counter] = {}
    for record in records:
        if record.label is not None and record.taxonomy:
            seen.setdefault(record.label, Counter())[lineage(record)] += 1
    rows, conflicts = [], {}
    for label, counts in seen.items():
        kept = counts.most_common(1)[0][0]
        if len(counts) > 1:
            conflicts[label] = (f"class {label!r}: {len(counts)} different taxonomies in the source; the class tree "
                                f"keeps the one of {counts[kept]} of {sum(counts.values())} rows: {_show(kept)}")
        parent = (None, None)
        for depth, (rank, name) in enumerate(kept):
            rows.append({"class": label, "rank": rank, "name": name, "depth": depth,
                         "parent_rank": parent[0], "parent_name": parent[1]})
            parent = (rank, name)
    return rows, conflicts


def _show(ranks: tuple[tuple[str, str], ...]) -> str:
    return " > ".join(f"{rank} {name}" for rank, name in ranks)


def rank_order(taxonomies: Iterable[Iterable[str]]) -> list[str]:
    """One coarse-to-fine order of the ranks of several taxonomies (each a coarse-to-fine key list)."""
    order: list[str] = []
    for ranks in dict.fromkeys(tuple(t) for t in taxonomies):
        for i, rank in enumerate(ranks):
            if rank not in order:
                order.insert(_place(order, ranks, i), rank)
    return order


def _place(order: list[str], ranks: tuple[str, ...], i: int) -> int:
    """Where ``ranks[i]`` goes in ``order``: after its coarser neighbour, before its finer ones, and
    for a rank of :data:`RANKS`, before the first finer rank of :data:`RANKS` in between."""
    lo = order.index(ranks[i - 1]) + 1 if i else 0
    finer = [order.index(r) for r in ranks[i + 1:] if r in order]
    hi = max(lo, min(finer)) if finer else len(order)
    if ranks[i] in RANKS:
        level = RANKS.index(ranks[i])
        return next((j for j in range(lo, hi) if order[j] in RANKS and RANKS.index(order[j]) > level), hi)
    return lo if i else hi
