"""Semi-supervised pseudo-labeling: selection, pseudo mixup, the EMA teacher, the store step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.config.sections import TrainSection
from fieldguide.curation.pseudolabel import PSEUDO_TAG, accept_pseudo_labels, pseudolabel
from fieldguide.curation.semi import (PseudoEstimate, estimate_pseudo_gain, fit_semi_supervised, pseudo_mixup,
                                      select_pseudo_labels)
from fieldguide.errors import ConfigError, NotReadyError
from fieldguide.models.embed import embed
from fieldguide.models.fit import predict_head
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from conftest import CLASS_COLORS, blobs, make_image, use_tiny_backbone


def test_selection_thresholds_and_balances_classes():
    probs = np.array([[0.9, 0.1, 0.0]] * 6 + [[0.2, 0.75, 0.05]] * 2 + [[0.1, 0.1, 0.8]] + [[0.5, 0.4, 0.1]])
    probs[0, 0] = 0.95
    idx, labels, conf = select_pseudo_labels(probs, 0.7, balance=False)
    assert len(idx) == 9 and 9 not in idx  # the 0.5 row is below the threshold
    idx, labels, conf = select_pseudo_labels(probs, 0.7)
    counts = np.bincount(labels, minlength=3)
    assert counts.tolist() == [2, 2, 1]  # class 0 capped at the median count (2), its most confident first
    assert 0 in idx
    with pytest.raises(ValueError):
        select_pseudo_labels(probs, 1.5)


def test_pseudo_mixup_weights_by_confidence():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    conf = torch.tensor([0.9, 0.3])
    mixed, perm, lam = pseudo_mixup(x, conf, torch.Generator().manual_seed(1))
    for i in range(2):
        j = int(perm[i])
        assert lam[i] == pytest.approx(float(conf[i] / (conf[i] + conf[j])))
        assert torch.allclose(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[j])


def test_teacher_learns_from_unlabeled_data():
    X, y = blobs(n_classes=5, per_class=60, spread=1.0)
    rng = np.random.default_rng(0)
    lab = np.zeros(len(y), dtype=bool)
    for c in range(5):
        lab[rng.choice(np.where(y == c)[0], 2, replace=False)] = True
    res = fit_semi_supervised(X[lab], y[lab], X[~lab], 5, threshold=0.5, epochs=30, lr=1e-2, batch_size=8)
    acc = (predict_head(res.teacher, X[~lab]).argmax(axis=1) == y[~lab]).mean()
    assert acc > 0.9
    assert sum(h["pseudo_used"] for h in res.history) > 0


def _few_labels(y: np.ndarray, k: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    lab = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        lab[rng.choice(np.where(y == c)[0], k, replace=False)] = True
    return lab


SEMI = {"epochs": 30, "lr": 1e-2, "batch_size": 8}  # the teacher of test_teacher_learns_from_unlabeled_data


def test_abstention_keeps_pseudo_labels_that_help():
    # overlapping clusters, 3 labels a class: the unlabeled pool from the same clusters fills the gaps
    X, y = blobs(n_classes=5, per_class=60, spread=1.5)
    lab = _few_labels(y, 3)
    est = estimate_pseudo_gain(X[lab], y[lab], X[~lab], 5, student=TrainSection(), semi=SEMI, threshold=0.5)
    assert est.folds == 3  # min(5, smallest class count)
    assert est.pseudo_labels > 0
    assert est.accuracy_with > est.accuracy_without and est.helps
    assert "would raise" in est.reason()


def test_abstention_when_the_pool_comes_from_another_distribution():
    # the same clusters seen through a shift (another camera, another season): confident, wrong pseudo-labels
    X, y = blobs(n_classes=5, per_class=60, spread=1.5)
    lab = _few_labels(y, 3)
    shifted = X[~lab] + 6 * np.random.default_rng(3).normal(size=X.shape[1])
    est = estimate_pseudo_gain(X[lab], y[lab], shifted, 5, student=TrainSection(), semi=SEMI, threshold=0.5)
    assert est.pseudo_labels > 0
    assert est.accuracy_with < est.accuracy_without and not est.helps
    assert "would lower" in est.reason()


def test_abstention_breaks_ties_and_needs_two_labels_a_class():
    X, y = blobs(n_classes=3, per_class=20, spread=0.3)
    lab = _few_labels(y, 4)
    # nothing passes a threshold of 1: with and without are the same training, a tie abstains
    est = estimate_pseudo_gain(X[lab], y[lab], X[~lab], 3, student=TrainSection(), semi=SEMI, threshold=1.0)
    assert est.folds == 4 and est.pseudo_labels == 0 and est.gain == 0 and not est.helps
    assert "no pseudo-label passes the threshold" in est.reason()
    one = lab.copy()
    one[np.where(lab & (y == 0))[0][1:]] = False  # class 0 keeps one label: no fold can hold it out
    est = estimate_pseudo_gain(X[one], y[one], X[~one], 3, student=TrainSection(), semi=SEMI, threshold=0.5)
    assert est.folds == 4  # the estimate runs on classes 1 and 2, which can be held out
    one[np.where(lab & (y == 1))[0][1:]] = False  # class 1 too: one class left, no estimate
    est = estimate_pseudo_gain(X[one], y[one], X[~one], 3, student=TrainSection(), semi=SEMI, threshold=0.5)
    assert est.folds == 0 and not est.helps and "fewer than 2 classes with 2 or more" in est.reason()
    assert est.as_dict()["accuracy_with"] is None  # JSON-ready: no NaN


def test_a_tie_of_top1_is_broken_by_held_out_cross_entropy():
    lower = PseudoEstimate(3, 0.8, 0.8, 40.0, loss_with=0.6, loss_without=0.7)
    higher = PseudoEstimate(3, 0.8, 0.8, 40.0, loss_with=0.7, loss_without=0.6)
    assert lower.helps and "they help" in lower.reason()
    assert not higher.helps and "they do not help" in higher.reason()
    # top-1 decides before cross-entropy does
    assert not PseudoEstimate(3, 0.7, 0.8, 40.0, loss_with=0.1, loss_without=0.9).helps
    assert PseudoEstimate(3, 0.9, 0.8, 40.0, loss_with=0.9, loss_without=0.1).helps


def test_pseudolabel_step_abstains_and_changes_nothing(ingested, tiny_weights, tmp_path):
    p = use_tiny_backbone(ingested, tiny_weights)
    ds = add_unlabeled(p, tmp_path / "extra", "a", per_class=4, seed=300)
    first = pseudolabel(p, threshold=0.0, epochs=5, abstain=False)  # pseudo-labels of an earlier run
    ds.reload()
    before = sorted(zip(ds.match_tags(PSEUDO_TAG).values("id"), ds.match_tags(PSEUDO_TAG).values("pseudo_label.label")))
    assert len(before) == first.selected > 0
    # threshold 1: no pseudo-label passes in any fold, so they cannot help
    report = pseudolabel(p, threshold=1.0, epochs=5)
    assert report.abstained and report.selected == 0 and report.per_class == {}
    assert report.estimate["folds"] >= 2 and not report.estimate["helps"]
    ds.reload()
    after = sorted(zip(ds.match_tags(PSEUDO_TAG).values("id"), ds.match_tags(PSEUDO_TAG).values("pseudo_label.label")))
    assert after == before  # nothing written, nothing tagged, the earlier run's pseudo-labels as they were
    wh = store.warehouse(p)
    run = wh.query("SELECT status, message FROM runs WHERE run_id = ?", [report.run_id]).iloc[0]
    assert run["status"] == "completed" and run["message"] == f"abstained: {report.reason}"
    metrics = wh.query("SELECT name, value FROM metrics WHERE run_id = ?", [report.run_id]).set_index("name")["value"]
    assert metrics["abstained"] == 1 and "pseudo_labels" not in metrics

    from fieldguide.config import dump_config

    p.config_path.write_text(dump_config(p.config))  # the CLI reads the tiny backbone from the project file
    res = CliRunner().invoke(app, ["--project", str(p.root), "pseudolabel", "--threshold", "1.0", "--epochs", "5"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pseudolabel abstained, nothing written: no pseudo-label passes")


def test_pseudolabel_step_never_touches_ground_truth_until_accepted(ingested, tiny_weights, tmp_path):
    p = use_tiny_backbone(ingested, tiny_weights)
    ds = add_unlabeled(p, tmp_path / "extra", "u", per_class=4, seed=500)
    with pytest.raises(NotReadyError):
        accept_pseudo_labels(p)
    report = pseudolabel(p, threshold=0.0, epochs=10, abstain=False)
    assert report.unlabeled == 12 and report.selected > 0
    ds.reload()
    pseudo = ds.match_tags(PSEUDO_TAG)
    assert len(pseudo) == report.selected
    assert set(pseudo.values("ground_truth")) == {None}  # never ground truth by itself
    assert set(pseudo.values("pseudo_label.origin")) == {"pseudo"}
    assert ds.has_saved_view("pseudo_labeled")
    from fieldguide.platform.status import project_status

    assert project_status(p)["pseudo_labeled"] == report.selected
    again = pseudolabel(p, threshold=0.0, epochs=10, abstain=False)  # re-running replaces, never piles up
    ds.reload()
    assert len(ds.match_tags(PSEUDO_TAG)) == again.selected
    from fieldguide.dashboards.queries import class_fill

    fill = class_fill(store.warehouse(p))  # the dashboards see them as pending, not as labels
    assert fill["pseudo_pending"].sum() == again.selected and fill["pseudo_accepted"].sum() == 0
    n = accept_pseudo_labels(p)
    ds.reload()
    assert n == again.selected
    fill = class_fill(store.warehouse(p))
    assert fill["pseudo_pending"].sum() == 0 and fill["pseudo_accepted"].sum() == n
    accepted = ds.match_tags("train").match({"filepath": {"$regex": "/u_"}})
    assert len(accepted) == n
    for sample in accepted:
        assert sample.ground_truth.label == sample.pseudo_label.label
        assert sample.label_history[-1].source == "pseudo" and sample.label_history[-1].actor == p.config.project.curator


def test_cli_pseudolabel_needs_unlabeled_samples(ingested, tiny_weights):
    from fieldguide.config import dump_config

    p = use_tiny_backbone(ingested, tiny_weights)
    p.config_path.write_text(dump_config(p.config))
    embed(p)
    res = CliRunner().invoke(app, ["--project", str(p.root), "pseudolabel"])
    assert res.exit_code == 1 and "no unlabeled samples" in res.output


def test_finetune_mode_pseudo_labels_from_weak_and_strong_views(ingested, tiny_weights, tmp_path):
    p = use_tiny_backbone(ingested, tiny_weights)
    p.config.train.finetune_batch_size = 4
    ds = add_unlabeled(p, tmp_path / "extra", "v", per_class=2, seed=700)
    report = pseudolabel(p, mode="finetune", threshold=0.0, epochs=1, mu=1, abstain=False)
    assert report.unlabeled == 6 and report.selected > 0
    ds.reload()
    assert set(ds.match_tags(PSEUDO_TAG).values("ground_truth")) == {None}
    with pytest.raises(ConfigError, match="pseudo-labeling mode 'sideways': use one of head, finetune"):
        pseudolabel(p, mode="sideways")


def test_pseudolabel_settings_come_from_the_project_file_and_flags_override_them(ingested, tiny_weights, tmp_path):
    from fieldguide.config import dump_config

    p = use_tiny_backbone(ingested, tiny_weights)
    add_unlabeled(p, tmp_path / "extra", "w", per_class=2, seed=900)
    settings = {"threshold": 0.0, "ema_decay": 0.99, "mu": 1, "lambda_u": 0.5, "epochs": 2, "balance": False,
                "abstain": False}
    for key, value in settings.items():
        setattr(p.config.pseudolabel, key, value)
    p.config_path.write_text(dump_config(p.config))
    runner, wh = CliRunner(), store.warehouse(p)

    res = runner.invoke(app, ["--project", str(p.root), "pseudolabel", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    # threshold 0 without balancing keeps every unlabeled sample
    assert report["threshold"] == 0.0 and report["selected"] == report["unlabeled"] == 6
    used = json.loads(wh.query("SELECT config FROM runs WHERE run_id = ?", [report["run_id"]]).iloc[0, 0])
    assert {k: used[k] for k in settings} == settings and used["mode"] == "head"

    res = runner.invoke(app, ["--project", str(p.root), "pseudolabel", "--epochs", "3", "--balance", "--json"])
    assert res.exit_code == 0, res.output
    used = json.loads(wh.query("SELECT config FROM runs WHERE run_id = ?",
                               [json.loads(res.stdout)["run_id"]]).iloc[0, 0])
    assert (used["epochs"], used["balance"], used["mu"], used["threshold"]) == (3, True, 1, 0.0)

    p.config.pseudolabel.mode = "sideways"
    p.config_path.write_text(dump_config(p.config))
    res = runner.invoke(app, ["--project", str(p.root), "pseudolabel"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == ("error: pseudo-labeling mode 'sideways': use one of head, finetune "
                                                   "(--mode, or pseudolabel.mode in fieldguide.toml)")


def test_fill_takes_its_default_from_scarce_class_count(ingested):
    from fieldguide.config import dump_config

    p = ingested
    counts = store.dataset(p).match_tags("train").count_values("ground_truth.label")
    runner = CliRunner()
    for n in (min(counts.values()), max(counts.values()) + 1):
        p.config.curation.scarce_class_count = n
        p.config_path.write_text(dump_config(p.config))
        res = runner.invoke(app, ["--project", str(p.root), "fill"])
        assert res.exit_code == 0, res.output
        scarce = sum(1 for c in counts.values() if c < n)
        assert res.stdout.splitlines()[0] == f"{scarce} classes with fewer than {n} labeled training samples"
    assert scarce == len(counts)  # the larger count makes every class scarce
    res = runner.invoke(app, ["--project", str(p.root), "fill", "--min-per-class", "1"])  # the flag wins
    assert res.stdout.splitlines()[0] == "0 classes with fewer than 1 labeled training samples"


def add_unlabeled(p, folder, prefix: str, *, per_class: int, seed: int):
    """Ingest ``per_class`` more images per class, then make them the ``unlabeled`` split (no
    ground truth), and embed them; returns the dataset."""
    for cls, color in CLASS_COLORS.items():
        for i in range(per_class):
            make_image(folder / cls / f"{prefix}_{cls}_{i}.jpg", color, seed=seed + i)
    ingest(p, folder, fmt="folder")
    ds = store.dataset(p)
    new = ds.match({"filepath": {"$regex": f"/{prefix}_"}})
    new.untag_samples("train")
    new.tag_samples("unlabeled")
    new.set_field("ground_truth", None).save()
    embed(p)
    return ds
