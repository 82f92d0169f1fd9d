"""Proteus distillation: the losses, the loop on tiny images, resume, and ``distilled:<run>`` as a backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_image, use_tiny_backbone
from typer.testing import CliRunner

from fieldguide.cli.main import app
from fieldguide.errors import ModelError
from fieldguide.models import checkpoints
from fieldguide.models.backbones import load_backbone, timm_backbone
from fieldguide.models.distill import LEVELS, create_student, distill_images, level_loss
from fieldguide.models.distill_views import CachedViews, view_batches
from fieldguide.platform import store


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    colors = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (220, 220, 40)]
    return [str(make_image(root / f"{i}.jpg", colors[i % 4], size=48, seed=i)) for i in range(8)]


def test_level_loss_is_zero_on_the_target_and_pools_maps_to_the_common_grid():
    torch.manual_seed(0)
    t = torch.randn(4, 6)
    target = torch.nn.functional.layer_norm(t, (6,))
    assert float(level_loss(target, t, "mse+cosine")) == pytest.approx(0.0, abs=1e-5)
    assert float(level_loss(-target, t, "cosine")) == pytest.approx(2.0, abs=1e-5)
    # a 4x4 student map against a 2x2 teacher map: compared on 2x2 after average pooling
    teacher_map = torch.randn(2, 6, 2, 2)
    student_map = teacher_map.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    student_map = torch.nn.functional.layer_norm(student_map.permute(0, 2, 3, 1), (6,)).permute(0, 3, 1, 2)
    assert float(level_loss(student_map, teacher_map, "mse")) == pytest.approx(0.0, abs=1e-5)
    assert float(level_loss(torch.zeros(2, 6, 4, 4), teacher_map, "mse")) == pytest.approx(1.0, abs=1e-3)


def test_distillation_losses_fall_on_tiny_images(tiny_images):
    torch.manual_seed(0)
    teacher = timm_backbone("test_efficientnet", None)
    student, kwargs = create_student("test_vit", 32)
    assert kwargs == {"img_size": 32} and student.input_size == 32
    _, state = distill_images(teacher, student, tiny_images, epochs=10, batch_size=8, lr=3e-3, progress=False)
    first, last = state.curves[0], state.curves[-1]
    assert [c["epoch"] for c in state.curves] == list(range(1, 11)) and state.images == 10 * len(tiny_images)
    assert set(first) == {"epoch", "loss", *(f"loss_{level}" for level in LEVELS)}
    assert np.mean([c["loss"] for c in state.curves[-2:]]) < 0.85 * first["loss"]
    for level in LEVELS:  # each objective, not only their sum
        assert last[f"loss_{level}"] < 0.9 * first[f"loss_{level}"], level
    with pytest.raises(ModelError, match="unknown timm architecture"):
        create_student("vit_nonexistent", 32)


def test_a_stopped_distillation_resumes_mid_epoch(tiny_images):
    teacher = timm_backbone("test_efficientnet", None)
    saved = []

    def stop_after_third_batch(state, model_state, optim_state, schedule_state):
        saved.append({"state": state, "model": model_state, "optimizer": optim_state, "schedule": schedule_state})
        if state.epoch == 1 and state.step == 1:
            raise KeyboardInterrupt  # killed after the checkpoint of epoch 2's first batch

    torch.manual_seed(0)
    student, _ = create_student("test_vit", 32)
    with pytest.raises(KeyboardInterrupt):
        distill_images(teacher, student, tiny_images, epochs=3, batch_size=4, checkpoint=stop_after_third_batch,
                       checkpoint_every=1, progress=False)
    import copy

    last = copy.deepcopy(saved[-1])
    assert (last["state"].epoch, last["state"].step, last["state"].images) == (1, 1, 12)
    fresh, _ = create_student("test_vit", 32)  # a new process: random weights until the checkpoint loads
    _, state = distill_images(teacher, fresh, tiny_images, epochs=3, batch_size=4, state=last["state"],
                              resumed=last, progress=False)
    assert state.epoch == 3 and state.images == 3 * len(tiny_images)  # no batch done twice, none left out
    assert len(state.curves) == 3 and state.curves[0] == last["state"].curves[0]


def test_distill_step_resumes_on_rerun_and_the_student_embeds(ingested, tiny_weights, monkeypatch):
    p = use_tiny_backbone(ingested, tiny_weights)
    original = checkpoints.CheckpointWriter.__call__

    def interrupt(self, state, *args):
        original(self, state, *args)
        if state.epoch == 1:
            raise KeyboardInterrupt

    runner = CliRunner()
    args = ["--project", str(p.root), "distill", "--student", "test_vit", "--teacher", "timm/test_efficientnet",
            "--teacher-weights", str(tiny_weights), "--image-size", "32", "--epochs", "2", "--batch-size", "6",
            "--levels", "token,patch"]
    monkeypatch.setattr(checkpoints.CheckpointWriter, "__call__", interrupt)
    with pytest.raises(KeyboardInterrupt):
        from fieldguide.models.distill import distill

        distill(p, "test_vit", teacher="timm/test_efficientnet", teacher_weights=str(tiny_weights), image_size=32,
                epochs=2, batch_size=6, levels=("token", "patch"), progress=False)
    monkeypatch.setattr(checkpoints.CheckpointWriter, "__call__", original)
    wh = store.warehouse(p)
    stopped = wh.query("SELECT run_id, status FROM runs WHERE kind = 'distill'")
    assert stopped["status"].tolist() == ["failed"]
    run_id = stopped["run_id"].iloc[0]

    result = runner.invoke(app, args + ["--json"])  # the same command again: it resumes that run
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["run_id"] == run_id and report["resumed_from"] == "epoch 1, batch 0"
    assert report["n_images"] == 18 and report["backbone"] == f"distilled:{run_id}"
    assert wh.query("SELECT status FROM runs WHERE run_id = ?", [run_id]).iloc[0, 0] == "completed"
    assert wh.query("SELECT count(*) FROM curves WHERE run_id = ? AND name = 'loss'", [run_id]).iloc[0, 0] == 2

    bb = load_backbone(f"distilled:{run_id}", runs_dir=p.runs_dir)
    assert bb.input_size == 32 and not any(k.startswith("heads") for k in bb.model.state_dict())
    result = runner.invoke(app, ["--project", str(p.root), "embed", "--backbone", f"distilled:{run_id}", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["embedded"] == 24
    from fieldguide.models.embed import load_embeddings

    ids, X = load_embeddings(p, f"distilled:{run_id}")
    assert X.shape == (24, bb.dim) and np.isfinite(X).all() and X.std(axis=0).max() > 0
    from fieldguide.models.predict import predict

    report = predict(p, head="logreg", folds=3, backbone=f"distilled:{run_id}")  # and flag, like any backbone
    assert report.n_cross_validated == 18 and 0 <= report.oof_top1 <= 1

    bad = runner.invoke(app, ["--project", str(p.root), "embed", "--backbone", "distilled:nope"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: backbone 'distilled:nope': no distilled student")
    bad = runner.invoke(app, ["--project", str(p.root), "distill", "--student", "vit_nonexistent"])
    assert bad.exit_code == 1 and "error: student 'vit_nonexistent': unknown timm architecture" in bad.stderr


def test_cached_views_are_built_once_then_epochs_train_on_them(tiny_images, tmp_path):
    teacher = timm_backbone("test_efficientnet", None)
    torch.manual_seed(0)
    student, _ = create_student("test_vit", 32)
    path = tmp_path / "views.pt"
    _, state = distill_images(teacher, student, tiny_images, epochs=8, batch_size=8, lr=3e-3, cached_views=2,
                              teacher_size=48, token_weight=2.0, views_path=path, progress=False)
    views = CachedViews(**torch.load(path, weights_only=False))
    assert views.images.shape == (8, 2, 3, 32, 32) and views.images.dtype == torch.uint8 and bool(views.ok.all())
    assert views.targets["token"].shape[:2] == (8, 2) and views.targets["patch"].ndim == 5
    assert not torch.equal(views.images[:, 0], views.images[:, 1])  # two different augmentations
    assert state.views_seconds > 0 and state.images == 8 * len(tiny_images)
    assert np.mean([c["loss"] for c in state.curves[-2:]]) < 0.85 * state.curves[0]["loss"]
    batches = list(view_batches(views, epoch=3, start_step=1, batch_size=3, seed=0,
                                mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1)))
    assert [len(x) for x, _ in batches] == [3, 2]  # the resumed epoch's batches after the first
    # a resumed run loads the saved views instead of calling the teacher again
    views.images.zero_()
    torch.save(views.__dict__, path)
    fresh, _ = create_student("test_vit", 32)
    _, again = distill_images(teacher, fresh, tiny_images, epochs=1, batch_size=8, cached_views=2, teacher_size=48,
                              views_path=path, progress=False)
    assert again.views_seconds < state.views_seconds
