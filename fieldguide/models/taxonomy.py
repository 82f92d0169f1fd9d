"""The class tree as arrays: per-rank metrics, probabilities rolled up the tree, back-off.

A :class:`ClassTree` maps every class (index ``c`` of the head's classes) to its node at each
rank above it: ``parents[r, c]`` is the index of class ``c``'s ancestor at ``ranks[r]`` (ranks
coarse to fine, e.g. ``("family", "genus")``). A project whose classes carry no ranks has a flat
tree (``ranks == ()``): the metrics then reduce to the class level.

The *levels* of the tree are the class level followed by its ranks from fine to coarse
(``species, genus, family``): the order back-off walks up.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from fieldguide.errors import FieldguideError
from fieldguide.platform.tree import ClassTree as Lineages


@dataclass(frozen=True)
class ClassTree:
    """``classes`` (C,), ``ranks`` coarse to fine (R,), ``nodes[r]`` the names at ``ranks[r]``,
    ``parents`` (R, C) int: the node index of each class at each rank; ``leaf_rank`` names the
    classes' own rank (``species``; ``class`` when unknown)."""

    classes: tuple[str, ...]
    ranks: tuple[str, ...]
    nodes: tuple[tuple[str, ...], ...]
    parents: np.ndarray
    leaf_rank: str = "class"

    @property
    def levels(self) -> tuple[str, ...]:
        """The class level, then the ranks fine to coarse (the way back-off walks up)."""
        return (self.leaf_rank, *reversed(self.ranks))

    def level_index(self, level: int) -> np.ndarray:
        """(C,) node of each class at ``levels[level]`` (the class itself at level 0)."""
        if level == 0:
            return np.arange(len(self.classes))
        return self.parents[len(self.ranks) - level]

    def level_names(self, level: int) -> tuple[str, ...]:
        return self.classes if level == 0 else self.nodes[len(self.ranks) - level]


def flat_tree(classes: Iterable[str]) -> ClassTree:
    """A tree without ranks: every class its own branch."""
    classes = tuple(classes)
    return ClassTree(classes, (), (), np.zeros((0, len(classes)), dtype=int))


def tree_from_lineages(classes: Iterable[str], lineages: Mapping[str, Mapping[str, str]], *,
               ranks: Iterable[str] | None = None, leaf_rank: str = "class") -> ClassTree:
    """The tree of ``classes`` from each class's lineage (class -> {rank: name}, coarse to fine,
    ranks above the class only). ``ranks``: their coarse-to-fine order (default: the order of the
    first lineage that has them). A class lacking a rank is its own node there (it joins no other
    class), so a partial taxonomy never invents a relation."""
    classes = tuple(classes)
    if ranks is None:
        ranks = []
        for lin in lineages.values():
            ranks += [r for r in lin if r not in ranks]
    ranks = tuple(r for r in ranks if r != leaf_rank)
    nodes, parents = [], np.zeros((len(ranks), len(classes)), dtype=int)
    for r, rank in enumerate(ranks):
        names: dict[str, int] = {}
        for c, cls in enumerate(classes):
            name = lineages.get(cls, {}).get(rank) or f"{cls} ({rank} unknown)"
            parents[r, c] = names.setdefault(name, len(names))
        nodes.append(tuple(names))
    return ClassTree(classes, ranks, tuple(nodes), parents, leaf_rank)


def tree_from_taxa(classes: Iterable[str], rows: Iterable[Mapping]) -> ClassTree:
    """The tree of ``classes`` from rows of the warehouse's ``taxa`` table (``class, rank, name,
    depth``): a class's deepest row is its own rank, the rows above it its lineage. No rows: flat."""
    by_class = Lineages.from_rows(rows).lineages  # class -> ((rank, name), ...), coarse to fine
    classes = tuple(classes)
    if not any(c in by_class for c in classes):
        return flat_tree(classes)
    lineages, leaf_ranks, order = {}, [], []
    for cls in classes:
        if not by_class.get(cls):
            continue
        *above, (own_rank, _) = by_class[cls]
        leaf_ranks.append(own_rank)
        lineages[cls] = dict(above)
        order.append(tuple(lineages[cls]))
    leaf = max(set(leaf_ranks), key=leaf_ranks.count)
    ranks: list[str] = []
    for lin in sorted(set(order), key=len, reverse=True):
        for i, rank in enumerate(lin):
            if rank not in ranks:
                later = [ranks.index(r) for r in lin[i + 1:] if r in ranks]
                ranks.insert(min(later) if later else len(ranks), rank)
    return tree_from_lineages(classes, lineages, ranks=ranks, leaf_rank=leaf)


def roll_up(probs: np.ndarray, tree: ClassTree, level: int) -> np.ndarray:
    """(n, C) class probabilities -> (n, nodes at ``levels[level]``): a node's probability is the
    sum of its classes'."""
    if level == 0:
        return probs
    index = tree.level_index(level)
    out = np.zeros((len(probs), len(tree.level_names(level))))
    np.add.at(out.T, index, probs.T)
    return out


def taxonomic_distance(tree: ClassTree, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) levels climbed from classes ``a`` to their common ancestor with ``b``: 0 the same class,
    1 sister classes (same finest rank), ..., ``len(ranks) + 1`` nothing in common below the root."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    dist = np.where(a == b, 0, len(tree.levels))
    for level in range(len(tree.levels) - 1, 0, -1):  # coarse to fine: the finest shared rank wins
        index = tree.level_index(level)
        dist = np.where((a != b) & (index[a] == index[b]), level, dist)
    return dist


def rank_metrics(y: np.ndarray, probs: np.ndarray, tree: ClassTree) -> dict:
    """Per level of the tree (``species``, ``genus``, ...): ``top1_<rank>``, ``macro_f1_<rank>``
    (over the nodes present in ``y``), ``confusion_<rank>`` (nodes x nodes counts of the rolled-up
    argmax); and ``mean_taxonomic_distance`` of the errors (0 when there are none)."""
    y = np.asarray(y, dtype=int)
    if probs.shape != (len(y), len(tree.classes)):
        raise FieldguideError(f"probs: expected shape ({len(y)}, {len(tree.classes)}), got {probs.shape}")
    out: dict = {}
    for level, rank in enumerate(tree.levels):
        truth = tree.level_index(level)[y]
        pred = roll_up(probs, tree, level).argmax(axis=1)
        n_nodes = len(tree.level_names(level))
        out[f"top1_{rank}"] = float((pred == truth).mean())
        with warnings.catch_warnings():  # one node at a coarse rank is a valid (if trivial) case
            warnings.filterwarnings("ignore", message="A single label was found")
            out[f"macro_f1_{rank}"] = float(f1_score(truth, pred, labels=np.unique(truth), average="macro",
                                                     zero_division=0))
            out[f"confusion_{rank}"] = confusion_matrix(truth, pred, labels=np.arange(n_nodes))
    wrong = probs.argmax(axis=1) != y
    dist = taxonomic_distance(tree, y[wrong], probs.argmax(axis=1)[wrong])
    out["mean_taxonomic_distance"] = float(dist.mean()) if wrong.any() else 0.0
    return out


def backoff(probs: np.ndarray, tree: ClassTree, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Back-off prediction: for each row, the finest level whose most probable rolled-up node has
    probability >= ``threshold``. Returns ``(level (n,), node (n,))``; level -1 (node -1) when no
    rank reaches it (the answer is the root: "don't know")."""
    if not 0 <= threshold <= 1:
        raise FieldguideError(f"backoff threshold {threshold}: expected a probability in [0, 1]")
    n = len(probs)
    level, node = np.full(n, -1), np.full(n, -1)
    for lv in range(len(tree.levels)):
        up = roll_up(probs, tree, lv)
        best = up.argmax(axis=1)
        take = (level < 0) & (up[np.arange(n), best] >= threshold - 1e-9)  # sums of floats
        level[take], node[take] = lv, best[take]
    return level, node


def backoff_names(tree: ClassTree, level: np.ndarray, node: np.ndarray) -> list[tuple[str, str] | None]:
    """``(rank, name)`` of each back-off answer, None for "don't know"."""
    return [None if lv < 0 else (tree.levels[lv], tree.level_names(lv)[nd]) for lv, nd in zip(level, node)]


def backoff_metrics(y: np.ndarray, probs: np.ndarray, tree: ClassTree, threshold: float) -> dict:
    """Back-off at ``threshold``: per level, ``backoff_coverage_<rank>`` (share of rows answered at
    that rank) and ``backoff_precision_<rank>`` (share of those answers that hold the true class;
    NaN when none); ``backoff_abstained`` (rows no rank answered) and ``backoff_precision``
    (over all answers)."""
    y = np.asarray(y, dtype=int)
    level, node = backoff(probs, tree, threshold)
    out: dict = {}
    right = np.zeros(len(y), dtype=bool)
    for lv, rank in enumerate(tree.levels):
        at = level == lv
        ok = tree.level_index(lv)[y[at]] == node[at]
        right[at] = ok
        out[f"backoff_coverage_{rank}"] = float(at.mean())
        out[f"backoff_precision_{rank}"] = float(ok.mean()) if at.any() else float("nan")
    answered = level >= 0
    out["backoff_abstained"] = float((~answered).mean())
    out["backoff_precision"] = float(right[answered].mean()) if answered.any() else float("nan")
    return out
