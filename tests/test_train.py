"""Noise-tolerant training: the entropy schedule, GRPO, the loop, resume, the train/retrain steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.config import dump_config
from fieldguide.curation.flag import flag
from fieldguide.errors import ConfigError, NotReadyError
from fieldguide.models import checkpoints
from fieldguide.models import fit as ft
from fieldguide.models import train as tr
from fieldguide.models.embed import embed
from fieldguide.models.entropy import EntropySchedule, entropy, grpo_advantages, grpo_loss, training_loss
from fieldguide.models.predict import predict
from fieldguide.platform import review, store
from conftest import blobs, use_tiny_backbone


# ---- the schedule and the losses ----------------------------------------------------------------------
def test_schedule_explores_then_exploits_and_reverses():
    s = EntropySchedule(lam_max=0.5, lam_min=0.1, switch_at=0.8)
    assert s.lam(0.0) == 0.5 and s.lam(0.79) == 0.5
    assert s.lam(0.8) == -0.1 and s.lam(0.99) == -0.1
    r = EntropySchedule(lam_max=0.5, lam_min=0.1, switch_at=0.8, reverse=True)
    assert r.lam(0.1) == -0.1 and r.lam(0.9) == 0.5
    with pytest.raises(ValueError, match="switch rule"):
        EntropySchedule(rule="sometimes")


def test_saturation_switches_when_entropy_stops_rising():
    s = EntropySchedule(switch_at=0.9, rule="saturation", window=2, patience=2, tolerance=0.01)
    rising = [1.0, 1.2, 1.4, 1.6, 1.8]
    for i, h in enumerate(rising):
        s.observe(h, (i + 1) / 20)
    assert s.switched_at is None and s.lam(0.5) == 0.5
    for i, h in enumerate([1.8, 1.8, 1.8, 1.8], start=len(rising)):
        s.observe(h, (i + 1) / 20)
    # moving averages (window 2) 1.1 1.3 1.5 1.7 1.8 1.8 1.8 1.8: the last 2 gains are both 0 first
    # after the 8th epoch, at 8/20 of training
    assert s.switched_at == pytest.approx(0.4)
    assert s.lam(0.4) == -0.1 and s.lam(0.39) == 0.5
    # the fraction rule never moves the switch
    f = EntropySchedule(switch_at=0.8)
    for i in range(10):
        f.observe(1.0, (i + 1) / 20)
    assert f.switched_at is None


def test_grpo_advantage_normalises_groups_and_zeroes_equal_ones():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    adv = grpo_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-4)
    assert torch.equal(adv[1], torch.zeros(4)) and torch.equal(adv[2], torch.zeros(4))
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(4))


def test_grpo_gives_no_gradient_when_every_sample_is_rewarded():
    logits = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]], requires_grad=True)
    loss = grpo_loss(logits, torch.tensor([0, 1]), k=8, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0
    # mixed rewards do give a gradient, pushing up the rewarded label
    logits = torch.zeros(1, 3, requires_grad=True)
    grpo_loss(logits, torch.tensor([2]), k=64, generator=torch.Generator().manual_seed(0)).backward()
    assert logits.grad[0, 2] < 0  # gradient descent raises the given label's logit


def test_two_stage_loss_adds_the_signed_entropy_term():
    logits = torch.tensor([[2.0, 0.5, 0.1], [0.3, 0.2, 1.5]])
    target = torch.tensor([0, 2])
    ce, ent = training_loss("ce", logits, target, 0.5)
    explore, _ = training_loss("two-stage-entropy", logits, target, 0.5)
    exploit, _ = training_loss("two-stage-entropy", logits, target, -0.1)
    assert torch.allclose(explore, ce - 0.5 * entropy(logits).mean())
    assert torch.allclose(exploit, ce + 0.1 * entropy(logits).mean())
    assert torch.allclose(ent, entropy(logits))
    with pytest.raises(ValueError, match="training method"):
        training_loss("sgd", logits, target, 0.0)


def test_sample_weights_reach_the_task_loss_of_every_method():
    import torch.nn.functional as F

    from fieldguide.models.entropy import METHODS

    logits = torch.tensor([[2.0, 0.5, 0.1], [0.3, 0.2, 1.5], [0.1, 1.0, 0.2]])
    target = torch.tensor([0, 0, 1])
    per = F.cross_entropy(logits, target, reduction="none")
    w = torch.tensor([1.0, 0.3, 1.0])
    ce, _ = training_loss("ce", logits, target, 0.0, weight=w)
    assert torch.allclose(ce, (per[0] + 0.3 * per[1] + per[2]) / 2.3)
    dropped, _ = training_loss("ce", logits, target, 0.0, weight=torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(dropped, F.cross_entropy(logits[[0, 2]], target[[0, 2]]))
    two, _ = training_loss("two-stage-entropy", logits, target, 0.5, weight=w)
    assert torch.allclose(two, ce - 0.5 * entropy(logits).mean())
    # a sample of weight 0 gets no gradient from the task loss (λ = 0: no entropy term), in every method
    for method in METHODS:
        grads = []
        for weight in (torch.ones(3), torch.tensor([1.0, 0.0, 1.0])):
            x = torch.zeros(3, 3, requires_grad=True)  # uniform: GRPO's sampled rewards are mixed
            loss, _ = training_loss(method, x, target, 0.0, k=64, weight=weight,
                                    generator=torch.Generator().manual_seed(0))
            loss.backward()
            grads.append(x.grad)
        assert grads[0][1].abs().sum() > 0, method
        assert torch.count_nonzero(grads[1][1]) == 0 and grads[1][[0, 2]].abs().sum() > 0, method


# ---- the loop on arrays -------------------------------------------------------------------------------
def test_fit_head_learns_and_its_margins_expose_flipped_labels():
    X, y = blobs(n_classes=6, per_class=40, spread=1.2)
    rng = np.random.default_rng(0)
    noisy = y.copy()
    flip = rng.choice(len(y), 48, replace=False)
    noisy[flip] = (y[flip] + 1) % 6
    # the defaults: full batch, 200 epochs of one step each
    model, state = ft.fit_head(X, noisy, 6, method="two-stage-entropy", seed=0, progress=False)
    assert (ft.predict_head(model, X).argmax(axis=1) == y).mean() > 0.9
    assert state.trajectories["margin"].shape == (len(y), 200) and not np.isnan(state.trajectories["margin"]).any()
    lam = [c["lambda"] for c in state.curves]
    assert lam[:160] == [0.5] * 160 and lam[160:] == [-0.1] * 40
    sig = ft.trajectory_signals(state.trajectories)
    is_flip = np.zeros(len(y), dtype=bool)
    is_flip[flip] = True
    assert sig["aum"][is_flip].mean() < sig["aum"][~is_flip].mean()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(is_flip, -sig["aum"]) > 0.9


def test_every_method_trains(rng):
    X, y = blobs(n_classes=4, per_class=30)
    for method in ("ce", "two-stage-entropy", "grpo"):
        model, state = ft.fit_head(X, y, 4, method=method, seed=0, progress=False)  # the default recipe
        assert (ft.predict_head(model, X).argmax(axis=1) == y).mean() > 0.85, method
        assert len(state.curves) == 200
        assert model.scale == (8.0 if method == "grpo" else 1.0)  # GRPO's head starts with sharper logits


def test_an_interrupted_fit_resumes_to_the_same_model():
    X, y = blobs(n_classes=4, per_class=20)
    full, _ = ft.fit_head(X, y, 4, method="ce", epochs=6, seed=0, progress=False)
    saved = {}

    def stop_after_3(state, model_state, optim_state, schedule_state):
        saved.update(state=ft.FitState(state.epoch, list(state.curves),
                                       {k: v.copy() for k, v in state.trajectories.items()}),
                     model={k: v.clone() for k, v in model_state.items()},
                     optim=__import__("copy").deepcopy(optim_state))
        if state.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ft.fit_head(X, y, 4, method="ce", epochs=6, seed=0, progress=False, checkpoint=stop_after_3)
    assert saved["state"].epoch == 3
    resumed, state = ft.fit_head(X, y, 4, method="ce", epochs=6, seed=0, progress=False, state=saved["state"],
                                 model_state=saved["model"], optim_state=saved["optim"])
    assert state.epoch == 6 and len(state.curves) == 6
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


# ---- the steps on a real store ------------------------------------------------------------------------
@pytest.fixture
def embedded(ingested, tiny_weights):
    p = use_tiny_backbone(ingested, tiny_weights)
    p.config.train.epochs = 8
    p.config_path.write_text(dump_config(p.config))
    embed(p)
    return p


def test_train_records_metrics_curves_plot_and_trajectories(embedded):
    p = embedded
    report = tr.train(p, method="two-stage-entropy", progress=False)
    assert report.n_train == 18
    wh = store.warehouse(p)
    names = set(wh.query("SELECT DISTINCT name FROM curves WHERE run_id = ?", [report.run_id])["name"])
    assert {"loss", "train_acc", "mean_entropy", "lambda", "eval_acc"} <= names
    test = wh.query("SELECT name, value FROM metrics WHERE run_id = ? AND split = 'test'", [report.run_id])
    assert dict(zip(test["name"], test["value"]))["top1"] == pytest.approx(report.top1)
    # two ways to the same number: the loop's held-out accuracy after the last epoch, and the metrics
    assert report.top1 == pytest.approx(_last_curve(wh, report.run_id, "eval_acc"))
    f1 = wh.query("SELECT f1 FROM class_metrics WHERE run_id = ? AND split = 'test'", [report.run_id])["f1"]
    assert len(f1) == 3 and report.macro_f1 == pytest.approx(f1.mean())
    assert _last_curve(wh, report.run_id, "lambda") == -p.config.train.lam_min  # exploiting at the end
    assert (p.runs_dir / report.run_id / "curves.png").stat().st_size > 5000
    run_id, ids, traj = checkpoints.load_trajectories(p)
    assert run_id == report.run_id and len(ids) == 18 and traj["entropy"].shape == (18, 8)
    assert wh.query("SELECT status FROM runs WHERE run_id = ?", [report.run_id]).iloc[0, 0] == "completed"


def test_a_stopped_training_run_resumes_from_its_checkpoint(embedded, monkeypatch):
    p = embedded
    original = checkpoints.CheckpointWriter.__call__

    def interrupt_at_3(self, state, *args):
        original(self, state, *args)
        if state.epoch == 3:
            raise KeyboardInterrupt  # Ctrl-C after the third epoch's checkpoint

    monkeypatch.setattr(checkpoints.CheckpointWriter, "__call__", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        tr.train(p, method="ce", progress=False)
    monkeypatch.setattr(checkpoints.CheckpointWriter, "__call__", original)
    wh = store.warehouse(p)
    stopped = wh.query("SELECT run_id, status FROM runs WHERE kind = 'train'")
    assert stopped["status"].tolist() == ["failed"]
    run_id = stopped["run_id"].iloc[0]
    report = tr.train(p, resume=run_id, progress=False)
    assert report.run_id == run_id and report.resumed_from_epoch == 3
    assert wh.query("SELECT status FROM runs WHERE run_id = ?", [run_id]).iloc[0, 0] == "completed"
    steps = wh.query("SELECT DISTINCT step FROM curves WHERE run_id = ? ORDER BY step", [run_id])["step"].tolist()
    assert steps == list(range(1, 9))
    with pytest.raises(NotReadyError, match="no checkpoint"):
        tr.train(p, resume="train-nope")


def test_finetune_mode_runs_on_cpu(embedded):
    p = embedded
    p.config.train.finetune_batch_size = 8
    report = tr.train(p, method="grpo", mode="finetune", epochs=1, progress=False)
    assert report.mode == "finetune" and report.n_train == 18
    assert report.top1 == pytest.approx(_last_curve(store.warehouse(p), report.run_id, "eval_acc"))
    assert (p.checkpoints_dir / report.run_id / "last.pt").exists()


def _last_curve(wh, run_id: str, name: str) -> float:
    return wh.query("SELECT value FROM curves WHERE run_id = ? AND name = ? ORDER BY step DESC LIMIT 1",
                    [run_id, name]).iloc[0, 0]


def test_bad_method_is_a_config_error(embedded):
    with pytest.raises(ConfigError, match="training method"):
        tr.train(embedded, method="adamw")


def test_entropy_signal_joins_flag_and_retrain_excludes_flagged(embedded):
    p = embedded
    predict(p, head="logreg", folds=3)
    first = tr.train(p, method="two-stage-entropy", progress=False)
    report = flag(p)
    assert "entropy_aum" in report.signals
    ds = store.dataset(p)
    assert None not in ds.match_tags("train").values("entropy_aum")
    p.config.train.flagged = "exclude"
    again, comparison = tr.retrain(p, progress=False)
    flagged_train = len(ds.match_tags("train").match({"label_issue": True}))
    assert again.excluded == flagged_train and again.n_train == 18 - flagged_train
    assert comparison["previous"] == first.run_id and "delta_top1" in comparison
    # a curator confirms every flagged label: they are resolved, nothing is excluded any more
    flagged_ids = ds.match({"label_issue": True}).values("id")
    labels = dict(zip(flagged_ids, ds.select(flagged_ids, ordered=True).values("ground_truth.label")))
    review.confirm(p, list(labels), actor="test")
    third, _ = tr.retrain(p, progress=False)
    assert third.excluded == 0 and third.n_train == 18
    # flag again: a confirmed label with the same evidence stays decided, so it is not excluded
    flag(p)
    ds.reload()
    rows = zip(*ds.match_tags("train").values(["id", "label_issue", review.FIELD]))
    undecided = [sid for sid, issue, state in rows if issue and state not in review.DECIDED]
    assert set(ds.select(list(labels)).values(review.FIELD)) <= {review.DISMISSED}  # confirmed, and kept so
    fourth, _ = tr.retrain(p, progress=False)
    assert fourth.excluded == len(undecided)


def _margins(project, run_id: str) -> dict[str, np.ndarray]:
    """Per training sample, its given label's margin after each epoch (the run's trajectories.npz)."""
    z = np.load(project.runs_dir / run_id / "trajectories.npz")
    return dict(zip(z["sample_ids"].tolist(), z["margin"]))


def test_downweight_policy_weighs_flagged_samples_in_the_loss(embedded):
    """One red bird labeled blue, flagged. Full-batch CE (18 samples, the default full batch): weight 0 trains the
    very model that excluding the sample trains; weight 0.3 fits its wrong label less than keeping it."""
    p = embedded
    ds = store.dataset(p)
    wrong = ds.match_tags("train").match({"ground_truth.label": "red_bird"}).first().id
    store.set_labels(p, ds, {wrong: "blue_bird"}, source="curator", actor="test")
    predict(p, head="logreg", folds=3)
    assert flag(p).flagged >= 1
    ds.reload()
    flagged = set(ds.match_tags("train").match({"label_issue": True}).values("id"))
    assert wrong in flagged
    runs = {}
    for policy, weight in (("keep", 1.0), ("downweight", 0.3), ("downweight", 0.0), ("exclude", 1.0)):
        p.config.train.flagged_weight = weight
        report, _ = tr.retrain(p, method="ce", flagged=policy, progress=False)
        runs[policy, weight] = report, _margins(p, report.run_id)
    (keep, m_keep), (down, m_down), (zero, m_zero), (excl, m_excl) = runs.values()
    assert (keep.n_train, keep.downweighted, keep.excluded) == (18, 0, 0)
    assert (down.n_train, down.downweighted, down.excluded) == (18, len(flagged), 0)
    assert (excl.n_train, excl.downweighted, excl.excluded) == (18 - len(flagged), 0, len(flagged))
    assert set(m_excl) == set(m_zero) - flagged
    for sid, margin in m_excl.items():  # weight 0 = not there at all
        np.testing.assert_allclose(m_zero[sid], margin, atol=1e-4)
    assert zero.top1 == excl.top1
    # the less a wrong label weighs, the less the model learns it
    assert m_keep[wrong][-1] > m_down[wrong][-1] > m_zero[wrong][-1]
    runs_table = store.warehouse(p).query("SELECT run_id, config FROM runs WHERE kind = 'retrain'")
    assert sorted(json.loads(c)["flagged"] for c in runs_table["config"]) == sorted(
        ["keep", "downweight", "downweight", "exclude"])


def test_cli_train_json(embedded):
    res = CliRunner().invoke(app, ["--project", str(embedded.root), "train", "--method", "ce", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"run_id", "top1", "macro_f1"} <= set(out) and out["method"] == "ce"
    res = CliRunner().invoke(app, ["--project", str(embedded.root), "retrain", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["comparison"]["previous"] == out["run_id"]


def test_loop_runs_every_step_then_skips_unchanged_ones(embedded):
    from fieldguide.loop import run_loop

    p = embedded
    lines: list[str] = []
    first = run_loop(p, echo=lines.append)
    assert first["predict"] == first["flag"] == first["retrain"] == "ran"
    assert first["relabel"].startswith("skipped")  # no Label Studio in this test
    second = run_loop(p, echo=lines.append)
    assert second["predict"].startswith("skipped") and second["retrain"].startswith("skipped")
    # a changed label re-runs predict, flag and retrain
    ds = store.dataset(p)
    sid = ds.match_tags("train").first().id
    store.set_labels(p, ds, {sid: "green_bird" if ds[sid].ground_truth.label != "green_bird" else "red_bird"},
                     source="curator", actor="test")
    third = run_loop(p, echo=lines.append)
    assert third["predict"] == third["flag"] == third["retrain"] == "ran"
    assert any("vs retrain-" in line for line in lines)
