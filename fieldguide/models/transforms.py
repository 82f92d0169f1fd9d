"""Training-time image transforms built on a backbone's own preprocessing."""

from __future__ import annotations


def train_transform(bb, strong: bool = False):
    """The backbone's preprocessing with weak (random resized crop, flip) or, with ``strong``,
    strong augmentation (plus RandAugment), as semi-supervised training uses them."""
    import torchvision.transforms as T

    base = bb.transform()
    steps = list(getattr(base, "transforms", [base]))
    size = bb.input_size
    aug = [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip()]
    if strong:
        aug = [T.RandomResizedCrop(size, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.RandAugment(num_ops=2)]
    tail = [s for s in steps if type(s).__name__ in ("ToTensor", "Normalize", "MaybeToTensor")]
    return T.Compose(aug + tail) if tail else base
