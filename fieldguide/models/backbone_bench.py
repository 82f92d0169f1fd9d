"""``bench backbones``: each backbone on the project's data, on the four aspects the insect papers compare.

Per backbone (its embeddings from the cache; what is missing is embedded first, with progress):

- classification: a head (``logreg`` unless told) fit on the train split's embeddings, scored on
  the test split: top-1, top-5, macro-F1, ECE, per-class F1 and, per taxonomy rank above the
  class (the warehouse's ``taxa``: inat-plants-dev has family and genus), the predictions read at
  that rank: top-1, macro-F1 and one F1 per group;
- embedding quality (:mod:`fieldguide.models.embedding_quality`): kNN top-1, silhouette,
  alignment, uniformity and the within / between-class distance ratio;
- cost (:mod:`fieldguide.models.backbone_cost`): parameters, MACs and FLOPs per image, images/s
  and peak memory on this machine (the GPU when there is one);
- gradient activity (:mod:`fieldguide.models.gradients`): per-block gradient norms over a few
  fine-tuning steps on the train split's images.

Each backbone is one ``bench_backbone`` run in the warehouse: ``metrics`` under the splits
``test``, ``test:<rank>``, ``embedding``, ``cost`` and ``gradients``, ``class_metrics`` (per class
under ``test``, per group under ``test:<rank>``), ``confusions``, and the gradient norms as
``curves`` (``grad_norm:<block>`` per step). The plots (accuracy against cost, gradient norm per
block) go to ``runs/backbones/``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support

from fieldguide import names
from fieldguide.config import Project
from fieldguide.errors import FieldguideError
from fieldguide.models import gradients as grad
from fieldguide.models.backbone_cost import backbone_cost
from fieldguide.models.backbones import Backbone, load_backbone
from fieldguide.models.batches import image_loader, readable
from fieldguide.models.embedding_quality import embedding_quality
from fieldguide.models.evaluate import classification_metrics, record_metrics
from fieldguide.models.heads import make_head
from fieldguide.models.inference import resolve_device
from fieldguide.models.transforms import train_transform
from fieldguide.platform.warehouse import Warehouse

log = logging.getLogger(__name__)

#: a function of the samples table (columns label, filepath, split, [observation_id]) -> test mask
SplitFn = Callable[[pd.DataFrame], np.ndarray]


@dataclass
class BenchData:
    """One backbone's embeddings of the labeled samples, split; the train images; the class groups."""

    classes: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    paths_train: list[str] = field(default_factory=list)
    groups: dict[str, list[str | None]] = field(default_factory=dict)  # rank -> group of each class (or None)
    split: str = "store"


@dataclass
class BackboneResult:
    backbone: str
    weights_id: str
    metrics: dict[str, dict[str, float]]  # split -> name -> value (the warehouse's metrics)
    per_class: list[dict]
    per_group: dict[str, list[dict]]  # rank -> rows (group, precision, recall, f1, support)
    gradients: pd.DataFrame  # gradients.COLUMNS
    confusion: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    run_id: str | None = None

    def row(self) -> dict:
        """One flat row: backbone, then every metric (``<rank>_top1`` for a rank's), cost, gradients."""
        out: dict = {"backbone": self.backbone}
        for split, values in self.metrics.items():
            rank = split.split(":", 1)[1] if split.startswith("test:") else None
            out.update({f"{rank}_{k}" if rank else k: v for k, v in values.items()})
        out["device"] = self.config.get("device")
        return out

    def as_dict(self) -> dict:
        blocks = grad.mean_by_block(self.gradients) if len(self.gradients) else pd.DataFrame()
        return {**self.row(), "run_id": self.run_id, "weights_id": self.weights_id, "config": self.config,
                "per_class": self.per_class, "per_group": self.per_group,
                "grad_norm_by_block": blocks.to_dict("records")}


# ---- scoring (arrays) ------------------------------------------------------------------------------------
def _full_probs(head, X: np.ndarray, n_classes: int) -> np.ndarray:
    """The head's probabilities as (n, n_classes): a class absent from train gets 0."""
    probs = np.zeros((len(X), n_classes))
    probs[:, np.asarray(head.classes_, dtype=int)] = head.predict_proba(X)
    return probs


def group_scores(y: np.ndarray, pred: np.ndarray, groups: Sequence[str | None]) -> tuple[dict, list[dict]]:
    """Predictions read at a coarser rank: ``groups[c]`` is the group of class index ``c`` (None:
    unknown; those test rows are left out). Returns ``({"top1", "macro_f1"}, per-group rows)``."""
    g = np.array([groups[c] if groups[c] is not None else "" for c in range(len(groups))], dtype=object)
    gy, gp = g[np.asarray(y)], g[np.asarray(pred)]
    keep = gy != ""
    gy, gp = gy[keep].astype(str), gp[keep].astype(str)
    labels = sorted(set(gy))
    if not labels:
        return {}, []
    prec, rec, f1, support = precision_recall_fscore_support(gy, gp, labels=labels, zero_division=0)
    rows = [{"class": lab, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for lab, p, r, f, s in zip(labels, prec, rec, f1, support)]
    return ({names.TOP1: float((gy == gp).mean()),
             names.MACRO_F1: float(f1_score(gy, gp, labels=labels, average="macro", zero_division=0))}, rows)


def score_embeddings(data: BenchData, *, head: str = "logreg", knn_k: int = 1) -> BackboneResult:
    """Classification and embedding quality of one backbone's :class:`BenchData` (no cost, no gradients)."""
    n = len(data.classes)
    model = make_head(head).fit(data.X_train, data.y_train)
    probs = _full_probs(model, data.X_test, n)
    m = classification_metrics(data.y_test, probs, data.classes)
    metrics = {"test": {k: float(m[k]) for k in (names.N, names.TOP1, names.TOP5, names.MACRO_F1, names.ECE)}}
    per_group = {}
    for rank, groups in data.groups.items():
        scores, rows = group_scores(data.y_test, probs.argmax(axis=1), groups)
        if rows:
            metrics[f"test:{rank}"], per_group[rank] = scores, rows
    metrics[names.EMBEDDING_SPLIT] = embedding_quality(data.X_train, data.y_train, data.X_test, data.y_test, k=knn_k)
    return BackboneResult("", "", metrics, m["per_class"], per_group, pd.DataFrame(columns=grad.COLUMNS),
                          confusion=m["confusion"], classes=list(data.classes), config={"head": head, "knn_k": knn_k})


def gradient_batches(bb: Backbone, paths: list[str], y: np.ndarray, *, batch_size: int, seed: int = 0):
    """Shuffled, augmented ``(images, labels)`` batches of the images ``paths`` (unreadable ones left out)."""
    loader = image_loader(list(paths), train_transform(bb), batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    return ((x, yt[idx]) for idx, x in readable(loader))


def bench_backbone(bb: Backbone, data: BenchData, *, head: str = "logreg", knn_k: int = 1, steps: int = 5,
                   grad_batch_size: int = 8, cost_batch_size: int = 16, device: str = "auto",
                   progress: bool = True) -> BackboneResult:
    """Every measure of the module's text for one backbone on ``data`` (its model is not changed)."""
    result = score_embeddings(data, head=head, knn_k=knn_k)
    result.backbone, result.weights_id = bb.name, bb.weights_id
    cost = backbone_cost(bb, device=device, batch_size=cost_batch_size)
    result.metrics[names.COST_SPLIT] = {k: float(cost[k]) for k in names.BACKBONE_COST_METRICS}
    result.config.update({"backbone": bb.name, "weights_id": bb.weights_id, "device": cost["device"],
                          "cost_batch_size": cost_batch_size, "steps": steps, "grad_batch_size": grad_batch_size,
                          "split": data.split, "n_train": int(len(data.y_train)), "n_test": int(len(data.y_test)),
                          "input_size": bb.input_size})
    if steps > 0 and data.paths_train:
        trainee = copy.deepcopy(bb)
        norms = grad.block_gradient_norms(
            trainee.model, bb.dim, len(data.classes),
            gradient_batches(bb, data.paths_train, data.y_train, batch_size=grad_batch_size),
            steps=steps, device=resolve_device(device), progress=progress)
        del trainee
        result.gradients = norms
        result.metrics[names.GRADIENTS_SPLIT] = grad.summary(norms)
    return result


# ---- the project --------------------------------------------------------------------------------------------
def class_groups(wh: Warehouse, classes: list[str]) -> dict[str, list[str | None]]:
    """Rank -> the group of each class at that rank (None where the class has none), from ``taxa``;
    the class's own rank is left out. Empty when the project has no class tree."""
    try:
        taxa = wh.query("SELECT class, rank, name FROM taxa WHERE name <> class ORDER BY depth")
    except duckdb.CatalogException:  # a warehouse no step has written the tree to
        return {}
    if taxa.empty:
        return {}
    out = {}
    for rank, rows in taxa.groupby("rank", sort=False):
        lookup = dict(zip(rows["class"], rows["name"]))
        if any(c in lookup for c in classes):
            out[str(rank)] = [lookup.get(c) for c in classes]
    return out


def project_data(project: Project, backbone: str, *, split_fn: SplitFn | None = None) -> BenchData:
    """The labeled samples' embeddings by ``backbone``, split by the store (``test`` tag) or, when
    the store has no test split, by ``split_fn``."""
    from fieldguide.models.embed import embedded_table
    from fieldguide.platform import samples, store

    ds = store.dataset(project, create=False)
    extra = ["observation_id"] if samples.has_field(ds, "observation_id") else []
    _, X, table = embedded_table(project, backbone, ds, extra)
    labeled = table["label"].notna().to_numpy() & table["split"].isin(("train", "val", "test")).to_numpy()
    table, X = table[labeled], X[labeled]
    classes = sorted(table["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in table["label"]], dtype=int)
    test, split = (table["split"] == "test").to_numpy(), "store"
    if not test.any():
        if split_fn is None:
            raise FieldguideError("the store has no test split: tag test samples at ingest, or give a split")
        test, split = np.asarray(split_fn(table.reset_index()), dtype=bool), "suite"
    if len(classes) < 2 or not (~test).any() or not test.any():
        raise FieldguideError(f"bench backbones needs labeled train and test images of 2 or more classes "
                              f"(found {len(classes)} classes, {int((~test).sum())} train, {int(test.sum())} test)")
    return BenchData(classes, X[~test], y[~test], X[test], y[test], table["filepath"][~test].tolist(),
                     class_groups(store.warehouse(project), classes), split)


def parse_backbone(text: str) -> tuple[str, str | None]:
    """``NAME[=WEIGHTS]`` (a local weights file or folder) -> (name, weights or None)."""
    name, _, weights = text.strip().partition("=")
    if not name:
        raise FieldguideError(f"--backbones {text!r}: use NAME or NAME=WEIGHTS, e.g. timm/vit_tiny_patch16_224=/w.safetensors")
    return name, weights or None


def record(wh: Warehouse, result: BackboneResult, collection: str | None = None) -> str:
    """One completed ``bench_backbone`` run holding ``result`` (see the module's text); returns its id."""
    with wh.run(names.BENCH_BACKBONE, {**result.config, "collection": collection}) as run_id:
        wh.write("metrics", [{"run_id": run_id, "split": split, "name": k, "value": float(v)}
                             for split, values in result.metrics.items() for k, v in values.items()])
        if result.confusion is not None:
            m = {"per_class": result.per_class, "confusion": result.confusion}
            record_metrics(wh, run_id, "test", m, result.classes, headline=False)
        wh.write("class_metrics", [dict(run_id=run_id, split=f"test:{rank}", **r)
                                   for rank, rows in result.per_group.items() for r in rows])
        g = result.gradients
        wh.write("curves", pd.DataFrame({"run_id": run_id, "step": g["step"].astype(int),
                                         "name": names.GRAD_NORM_PREFIX + g["block"], "value": g["grad_norm"]}))
        cost = result.metrics.get(names.COST_SPLIT, {})
        if cost and wh.query("SELECT 1 FROM backbone_costs WHERE backbone = ?", [result.backbone]).empty:
            wh.write("backbone_costs", [{"backbone": result.backbone, "params": int(cost[names.PARAMS]),
                                         "macs": int(cost[names.MACS]), "input_size": result.config["input_size"],
                                         "images_per_s": cost[names.IMAGES_PER_S], "measured": None}])
    result.run_id = run_id
    return run_id


def results_table(results: list[BackboneResult]) -> pd.DataFrame:
    """One column per backbone, one row per measure (split and name): the table ``bench backbones`` prints."""
    cells = {r.backbone: {(split, k): v for split, values in r.metrics.items() for k, v in values.items()}
             for r in results}
    table = pd.DataFrame(cells)
    table.index = [f"{split} {name}" for split, name in table.index]
    return table


def save_plots(results: list[BackboneResult], folder: Path, title: str = "") -> list[Path]:
    """The accuracy-vs-cost scatter and the gradient-norm-per-block lines of ``results``, as PNGs."""
    from fieldguide.models.plots import plot_accuracy_vs_cost, plot_gradient_norms

    folder.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame([r.row() for r in results])
    paths = [plot_accuracy_vs_cost(rows, folder / "accuracy_vs_cost.png", title)]
    lines = {r.backbone: grad.mean_by_block(r.gradients) for r in results if len(r.gradients)}
    if lines:
        paths.append(plot_gradient_norms(lines, folder / "gradient_norms.png", title))
    return paths


def bench_backbones(project: Project, backbones: Sequence[str] | None = None, *, head: str = "logreg",
                    knn_k: int = 1, steps: int = 5, grad_batch_size: int = 8, cost_batch_size: int = 16,
                    device: str | None = None, split_fn: SplitFn | None = None, warehouse: Warehouse | None = None,
                    progress: bool = True) -> tuple[list[BackboneResult], list[Path]]:
    """Embed what is missing and measure each of ``backbones`` (``NAME[=WEIGHTS]``; default the
    project's ``models.backbone``) on the project's data; record a run per backbone in ``warehouse``
    (default the project's) and save the plots under ``runs/backbones/``. Returns ``(results, plots)``."""
    from fieldguide.models.embed import embed, fully_embedded
    from fieldguide.platform import store

    cfg = project.config.models
    device = device or cfg.device
    wanted = [parse_backbone(b) for b in (backbones or [cfg.backbone])]
    wh = warehouse or store.warehouse(project)
    results = []
    try:
        for name, weights in wanted:
            if weights is None and name == cfg.backbone and cfg.weights:
                weights = cfg.weights
            bb = load_backbone(name, weights, runs_dir=project.runs_dir)
            log.info("bench backbones: %s (%s)", bb.name, bb.weights_id)
            if not fully_embedded(project, bb):  # else: nothing to write, no write lock to wait for
                embed(project, bb=bb, device=device)
            data = project_data(project, bb.name, split_fn=split_fn)
            result = bench_backbone(bb, data, head=head, knn_k=knn_k, steps=steps, grad_batch_size=grad_batch_size,
                                    cost_batch_size=cost_batch_size, device=device, progress=progress)
            record(wh, result, project.config.project.name)
            results.append(result)
    finally:
        store.release_database()
    return results, save_plots(results, project.runs_dir / "backbones", project.config.project.name)
