"""Training-time image transforms: timm's training pipeline on a backbone's own data config."""

from __future__ import annotations


def train_transform(bb, strong: bool = False):
    """``timm.data.create_transform(is_training=True)`` with the backbone's data config (input
    size, interpolation, mean, std): weak augmentation (random resized crop of 60-100 % of the
    area, horizontal flip, no colour jitter) or, with ``strong``, strong augmentation (crops of
    30-100 %, flip, timm's RandAugment: 2 ops, each applied, at magnitude 9), as semi-supervised training uses them."""
    from timm.data import create_transform

    cfg = bb.data_config()
    cfg.pop("crop_pct", None)  # an eval-time setting
    return create_transform(**cfg, is_training=True, scale=(0.3, 1.0) if strong else (0.6, 1.0), hflip=0.5,
                            color_jitter=None, auto_augment="rand-m9-n2-p1" if strong else None)
