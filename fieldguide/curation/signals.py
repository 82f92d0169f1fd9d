"""Label-issue signals as functions of arrays, looked up in a registry.

A signal is registered with ``@register_signal(name, noisy_when={output: "high"|"low"})`` and is
a function ``fn(inputs: SignalInputs) -> dict[str, np.ndarray]`` returning one or more
per-sample arrays aligned with ``inputs`` (NaN where it cannot say anything); ``noisy_when`` says
which end of each array means "probably mislabeled". A name registered twice raises. Each
output's share in the combined noise score is configuration (``signals.weights`` in
fieldguide.toml; an output without a weight is reported, not combined), checked against the
registered outputs by :func:`check_weights`. A later signal (the entropy trajectories of
noise-tolerant training) plugs in by registering itself; nothing else changes.

Every signal uses the libraries' own APIs: cleanlab's ``filter.find_label_issues`` and
``rank.get_label_quality_scores`` (``experimental.label_issues_batched.find_label_issues_batched``
when pred_probs exceed ``SignalInputs.pred_probs_budget_mb``), ``Datalab``,
``multiannotator.get_label_quality_multiannotator``. The signals that read neighbours (kNN
disagreement, Datalab) share one graph, built once with FAISS (:mod:`fieldguide.curation.knn_graph`)
on first use: :meth:`SignalInputs.neighbours`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fieldguide import names
from fieldguide.curation.knn_graph import GraphSettings, KnnGraph, build_knn_graph
from fieldguide.errors import ConfigError
from fieldguide.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class SignalInputs:
    """What signals read, for the assessable samples only (all arrays aligned, length n).

    labels: (n,) given class indices in [0, K); pred_probs: (n, K) out-of-sample probabilities;
    features: (n, d) embeddings or None; votes: a (n, A) DataFrame of annotator class indices
    (NaN where an annotator did not vote) or None; extra: arrays from other steps (by name).
    knn_k: neighbours of the kNN signal; graph: how the shared kNN graph is built; knn_graph: that
    graph, given or built on first use (:meth:`neighbours`); pred_probs_budget_mb: above this size
    cleanlab reads pred_probs in batches (``find_label_issues_batched``).
    """

    labels: np.ndarray
    pred_probs: np.ndarray
    features: np.ndarray | None = None
    votes: pd.DataFrame | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    knn_k: int = 10
    graph: GraphSettings = field(default_factory=GraphSettings)
    knn_graph: KnnGraph | None = None
    pred_probs_budget_mb: float = 2048.0

    def neighbours(self) -> KnnGraph:
        """The shared kNN graph of ``features`` (at least ``knn_k`` and Datalab's 10 neighbours per
        sample), built once; raises :class:`SignalUnavailable` without features or with fewer than 2."""
        if self.knn_graph is None:
            if self.features is None:
                raise SignalUnavailable("no features")
            n = len(self.features)
            if n < 2:
                raise SignalUnavailable("fewer than 2 samples")
            self.knn_graph = build_knn_graph(self.features, min(max(self.knn_k, DATALAB_K), n - 1), self.graph)
        return self.knn_graph


@dataclass
class SignalSpec:
    name: str
    fn: Callable[[SignalInputs], dict[str, np.ndarray]]
    noisy_when: dict[str, str]


_SIGNALS: Registry[SignalSpec] = Registry("signal")


def register_signal(name: str, *, noisy_when: dict[str, str] | None = None):
    """Register a signal function; ``noisy_when`` is per output array name."""

    def deco(fn):
        _SIGNALS.add(name, SignalSpec(name, fn, noisy_when or {}))
        return fn

    return deco


def registered_signals() -> dict[str, SignalSpec]:
    return dict(_SIGNALS)


def compute_signals(inputs: SignalInputs, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run the registered signals (or ``names``); a signal that cannot run is logged and left out."""
    out: dict[str, np.ndarray] = {}
    for name, spec in _SIGNALS.items():
        if names is not None and name not in names:
            continue
        try:
            result = spec.fn(inputs)
        except SignalUnavailable as e:
            log.info("signal %s not computed: %s", name, e)
            continue
        for key, arr in result.items():
            arr = np.asarray(arr, dtype=float)
            if arr.shape != (len(inputs.labels),):
                raise ValueError(f"signal {name}.{key}: expected shape ({len(inputs.labels)},), got {arr.shape}")
            out[key] = arr
    return out


def directions() -> dict[str, str]:
    """Output name -> which end means "probably mislabeled", over every registered signal."""
    direction: dict[str, str] = {}
    for spec in _SIGNALS.values():
        direction.update(spec.noisy_when)
    return direction


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` (output name -> share in the noise score), each name an output of a registered signal."""
    known = directions()
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ConfigError(f"signals.weights: {', '.join(map(repr, unknown))} is not a signal output "
                          f"(known: {', '.join(sorted(known))}); fix it in fieldguide.toml")
    return dict(weights)


class SignalUnavailable(Exception):
    """The inputs this signal needs are absent (no votes, no features, ...)."""


# ---- cleanlab ---------------------------------------------------------------------------------------
@register_signal("cleanlab", noisy_when={names.LABEL_QUALITY: "low", names.CL_ISSUE: "high"})
def cleanlab_signal(inp: SignalInputs) -> dict[str, np.ndarray]:
    """Confident learning: self-confidence label quality and the confident-joint issue set."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if inp.pred_probs.nbytes > inp.pred_probs_budget_mb * 2**20:
        return _cleanlab_batched(inp.labels, inp.pred_probs, inp.pred_probs_budget_mb)
    quality = get_label_quality_scores(inp.labels, inp.pred_probs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issues = find_label_issues(inp.labels, inp.pred_probs)
    return {names.LABEL_QUALITY: quality, names.CL_ISSUE: issues.astype(float)}


def _cleanlab_batched(labels: np.ndarray, pred_probs: np.ndarray, budget_mb: float) -> dict[str, np.ndarray]:
    """cleanlab's low-memory path: pred_probs (a NumPy array or memmap) read in row batches of
    about a tenth of the budget; the issue set is ``find_label_issues_batched``'s (low
    self-confidence, close to ``find_label_issues``' on large data)."""
    from cleanlab.experimental.label_issues_batched import find_label_issues_batched
    from cleanlab.rank import get_label_quality_scores

    batch = max(1000, int(budget_mb * 2**20 / 10 / max(pred_probs[:1].nbytes, 1)))
    log.info("pred_probs %.0f MB over the %.0f MB budget: cleanlab in batches of %d rows",
             pred_probs.nbytes / 2**20, budget_mb, batch)
    quality = np.concatenate([get_label_quality_scores(labels[i:i + batch], np.asarray(pred_probs[i:i + batch]))
                              for i in range(0, len(labels), batch)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        issues = find_label_issues_batched(labels, pred_probs, batch_size=batch, verbose=False, return_mask=True)
    return {names.LABEL_QUALITY: quality, names.CL_ISSUE: issues.astype(float)}


# ---- kNN label disagreement -----------------------------------------------------------------------------
@register_signal("knn", noisy_when={names.KNN_DISAGREEMENT: "high"})
def knn_signal(inp: SignalInputs) -> dict[str, np.ndarray]:
    """Share of a sample's k nearest neighbours (cosine, itself excluded) whose label differs,
    read from the shared graph (:meth:`SignalInputs.neighbours`)."""
    graph = inp.neighbours()
    idx = graph.first(min(inp.knn_k, graph.k)).indices
    found = idx >= 0
    differs = (inp.labels[np.where(found, idx, 0)] != inp.labels[:, None]) & found
    return {names.KNN_DISAGREEMENT: differs.sum(axis=1) / np.maximum(found.sum(axis=1), 1)}


# ---- Datalab -------------------------------------------------------------------------------------------
DATALAB_ISSUES = ("outlier", "near_duplicate", "non_iid", "class_imbalance", "underperforming_group")
DATALAB_K = 10  # the neighbours Datalab's issue managers read by default


@register_signal("datalab", noisy_when={names.DATALAB_LABEL_SCORE: "low",
                                        **{names.issue_score(t): "low" for t in DATALAB_ISSUES}})
def datalab_signal(inp: SignalInputs) -> dict[str, np.ndarray]:
    """cleanlab's Datalab on the shared kNN graph of the embeddings (given as ``knn_graph``): label,
    outlier, near-duplicate, non-iid, imbalance, groups.

    Returns each issue's score (low = more severe), ``is_<issue>`` booleans, and
    ``near_duplicate_of`` (the index of the nearest near-duplicate, NaN if none).
    """
    from cleanlab import Datalab

    knn_graph = inp.neighbours().csr()
    lab = Datalab(data={"label": inp.labels}, label_name="label", verbosity=0)
    issue_types = {"label": {}, **{t: {} for t in DATALAB_ISSUES}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab.find_issues(knn_graph=knn_graph, pred_probs=inp.pred_probs, issue_types=issue_types)
    issues = lab.get_issues()
    out: dict[str, np.ndarray] = {}
    for t in ("label", *DATALAB_ISSUES):
        if f"{t}_score" in issues:
            out[names.DATALAB_LABEL_SCORE if t == "label" else names.issue_score(t)] = issues[f"{t}_score"].to_numpy()
            out[names.issue_flag(t)] = issues[f"is_{t}_issue"].to_numpy().astype(float)
    dup = np.full(len(inp.labels), np.nan)
    try:
        sets = lab.get_issues("near_duplicate")["near_duplicate_sets"]
        for i, members in enumerate(sets):
            if len(members):
                dup[i] = float(members[0])
    except (KeyError, ValueError):
        pass
    out["near_duplicate_of"] = dup
    return out


# ---- crowd votes -------------------------------------------------------------------------------------
@register_signal("multiannotator", noisy_when={names.CONSENSUS_QUALITY: "low", names.CONSENSUS_DISAGREES: "high"})
def multiannotator_signal(inp: SignalInputs) -> dict[str, np.ndarray]:
    """Consensus of the crowd votes on the samples that have any (NaN elsewhere), from one annotator up.

    Returns ``consensus_label`` (a class index), ``consensus_quality`` (0..1, low = the consensus is
    doubtful), ``annotator_agreement`` (share of a sample's votes that match the consensus; NaN where
    a sample has fewer than 2 votes: one vote has nobody to agree with) and ``consensus_disagrees``
    (1 where the consensus differs from the given label). Per-annotator quality goes to
    ``inp.extra["annotator_stats"]`` (cleanlab's columns ``annotator_quality``,
    ``agreement_with_consensus``, ``num_examples_labeled``).

    When some sample has 2 or more votes, cleanlab's ``get_label_quality_multiannotator`` (CROWDLAB)
    decides. When no sample does (one annotator, or annotators on disjoint samples), each sample's
    one vote is its consensus and its quality is the model's agreement with that label
    (``rank.get_label_quality_scores``); an annotator's quality is the mean of those, and their
    agreement with the consensus is NaN (it would be 1 by construction). Votes that are not a class
    index in ``[0, K)`` are ignored.
    """
    votes = _known_class_votes(inp.votes, inp.pred_probs.shape[1])
    voted = votes.notna().any(axis=1).to_numpy()
    votes = votes[voted]
    votes = votes.loc[:, votes.notna().any(axis=0)].reset_index(drop=True)
    probs = inp.pred_probs[voted]
    if (votes.notna().sum(axis=1) >= 2).any():
        consensus, quality, stats = _crowd_consensus(votes, probs)
    else:
        consensus, quality, stats = _single_vote_consensus(votes, probs)
    inp.extra["annotator_stats"] = stats  # per-annotator quality, picked up by the flag step
    return {names.CONSENSUS_QUALITY: _spread(quality, voted), names.CONSENSUS_LABEL: _spread(consensus, voted),
            names.ANNOTATOR_AGREEMENT: _spread(_agreement(votes, consensus), voted),
            names.CONSENSUS_DISAGREES: _spread((consensus != inp.labels[voted]).astype(float), voted)}


def _known_class_votes(votes: pd.DataFrame | None, n_classes: int) -> pd.DataFrame:
    """``votes`` as floats, NaN where a vote is not a class index in ``[0, n_classes)``."""
    if votes is None:
        raise SignalUnavailable("no crowd votes")
    values = votes.apply(pd.to_numeric, errors="coerce").astype(float)
    known = (values >= 0) & (values < n_classes) & (values == np.floor(values))
    unknown = int((votes.notna() & ~known).to_numpy().sum())
    if unknown:
        log.warning("%d crowd votes for a class the predictions do not know are ignored", unknown)
    values = values.where(known)
    if values.notna().sum().sum() == 0:
        raise SignalUnavailable("no crowd votes for a known class")
    return values


def _crowd_consensus(votes: pd.DataFrame, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """cleanlab's CROWDLAB: consensus labels, their quality and per-annotator stats."""
    from cleanlab.multiannotator import get_label_quality_multiannotator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "annotators do not agree on any example": the scores say so
        res = get_label_quality_multiannotator(votes, probs, verbose=False)
    lq = res["label_quality"]
    return (lq["consensus_label"].to_numpy(dtype=float), lq["consensus_quality_score"].to_numpy(dtype=float),
            res["annotator_stats"])


def _single_vote_consensus(votes: pd.DataFrame, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """One vote per sample: the vote is the consensus, the model's agreement with it its quality."""
    from cleanlab.rank import get_label_quality_scores

    consensus = votes.max(axis=1).to_numpy(dtype=float)  # the row's only vote
    quality = get_label_quality_scores(consensus.astype(int), probs)
    stats = pd.DataFrame({
        "annotator_quality": [float(quality[votes[a].notna().to_numpy()].mean()) for a in votes.columns],
        "agreement_with_consensus": np.nan,
        "num_examples_labeled": votes.notna().sum(axis=0).to_numpy(dtype=int),
    }, index=votes.columns)
    return consensus, quality, stats.sort_values("annotator_quality")


def _agreement(votes: pd.DataFrame, consensus: np.ndarray) -> np.ndarray:
    """Share of each sample's votes equal to its consensus; NaN where it has fewer than 2 votes."""
    counts = votes.notna().sum(axis=1).to_numpy()
    agree = votes.eq(consensus, axis=0).sum(axis=1).to_numpy()
    return np.where(counts >= 2, agree / np.maximum(counts, 1), np.nan)


def _spread(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values`` (one per True of ``mask``) at the True positions of a NaN array of ``mask``'s length."""
    out = np.full(len(mask), np.nan)
    out[mask] = values
    return out


# ---- training trajectories (noise-tolerant training) ----------------------------------------------------------
# its weight (signals.weights.entropy_aum, 0.1 by default) is a second opinion's: see config/sections.py
@register_signal("entropy", noisy_when={names.ENTROPY_AUM: "low", names.ENTROPY_AGREEMENT: "low",
                                        names.ENTROPY_MEAN: "high"})
def entropy_signal(inp: SignalInputs) -> dict[str, np.ndarray]:
    """Per-sample trajectories of a two-stage entropy (or CE / GRPO) training run, summarised:
    the area under the margin of the given label (``entropy_aum``; low = the model kept
    disagreeing with the label), the share of epochs whose prediction agreed with it, and the
    mean entropy. ``inp.extra`` holds them as ``aum``, ``agreement``, ``mean_entropy`` (NaN for
    samples the run did not train on)."""
    if "aum" not in inp.extra:
        raise SignalUnavailable("no training trajectories (run 'fieldguide train')")
    aum = np.asarray(inp.extra["aum"], dtype=float)
    if np.isnan(aum).all():
        raise SignalUnavailable("the training run saw none of these samples")
    return {names.ENTROPY_AUM: aum, names.ENTROPY_AGREEMENT: np.asarray(inp.extra["agreement"], dtype=float),
            names.ENTROPY_MEAN: np.asarray(inp.extra["mean_entropy"], dtype=float)}
