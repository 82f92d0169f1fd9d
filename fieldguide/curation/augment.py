"""Structure-preserving diffusion augmentation for scarce classes, after SaSPA.

For each training image of a scarce class, a diffusion model generates candidates conditioned on
the image's Canny edges (ControlNet; or img2img / SDEdit from the image itself, the baseline) and
a prompt built from the class and its super-category. Each candidate is filtered (a) semantically,
with a local CLIP model when one is configured (the true class must be in CLIP's top-k of the
class prompts), and (b) by the current classifier (a head on the project's embeddings): kept only
if the true class is in its top-k. At most M are kept per real image, stored under
``PROJECT/synthetic/`` as samples with ``origin = "synthetic"``, ``parent_id`` and the tag
``synthetic`` (no split, no ground truth: they never count as labeled data). Training replaces a
real sample by one of its augmentations with probability α
(:func:`fieldguide.models.batches.mix_in_augmentations`).

Models load only from a local folder (``augment.model_dir``); with none configured, ``augment``
is a one-line error that changes nothing. GPU when present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fieldguide.config import Project
from fieldguide.errors import ConfigError, ModelError, NotReadyError
from fieldguide.platform import samples, store
from fieldguide.platform.fields import add_samples, save_view
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)

SYNTHETIC_TAG = "synthetic"


# ---- functions of arrays / images ---------------------------------------------------------------------
def canny_edges(image, low: int = 100, high: int = 200, size: int | None = None):
    """The Canny edge map of ``image`` (PIL) as a 3-channel PIL image (ControlNet's conditioning)."""
    import cv2
    from PIL import Image

    rgb = image.convert("RGB")
    if size:
        rgb = rgb.resize((size, size))
    edges = cv2.Canny(np.asarray(rgb.convert("L")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def prompt_for(class_name: str, super_category: str = "") -> str:
    name = class_name.replace("_", " ")
    return f"a photo of a {name}, a type of {super_category}" if super_category else f"a photo of a {name}"


def true_class_in_top_k(probs: np.ndarray, true_idx: int | np.ndarray, k: int) -> np.ndarray:
    """Boolean per row: is ``true_idx`` among the ``k`` highest probabilities of ``probs`` (n, K)."""
    probs = np.atleast_2d(probs)
    true_idx = np.broadcast_to(np.asarray(true_idx), (len(probs),))
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return (top == true_idx[:, None]).any(axis=1)


# ---- models -------------------------------------------------------------------------------------------
def load_pipeline(folder: str | Path, method: str = "controlnet"):
    """A diffusers pipeline from a local folder (never a download)."""
    folder = Path(folder).expanduser()
    if not (folder / "model_index.json").exists():
        raise ModelError(f"augment.model_dir {folder}: not a diffusers pipeline folder (no model_index.json)")
    import torch
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetPipeline

    missing = {k: None for k in ("text_encoder", "tokenizer", "safety_checker", "feature_extractor", "image_encoder")
               if not (folder / k).exists()}
    cls = StableDiffusionControlNetPipeline if method == "controlnet" else StableDiffusionControlNetImg2ImgPipeline
    try:
        pipe = cls.from_pretrained(str(folder), local_files_only=True, **missing)
    except (OSError, ValueError) as e:
        raise ModelError(f"augment.model_dir {folder}: could not load the pipeline ({str(e).splitlines()[0]})") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _prompt_kwargs(pipe, prompt: str, n: int) -> dict:
    """Text conditioning: the prompt when the pipeline has a text encoder, else zero embeddings
    (an unconditional prompt, for pipelines saved without one, e.g. tiny test pipelines)."""
    import torch

    if getattr(pipe, "text_encoder", None) is not None and getattr(pipe, "tokenizer", None) is not None:
        return {"prompt": [prompt] * n}
    dim = pipe.unet.config.cross_attention_dim
    emb = torch.zeros(n, 4, dim, device=pipe.device, dtype=pipe.unet.dtype)
    return {"prompt_embeds": emb, "negative_prompt_embeds": emb}


def generate(pipe, image, prompt: str, n: int, *, method: str, size: int, steps: int, guidance: float,
             strength: float, low: int, high: int, seed: int) -> list:
    """``n`` candidates for one real image."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    edges = canny_edges(image, low, high, size)
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pil",
              **_prompt_kwargs(pipe, prompt, n))
    if method == "controlnet":
        out = pipe(image=[edges] * n, height=size, width=size, **kw)
    else:
        src = image.convert("RGB").resize((size, size))
        out = pipe(image=[src] * n, control_image=[edges] * n, strength=strength, height=size, width=size, **kw)
    return list(out.images)


class SemanticFilter:
    """A local CLIP model: is the true class among the top-k class prompts for an image?"""

    def __init__(self, folder: str | Path, class_prompts: list[str]):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        except OSError as e:
            raise ModelError(f"augment.semantic_model_dir {folder}: {str(e).splitlines()[0]}") from None
        with torch.inference_mode():
            t = self.processor(text=class_prompts, return_tensors="pt", padding=True)
            self.text = torch.nn.functional.normalize(self.model.get_text_features(**t), dim=-1)

    def probs(self, images: list) -> np.ndarray:
        import torch

        with torch.inference_mode():
            px = self.processor(images=images, return_tensors="pt")
            img = torch.nn.functional.normalize(self.model.get_image_features(**px), dim=-1)
            return torch.softmax(100 * img @ self.text.T, dim=1).numpy()


# ---- the step -----------------------------------------------------------------------------------------
@dataclass
class ClassFill:
    generated: int = 0
    kept: int = 0
    rejected_semantic: int = 0
    rejected_classifier: int = 0


@dataclass
class AugmentReport:
    run_id: str
    classes: dict[str, ClassFill] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return sum(c.kept for c in self.classes.values())

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "kept": self.kept,
                "classes": {k: v.__dict__ for k, v in self.classes.items()}}


def scarce_classes(project: Project, ds, min_per_class: int) -> list[str]:
    counts = samples.arrays(ds, ["ground_truth.label"], tags="train")["ground_truth.label"].value_counts()
    return sorted(c for c in store.classes(ds) if counts.get(c, 0) < min_per_class)


@writes('augment')
def augment(project: Project, *, classes: list[str] | None = None, min_per_class: int | None = None,
            pipeline=None) -> AugmentReport:
    """Generate, filter and store augmentations for the scarce classes; see the module docstring."""
    from fieldguide.models.backbones import load_backbone
    from fieldguide.models.embed import embedded_table, iter_features
    from fieldguide.models.heads import make_head

    cfg = project.config.augment
    if pipeline is None and not cfg.model_dir:
        raise ConfigError("augment: no local diffusion model configured (set augment.model_dir in fieldguide.toml "
                          "to a diffusers ControlNet pipeline folder); nothing changed")
    ds = store.dataset(project, create=False)
    min_per_class = min_per_class or project.config.curation.scarce_class_count
    targets = classes if classes is not None else scarce_classes(project, ds, min_per_class)
    all_classes = store.classes(ds)
    unknown = set(targets) - set(all_classes)
    if unknown:
        raise ConfigError(f"augment: unknown class(es) {', '.join(sorted(unknown))}")
    # the current classifier: a head on the embeddings of the labeled training samples
    ids, X, table = embedded_table(project, None, ds)
    fit = ((table["split"] == "train") & table["label"].notna() & (table["origin"] != "synthetic")).to_numpy()
    if fit.sum() < 2:
        raise NotReadyError("augment needs labeled training samples with embeddings (ingest and embed first)")
    index = {c: i for i, c in enumerate(all_classes)}
    head = make_head(project.config.predict.head).fit(X[fit], np.array([index[v] for v in table["label"][fit]]))
    bb = load_backbone(project.config.models.backbone, project.config.models.weights or None,
                       runs_dir=project.runs_dir)
    pipe = pipeline if pipeline is not None else load_pipeline(cfg.model_dir, cfg.method)
    semantic = (SemanticFilter(cfg.semantic_model_dir, [prompt_for(c, cfg.super_category) for c in all_classes])
                if cfg.semantic_model_dir else None)
    out_dir = project.root / "synthetic"
    wh = store.warehouse(project)
    run_config = {"classes": targets, "method": cfg.method, "model_dir": cfg.model_dir, "top_k": cfg.top_k,
                  "per_image": cfg.per_image, "semantic": bool(semantic)}
    with wh.run("augment", run_config) as run_id:
        report = AugmentReport(run_id=run_id)
        existing = set(samples.arrays(ds, ["parent_id"], tags=SYNTHETIC_TAG)["parent_id"])
        training = samples.arrays(ds, ["filepath", "ground_truth.label", "origin"], tags="train")
        new_samples = []
        for cls in targets:
            fill = report.classes.setdefault(cls, ClassFill())
            parents = training[(training["ground_truth.label"] == cls) & (training["origin"] != "synthetic")]
            for pid, path in zip(parents["id"], parents["filepath"]):
                if pid in existing:  # re-running never piles augmentations onto one image
                    continue
                from PIL import Image

                with Image.open(path) as im:
                    images = generate(pipe, im.convert("RGB"), prompt_for(cls, cfg.super_category),
                                      cfg.candidates_per_image, method=cfg.method, size=cfg.image_size,
                                      steps=cfg.steps, guidance=cfg.guidance_scale, strength=cfg.strength,
                                      low=cfg.canny_low, high=cfg.canny_high, seed=cfg.seed)
                fill.generated += len(images)
                ok = np.ones(len(images), dtype=bool)
                if semantic is not None:
                    ok = true_class_in_top_k(semantic.probs(images), index[cls], cfg.top_k)
                    fill.rejected_semantic += int((~ok).sum())
                paths = []
                for n, img in enumerate(images):
                    p = out_dir / cls / f"{pid}_{run_id}_{n}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    img.save(p)
                    paths.append(str(p))
                feats = np.zeros((len(images), bb.dim), dtype=np.float32)
                for idx, f, _ in iter_features(bb, paths, batch_size=16, num_workers=0,
                                               device=project.config.models.device, desc="filter"):
                    feats[idx] = f
                probs = np.zeros((len(images), len(all_classes)))
                probs[:, head.classes_] = head.predict_proba(feats)
                by_classifier = true_class_in_top_k(probs, index[cls], cfg.top_k)
                fill.rejected_classifier += int((ok & ~by_classifier).sum())
                keep = [i for i in np.where(ok & by_classifier)[0][: cfg.per_image]]
                for i, p in enumerate(paths):
                    if i not in keep:
                        Path(p).unlink(missing_ok=True)
                for i in keep:
                    new_samples.append({"filepath": paths[i], "origin": "synthetic", "parent_id": pid,
                                        "tags": [SYNTHETIC_TAG],
                                        "synthetic_label": {"label": cls, "origin": "synthetic"}})
                fill.kept += len(keep)
        add_samples(ds, new_samples)
        save_view(ds, "synthetic", tag=SYNTHETIC_TAG)
        wh.write("metrics", [{"run_id": run_id, "split": f"class:{c}", "name": name, "value": float(getattr(f, name))}
                             for c, f in report.classes.items()
                             for name in ("generated", "kept", "rejected_semantic", "rejected_classifier")])
        store.snapshot_samples(project, ds)
    return report
