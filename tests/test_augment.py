"""Diffusion augmentation with a tiny random ControlNet pipeline built from configs and saved to a
local folder (no download), the filters, the store bookkeeping and the α-mix in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.config import dump_config
from fieldguide.curation.augment import augment, canny_edges, load_pipeline, prompt_for, true_class_in_top_k
from fieldguide.errors import ConfigError, ModelError
from fieldguide.models.batches import mix_in_augmentations
from fieldguide.models.embed import embed
from fieldguide.models.train import train
from fieldguide.platform import store
from conftest import use_tiny_backbone


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A StableDiffusionControlNetPipeline with random weights, saved without a text encoder."""
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)

    torch.manual_seed(0)
    blocks = dict(block_out_channels=(4, 8), layers_per_block=1, cross_attention_dim=8, norm_num_groups=1,
                  attention_head_dim=2)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **blocks)
    controlnet = ControlNetModel(in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 conditioning_embedding_out_channels=(4, 8), **blocks)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                             controlnet=controlnet, scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("tiny-controlnet")
    pipe.save_pretrained(folder)
    return folder


def test_filters_and_mixing_are_functions_of_arrays():
    probs = np.array([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]])
    assert true_class_in_top_k(probs, 2, 2).tolist() == [True, False]
    assert true_class_in_top_k(probs, np.array([1, 0]), 1).tolist() == [True, True]
    pool = {0: np.array([10, 11]), 2: np.array([12])}
    rng = np.random.default_rng(0)
    assert mix_in_augmentations(np.array([0, 1, 2]), pool, 0.0, rng).tolist() == [0, 1, 2]
    always = mix_in_augmentations(np.array([0, 1, 2]), pool, 1.0, rng)
    assert always[0] in (10, 11) and always[1] == 1 and always[2] == 12
    share = np.mean([mix_in_augmentations(np.array([2]), pool, 0.4, rng)[0] == 12 for _ in range(2000)])
    assert 0.35 < share < 0.45
    assert prompt_for("Black_footed_Albatross", "bird") == "a photo of a Black footed Albatross, a type of bird"


def test_canny_edges_keep_the_structure():
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[8:24, 8:24] = 255
    edges = np.asarray(canny_edges(Image.fromarray(img)))
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) <= {0, 255}
    assert edges[8:24, 8:24].sum() > 0 and edges[:6, :6].sum() == 0  # edges on the square's border only


def test_without_a_local_model_augment_is_one_clear_error(ingested):
    before = len(store.dataset(ingested))
    with pytest.raises(ConfigError, match="no local diffusion model configured"):
        augment(ingested)
    res = CliRunner().invoke(app, ["--project", str(ingested.root), "augment"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "augment.model_dir" in res.stderr
    assert len(store.dataset(ingested)) == before
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        load_pipeline(ingested.root)


def test_augment_end_to_end_with_a_tiny_pipeline(ingested, tiny_weights, tiny_pipeline):
    p = use_tiny_backbone(ingested, tiny_weights)
    p.config.augment.model_dir = str(tiny_pipeline)
    p.config.augment.image_size = 32
    p.config.augment.steps = 2
    p.config.augment.candidates_per_image = 3
    p.config.augment.per_image = 2
    p.config.augment.top_k = 3  # 3 classes: the classifier filter keeps every candidate
    p.config_path.write_text(dump_config(p.config))
    embed(p)
    report = augment(p, classes=["red_bird"])
    f = report.classes["red_bird"]
    assert (f.generated, f.kept, f.rejected_classifier) == (18, 12, 0)  # 6 parents x 3, at most 2 kept each
    ds = store.dataset(p)
    syn = ds.match_tags("synthetic")
    assert len(syn) == 12 and set(syn.values("origin")) == {"synthetic"}
    assert set(syn.values("ground_truth")) == {None}  # never ground truth
    parents = set(ds.match_tags("train").match({"ground_truth.label": "red_bird"}).values("id"))
    assert set(syn.values("parent_id")) == parents
    assert len(list((p.root / "synthetic").rglob("*.png"))) == 12  # rejected candidates are not kept on disk
    assert ds.has_saved_view("synthetic")
    assert augment(p, classes=["red_bird"]).kept == 0  # re-running adds nothing for augmented parents

    # training mixes the augmentations in (their embeddings come from the cache)
    embed(p)
    p.config.augment.alpha = 1.0
    rep = train(p, method="ce", epochs=2, progress=False)
    assert rep.n_train == 18  # synthetic samples are not training samples of their own

    # the classifier filter rejects what it should: random-pipeline noise is not a green bird to the
    # classifier (its top-1 is another class), so with top_k = 1 every candidate is rejected
    p.config.augment.top_k = 1
    green = ds.match_tags("train").match({"ground_truth.label": "green_bird"})
    g = augment(p, classes=["green_bird"]).classes["green_bird"]
    assert (g.generated, g.kept, g.rejected_classifier) == (3 * len(green), 0, 3 * len(green))
    assert len(ds.match_tags("synthetic")) == 12
    assert len(list((p.root / "synthetic").rglob("*.png"))) == 12  # nothing of the rejected ones stays


def test_img2img_baseline_generates_from_the_image(tiny_pipeline):
    from fieldguide.curation.augment import generate

    pipe = load_pipeline(tiny_pipeline, "img2img")
    src = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    images = generate(pipe, src, "a photo of a bird", 2, method="img2img", size=32, steps=4, guidance=1.5,
                      strength=0.5, low=100, high=200, seed=0)
    assert len(images) == 2 and images[0].size == (32, 32)


def test_fill_reports_per_class(ingested, tiny_weights, tiny_pipeline):
    p = use_tiny_backbone(ingested, tiny_weights)
    p.config.augment.model_dir = str(tiny_pipeline)
    p.config.augment.image_size = 32
    p.config.augment.steps = 2
    p.config.augment.candidates_per_image = 1
    p.config.augment.per_image = 1
    p.config.augment.top_k = 3
    p.config_path.write_text(dump_config(p.config))
    embed(p)
    res = CliRunner().invoke(app, ["--project", str(p.root), "fill", "--min-per-class", "10"])
    assert res.exit_code == 0, res.output
    assert "3 classes with fewer than 10" in res.output
    assert "pseudo-labels: skipped (no unlabeled samples" in res.output
    for cls in ("red_bird", "green_bird", "blue_bird"):
        assert f"{cls}: added 6 synthetic, 0 pseudo-labels pending review, rejected 0" in res.output
    from fieldguide.platform.status import project_status

    assert project_status(p)["origins"].get("synthetic") == 18
