"""The sections of ``fieldguide.toml``: one pydantic model each, every key with its default,
its bounds and a ``description`` (written as a comment by ``fieldguide init``).

Only :mod:`fieldguide.config` reads the file; code takes the values it needs as arguments.
"""

from __future__ import annotations

import re

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectSection(_Section):
    name: str = Field(min_length=1, description="a human name for the project")
    curator: str = Field(default="curator", min_length=1,
                         description="who label changes made in the App are recorded as (label_history actor)")
    id: str = Field(default="", pattern="^[0-9a-f]{0,32}$",
                    description="the project's stable identity (set by init; moving or copying the folder keeps it)")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '.', '-' (and start with a letter or digit)")
        return v


class StoreSection(_Section):
    dataset_name: str = Field(default="", description="FiftyOne dataset name; empty: derived")
    database_uri: str = Field(
        default="", description="an external MongoDB (team set-up): a server or a replica set "
                                "(mongodb://h1,h2,h3/?replicaSet=rs0); empty: embedded, under the project"
    )
    database_name: str = Field(
        default="", pattern="^[A-Za-z0-9_-]{0,63}$",
        description="the MongoDB database holding the project's datasets (one per project on a shared server); "
                    "empty: FiftyOne's own, 'fiftyone'",
    )
    lock_timeout_s: float = Field(
        default=10.0, ge=0, description="seconds a command waits while another one writes the project"
    )


class IngestSection(_Section):
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"]
    )
    workers: int = Field(default=4, ge=1, le=64)


class ModelsSection(_Section):
    backbone: str = "efficientnet_lite0"
    backbones: list[str] = Field(default_factory=list,
                                 description="backbones predict combines (a head on each, or one on their concatenation); "
                                             "empty: every backbone embedded for the samples when there are two or more")
    weights: str = Field(default="", description="weights file or folder overriding the backbone's own")
    batch_size: int = Field(default=64, ge=1)
    num_workers: int = Field(default=2, ge=0)
    device: str = "auto"
    ray_address: str = Field(default="", description="embed and predict on a Ray cluster: auto (the one running on "
                                                     "this machine, else a local one) or HOST:PORT; empty: no Ray")
    metadata: str = Field(default="auto", pattern="^(auto|none)$",
                          description="auto: predict combines the head with a date/place prior when samples "
                                      "have observed_at or location (none when they have neither); none: images only")
    backoff_threshold: float = Field(
        default=0.7, ge=0, le=1,
        description="back-off prediction: the finest rank (species, genus, family, ...) whose probability, summed "
                    "over its classes, reaches this is the answer (prediction_backoff)")


class PredictSection(_Section):
    head: str = "logreg"
    decision: str = Field(default="argmax", pattern="^(argmax|expected_cost)$",
                          description="argmax | expected_cost: the class of least expected cost under classes.costs")
    folds: int = Field(default=5, ge=2)
    seed: int = 0


class TrainSection(_Section):
    method: str = Field(default="two-stage-entropy", pattern="^(ce|two-stage-entropy|grpo)$",
                        description="ce | two-stage-entropy | grpo")
    mode: str = Field(default="head", pattern="^(head|finetune)$",
                      description="head: on the cached embeddings; finetune: the backbone end to end")
    epochs: int = Field(default=200, ge=1, description="epochs in head mode (full batch: one step each)")
    lr: float = Field(default=1e-2, gt=0, description="learning rate in head mode (Adam, L2 weight decay)")
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int = Field(default=0, ge=0, description="head mode: samples per step; 0: all of them (full batch)")
    hidden: int = Field(default=0, ge=0, description="hidden units of the head; 0: linear")
    lam_max: float = Field(default=0.5, ge=0, description="entropy bonus while exploring (λ = +lam_max)")
    lam_min: float = Field(default=0.1, ge=0, description="entropy penalty while exploiting (λ = -lam_min)")
    switch_at: float = Field(default=0.8, ge=0, le=1, description="fraction of training where λ switches")
    switch_rule: str = Field(default="fraction", pattern="^(fraction|saturation)$",
                             description="fraction, or saturation: also switch when mean entropy stops rising")
    reverse_schedule: bool = Field(default=False, description="ablation: min→max instead of max→min")
    grpo_k: int = Field(default=8, ge=2, description="labels sampled per image for GRPO")
    finetune_epochs: int = Field(default=5, ge=1)
    finetune_lr: float = Field(default=1e-4, gt=0)
    finetune_batch_size: int = Field(default=32, ge=1)
    flagged: str = Field(default="downweight", pattern="^(keep|downweight|exclude)$",
                         description="retrain: unresolved flagged samples are kept, down-weighted or excluded")
    flagged_weight: float = Field(default=0.3, ge=0, le=1, description="weight of a down-weighted sample")
    seed: int = 0


class AugmentSection(_Section):
    model_dir: str = Field(default="", description="local diffusers ControlNet pipeline folder (StableDiffusionControlNetPipeline); empty: augment is off")
    method: str = Field(default="controlnet", pattern="^(controlnet|img2img)$",
                        description="controlnet: Canny edges + prompt (SaSPA); img2img: SDEdit baseline")
    semantic_model_dir: str = Field(default="", description="local CLIP folder for the semantic filter; empty: skipped")
    super_category: str = Field(default="", description="e.g. bird, fungus: goes into the prompt")
    per_image: int = Field(default=2, ge=1, description="at most M kept augmentations per real image")
    candidates_per_image: int = Field(default=4, ge=1, description="generated per real image before filtering")
    top_k: int = Field(default=10, ge=1, description="classifier filter: keep when the true class is in its top-k")
    alpha: float = Field(default=0.4, ge=0, le=1, description="training replaces a real sample by an augmentation with this probability")
    steps: int = Field(default=20, ge=1, description="diffusion steps")
    guidance_scale: float = Field(default=7.5, ge=1)
    strength: float = Field(default=0.6, gt=0, le=1, description="img2img strength")
    image_size: int = Field(default=512, ge=8)
    canny_low: int = Field(default=100, ge=0)
    canny_high: int = Field(default=200, ge=0)
    seed: int = 0


class EvaluateSection(_Section):
    cost_matrix: str = Field(
        default="",
        description="CSV with columns true,predicted,cost (class names); missing pairs cost 1, diagonal 0",
    )


class ClassesSection(_Section):
    costs: str | list[str] = Field(
        default="",
        description="costly mistakes: a CSV of true,predicted,cost (class names), or a list of dangerous classes "
                    "(FungiCLEF: a dangerous class called a harmless one costs 100, the reverse 1, any other error 1); "
                    "empty: evaluate.cost_matrix",
    )


class CurationSection(_Section):
    scarce_class_count: int = Field(default=10, ge=1, description="a class with fewer labeled training samples "
                                    "is scarce (augment, fill, the scarce_classes view)")
    knn_k: int = Field(default=10, ge=1)
    review_order: str = Field(
        default="noise_score", pattern="^(noise_score|error_rank|cost|unknown_score)$",
        description="the to_review view's order: noise_score (ties: the coarser error_rank first) | error_rank "
                    "(a label in the wrong family before one in the wrong species, then by noise score) | cost "
                    "(noise score x the expected cost of keeping the label under classes.costs: a dangerous "
                    "class's error first) | unknown_score (likely unknown species first, flag --unknown)",
    )
    knn_method: str = Field(default="auto", pattern="^(auto|exact|hnsw|ivf)$",
                            description="the shared kNN graph (FAISS): exact, hnsw or ivf (approximate); "
                            "auto: exact below knn_exact_below samples, else hnsw")
    knn_exact_below: int = Field(default=50_000, ge=0, description="auto: exact kNN search below this many samples")
    knn_pca_dim: int = Field(default=128, ge=0, description="hnsw/ivf: search among the embeddings PCA-reduced to "
                             "this many dimensions (0: the full embeddings; exact always reads the full ones)")
    knn_refine: int = Field(default=16, ge=0, description="hnsw/ivf with PCA: this many candidates per neighbour, "
                            "re-ranked by the exact cosine on the full embeddings (0: none)")
    knn_ef_search: int = Field(default=64, ge=1, description="hnsw: search breadth (higher: better recall, slower)")
    brain_mistakenness_max: int = Field(
        default=50_000, ge=0, description="FiftyOne Brain's mistakenness (shown in the App, not in the noise score) "
        "only up to this many assessed samples: it reads every sample's stored logits (half of flag's time at 100k)")
    pred_probs_budget_mb: float = Field(default=2048, gt=0, description="pred_probs larger than this: cleanlab "
                                        "reads them in batches (find_label_issues_batched)")


class PseudolabelSection(_Section):
    threshold: float = Field(default=0.7, ge=0, le=1, description="keep pseudo-labels with at least this confidence")
    ema_decay: float = Field(default=0.9999, ge=0, le=1, description="EMA teacher decay per step (with warm-up)")
    mu: int = Field(default=3, ge=1, description="unlabeled samples per labeled sample in a batch")
    lambda_u: float = Field(default=1.0, ge=0, description="weight of the unlabeled loss")
    epochs: int = Field(default=40, ge=1)
    balance: bool = Field(default=True, description="cap every class at the median count of pseudo-labels per class")
    abstain: bool = Field(default=True, description="write no pseudo-labels when, K-fold on the labeled samples, "
                          "training with them does not beat training without them")
    mode: str = Field(default="head", description="head: on cached embeddings; finetune: the backbone, weak/strong views")


# entropy_aum 0.1, a second opinion: the trajectories are in-sample (the run trained on the sample it
# judges), the cleanlab signals out-of-sample. On cub100 (benchmarks/noise_bench.py --entropy-weights)
# a larger weight buys more on confusable-pair noise and costs more on symmetric noise; 0.1 keeps the
# symmetric cost near zero.
DEFAULT_SIGNAL_WEIGHTS = {"label_quality": 0.5, "knn_disagreement": 0.25, "consensus_quality": 0.25,
                          "entropy_aum": 0.1}


class SignalsSection(_Section):
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_SIGNAL_WEIGHTS),
        description="share of each signal output in the combined noise_score (an output left out: weight 0)",
    )


class AppSection(_Section):
    port: int = Field(default=5151, ge=1, le=65535, description="port of 'fieldguide app' (the FiftyOne App)")


class DashboardsSection(_Section):
    port: int = Field(default=8501, ge=1, le=65535, description="port of 'fieldguide dashboard' (on 127.0.0.1)")
    outlier_threshold: float = Field(
        default=0.2, ge=0, le=1,
        description="unused (kept so that older project files load): the Dataset health page counts the "
                    "outliers flag found (Datalab's is_outlier), as the App's outliers view does"
    )
    matrix_max_classes: int = Field(
        default=40, ge=2, description="Models: a bigger confusion matrix shows the classes with the most confusions"
    )


class LabelStudioDatabase(_Section):
    """``[labelstudio.database]``: where the project's own Label Studio keeps its data.

    ``engine = "sqlite"`` (the default): a SQLite file in ``PROJECT/labelstudio``, for one curator
    on one machine; the other keys are unused. ``engine = "postgresql"``: a team's PostgreSQL
    server at ``host:port``, database ``name``, as ``user``; the password comes from the
    environment variable named by ``password_env`` (preferred) or from ``password`` (never
    printed). ``fieldguide labelstudio start`` checks that it can log in before it starts the
    server. One database per project: Label Studio keeps its users and API token in it.
    Unused when ``labelstudio.url`` points at your own server.
    """

    engine: str = Field(default="sqlite", pattern="^(sqlite|postgresql)$",
                        description="sqlite (a file in PROJECT/labelstudio) | postgresql (host, port, name, user below)")
    host: str = Field(default="", pattern=r"^[A-Za-z0-9_.:\[\]-]*$",
                      description="postgresql: the server's host name or address")
    port: int = Field(default=5432, ge=1, le=65535, description="postgresql: the server's port")
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_$-]*$",
                      description="postgresql: the database (made beforehand, empty or Label Studio's own)")
    user: str = Field(default="", pattern=r"^[A-Za-z0-9_.@$-]*$",
                      description="postgresql: the user Label Studio logs in as")
    password_env: str = Field(default="FIELDGUIDE_LABELSTUDIO_DB_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                              description="environment variable holding the user's password")
    password: str = Field(default="", repr=False,
                          description="the user's password (prefer password_env); never printed")

    @model_validator(mode="after")
    def _postgresql_needs_a_server(self) -> "LabelStudioDatabase":
        if self.engine == "postgresql":
            missing = [k for k in ("host", "name", "user") if not getattr(self, k)]
            if missing:
                raise ValueError(f"engine 'postgresql' needs {', '.join(missing)}")
        return self

    def where(self) -> str:
        """The database in words, without the password: ``postgresql://user@host:port/name``."""
        if self.engine == "sqlite":
            return "sqlite"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.name}"


class LabelStudioSection(_Section):
    """Where Label Studio is, and what a relabel task shows.

    A task offers a short list of candidates (the given label, the model's ``top_k`` classes, the
    crowd's votes) and every class behind a search. The model's prediction is pre-selected only
    when its confidence is at least ``preselect_confidence`` (default 0.8): below it, a
    pre-selected answer invites rubber-stamping a guess (a 100-class model at 0.13 is mostly
    wrong), so the annotator starts from nothing; the prediction still shows among the
    candidates and in the facts. 1.0 never pre-selects; 0 always does.

    ``[labelstudio.database]`` (:class:`LabelStudioDatabase`): SQLite in the project folder, or a
    team's PostgreSQL.
    """

    url: str = Field(default="", description="your own server; empty: the project's local one")
    port: int = Field(default=8089, ge=1, le=65535)
    username: str = "curator@fieldguide.local"
    token_env: str = Field(
        default="LABEL_STUDIO_API_KEY", description="environment variable holding your own server's API token"
    )
    token: str = Field(
        default="", repr=False, description="your own server's API token (prefer token_env); never printed"
    )
    files_root: str = Field(
        default="",
        description="the server's local-files document root; empty: the parent of the folder holding the images",
    )
    majority_rule: str = Field(
        default="majority", pattern="^(majority|plurality|unanimous)$",
        description="several annotators on a task: majority | plurality | unanimous",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="seconds per Label Studio request")
    retries: int = Field(default=3, ge=0, le=10, description="retries (with backoff) on transient errors")
    webhook_port: int = Field(default=8091, ge=1, le=65535, description="port of 'fieldguide labelstudio listen'")
    top_k: int = Field(default=5, ge=0, le=9, description="the model's top classes among a task's candidates")
    preselect_confidence: float = Field(
        default=0.8, ge=0, le=1,
        description="pre-select the model's prediction in a task only at or above this confidence",
    )
    database: LabelStudioDatabase = Field(default_factory=LabelStudioDatabase)


class Config(_Section):
    project: ProjectSection
    store: StoreSection = Field(default_factory=StoreSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    predict: PredictSection = Field(default_factory=PredictSection)
    train: TrainSection = Field(default_factory=TrainSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    classes: ClassesSection = Field(default_factory=ClassesSection)
    curation: CurationSection = Field(default_factory=CurationSection)
    pseudolabel: PseudolabelSection = Field(default_factory=PseudolabelSection)
    signals: SignalsSection = Field(default_factory=SignalsSection)
    labelstudio: LabelStudioSection = Field(default_factory=LabelStudioSection)
    app: AppSection = Field(default_factory=AppSection)
    dashboards: DashboardsSection = Field(default_factory=DashboardsSection)
