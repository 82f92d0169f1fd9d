"""The names steps write to the warehouse and the dashboards read: signals, metrics and curves.

One source for both sides: a writer (``flag``, ``train``, ``evaluate``) names a row with these
constants and a reader (the dashboards, the tests) asks for the same constant, so a renamed
signal breaks loudly instead of leaving a page empty.
"""

from __future__ import annotations

# ---- signals: the ``signal`` column of the warehouse's ``signals`` table ------------------------------
NOISE_SCORE = "noise_score"  # the combined score (higher: more likely mislabeled)
LABEL_ISSUE = "label_issue"  # 0/1: in the review queue (the top of noise_score)
LABEL_QUALITY = "label_quality"  # cleanlab self-confidence (low: doubtful label)
CL_ISSUE = "cl_issue"  # 0/1: cleanlab's confident-joint issue set
KNN_DISAGREEMENT = "knn_disagreement"
DATALAB_LABEL_SCORE = "datalab_label_score"
CONSENSUS_QUALITY = "consensus_quality"
CONSENSUS_LABEL = "consensus_label"
CONSENSUS_DISAGREES = "consensus_disagrees"  # 0/1
ANNOTATOR_AGREEMENT = "annotator_agreement"
ENTROPY_AUM = "entropy_aum"
ENTROPY_AGREEMENT = "entropy_agreement"
ENTROPY_MEAN = "entropy_mean"
METADATA_PLAUSIBILITY = "metadata_plausibility"  # log p(given | date, place) - max over classes (low: doubtful)
ERROR_COST = "error_cost"  # expected cost of keeping the given label (classes.costs; 0/1: 1 - p(given))
COST_PRIORITY = "cost_priority"  # noise_score x error_cost: the review queue's ``cost`` order


def issue_score(issue: str) -> str:
    """The score signal of a Datalab issue type (``outlier`` -> ``outlier_score``; low: more severe)."""
    return f"{issue}_score"


def issue_flag(issue: str) -> str:
    """The 0/1 signal of a Datalab issue type (``outlier`` -> ``is_outlier``), Datalab's ``is_<issue>_issue``."""
    return f"is_{issue}"


OUTLIER_SCORE = issue_score("outlier")
IS_OUTLIER = issue_flag("outlier")
NEAR_DUPLICATE_SCORE = issue_score("near_duplicate")
IS_NEAR_DUPLICATE = issue_flag("near_duplicate")

#: signals whose values are 0/1 flags (the rest are scores)
FLAG_SIGNALS = (LABEL_ISSUE, CL_ISSUE, CONSENSUS_DISAGREES, issue_flag("label"), IS_OUTLIER, IS_NEAR_DUPLICATE,
                issue_flag("non_iid"), issue_flag("class_imbalance"), issue_flag("underperforming_group"))

# ---- metrics: the ``name`` column of ``metrics`` -------------------------------------------------------
N = "n"
TOP1, TOP5, MACRO_F1, ECE, COST_SCORE = "top1", "top5", "macro_f1", "ece", "cost_score"
#: what ``evaluate`` (and a training run with a test split) writes for the split it scores
HEADLINE_METRICS = (N, TOP1, TOP5, MACRO_F1, ECE, COST_SCORE)
#: evaluate: how many of the split's labels a review changed since ingest (a moved baseline)
LABELS_CHANGED = "labels_changed"
PARAMS, MACS, IMAGES_PER_S = "params", "macs", "images_per_s"
#: a backbone's cost, written by ``evaluate`` under the split :data:`COST_SPLIT`
COST_METRICS = (PARAMS, MACS, IMAGES_PER_S)
COST_SPLIT = "cost"
# the ``flag`` run's counts (split ``all``)
ASSESSED, NOT_ASSESSABLE = "assessed", "not_assessable"
FLAGGED, OUTLIERS, NEAR_DUPLICATES = "flagged", "outliers", "near_duplicates"
#: the review queue after a flag run (fieldguide.platform.review.requeue)
QUEUED, KEPT_DECIDED, TEST_LEFT_OUT = "queued", "kept_decided", "test_left_out"
SECONDS = "seconds"  # a training run's wall time (split ``all``)

# ---- bench backbones: one ``bench_backbone`` run per backbone (fieldguide.models.backbone_bench) ----------------
BENCH_BACKBONE = "bench_backbone"  # the run kind
#: splits of its metrics besides ``test`` (and ``test:<rank>``, the predictions read at a taxonomy rank)
EMBEDDING_SPLIT, GRADIENTS_SPLIT = "embedding", "gradients"
KNN_TOP1, SILHOUETTE, ALIGNMENT, UNIFORMITY, DISTANCE_RATIO = (
    "knn_top1", "silhouette", "alignment", "uniformity", "distance_ratio")
EMBEDDING_METRICS = (KNN_TOP1, SILHOUETTE, ALIGNMENT, UNIFORMITY, DISTANCE_RATIO)
FLOPS, PEAK_MEMORY_MB = "flops", "peak_memory_mb"
#: its ``cost`` split: the evaluate run's cost metrics and these
BACKBONE_COST_METRICS = (PARAMS, MACS, FLOPS, IMAGES_PER_S, PEAK_MEMORY_MB)
GRAD_NORM_MEAN, GRAD_EARLY_SHARE = "grad_norm_mean", "grad_early_share"
#: its gradient norms in ``curves``: ``grad_norm:<block>`` per fine-tuning step
GRAD_NORM_PREFIX = "grad_norm:"

# ---- curves: the ``name`` column of ``curves`` (one value per training epoch) -----------------------------
LOSS = "loss"
TRAIN_ACC = "train_acc"  # accuracy on the training samples' given labels
EVAL_ACC = "eval_acc"  # accuracy on the test split, when the project has one
MEAN_ENTROPY = "mean_entropy"
LAMBDA = "lambda"  # λ(t) of two-stage entropy training
CURVES = (LOSS, TRAIN_ACC, MEAN_ENTROPY, LAMBDA, EVAL_ACC)

# ---- review states: the samples' ``review_state`` (fieldguide.platform.review) -----------------------------
TO_REVIEW, PUSHED, ANSWERED, RESOLVED, DISMISSED = "to_review", "pushed", "answered", "resolved", "dismissed"
REVIEW_STATES = (TO_REVIEW, PUSHED, ANSWERED, RESOLVED, DISMISSED)
#: the states of a sample that waits for a decision (the ``to_review`` tag and view)
QUEUED_STATES = (TO_REVIEW, PUSHED, ANSWERED)
