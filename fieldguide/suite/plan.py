"""The suite's constants and :class:`Plan` (what one run measures)."""

from __future__ import annotations

from dataclasses import dataclass



FAMILIES = ("heads", "noise", "train", "pseudolabel")
ROLES = ("default", "baseline")
COLUMNS = ["collection", "setting", "method", "role", "metric", "value"]
SEED = 0
SPLIT_SEED = 7  # random.Random(7): the split of shared/data/README.md's reference numbers
TEST_SHARE = 0.3

# plain baselines
LR_C = 10.0
LR_MAX_ITER = 1000  # converged; sklearn's default 100 stops early on 1280-d features
LR = f"LogisticRegression(C={LR_C:g})"
FULL_BATCH = "full-batch linear CE (Adam 1e-2, wd 1e-4, 200 steps)"
CLEANLAB = "cleanlab (5-fold LR pred_probs)"


@dataclass(frozen=True)
class Plan:
    """What one run measures (``quick``: one rate, one k, fewer steps)."""

    noise_rates: tuple[float, ...] = (0.1, 0.2, 0.4)
    noise_kinds: tuple[str, ...] = ("symmetric", "pairs")
    train_rates: tuple[float, ...] = (0.2, 0.4)
    ks: tuple[int, ...] = (3, 5, 10)
    epochs: int | None = None  # head training epochs; None: the config's train.epochs
    full_batch_steps: int = 200
    seed: int = SEED

    @classmethod
    def quick(cls) -> "Plan":
        return cls(noise_rates=(0.2,), train_rates=(0.4,), ks=(5,), epochs=5, full_batch_steps=50)
