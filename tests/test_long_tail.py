"""Long-tail options of the torch ``mlp`` head: seesaw loss and logit adjustment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import blobs
from fieldguide.errors import ModelError
from fieldguide.models.heads import make_head
from fieldguide.models.heads.mlp import seesaw_loss


def test_seesaw_is_cross_entropy_on_balanced_confident_batches_and_spares_rare_negatives():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    target = logits.argmax(dim=1)  # the target is the most probable class: no compensation
    balanced = torch.full((4,), 10)
    assert seesaw_loss(logits, target, balanced).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    # a frequent target class no longer pushes the rare classes down as hard
    tail = torch.tensor([100, 100, 2, 2])
    frequent = target < 2
    assert frequent.any()
    assert seesaw_loss(logits[frequent], target[frequent], tail) < F.cross_entropy(logits[frequent], target[frequent])
    # a rare class more probable than the target is penalised more (compensation), whatever the counts
    wrong = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
    assert seesaw_loss(wrong, torch.tensor([0]), balanced) > F.cross_entropy(wrong, torch.tensor([0]))


def test_logit_adjustment_raises_the_rare_class_and_bad_losses_are_refused():
    X, y = blobs(n_classes=3, per_class=60, dim=8, spread=2.5, seed=3)
    keep = (y != 2) | (np.arange(len(y)) % 10 == 0)  # class 2 keeps 6 of its 60: the tail
    params = {"loss": "ce", "class_weight": None, "epochs": 15, "hidden": 32}
    plain = make_head("mlp", **params).fit(X[keep], y[keep])
    adjusted = make_head("mlp", **params, logit_adjust=1.0).fit(X[keep], y[keep])
    rare = y == 2  # scored on every sample of the rare class, most of them unseen
    assert adjusted.predict_proba(X[rare])[:, 2].mean() > plain.predict_proba(X[rare])[:, 2].mean()
    assert (adjusted.predict(X[rare]) == 2).mean() >= (plain.predict(X[rare]) == 2).mean()
    with pytest.raises(ModelError, match="loss 'hinge': use one of ce, focal, seesaw"):
        make_head("mlp", loss="hinge").fit(X, y)
