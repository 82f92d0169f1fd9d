"""bench backbones: FLOP counting and gradient activity on tiny timm models, embedding quality on
tiny arrays with known answers, and the verb end to end on a tiny store with two tiny backbones."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fieldguide import names
from fieldguide.cli import app
from fieldguide.models import embedding_quality as eq
from fieldguide.models.backbone_bench import class_groups, group_scores
from fieldguide.models.backbones import count_macs, count_params, timm_backbone
from fieldguide.models.gradients import block_gradient_norms, parameter_blocks
from fieldguide.platform.warehouse import Warehouse


def _tiny(arch: str = "test_efficientnet", size: int = 32):
    torch.manual_seed(0)
    bb = timm_backbone(arch, None)
    bb.input_size = size
    bb.model.eval()
    return bb


def _hand_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of every convolution and linear layer, counted from their output shapes by hooks."""
    total = []

    def conv(m, _, out):
        total.append(out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, _, out):
        total.append(out.numel() * m.in_features)

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_vit"])
def test_count_macs_equals_the_layers_counted_by_hand(arch):
    bb = _tiny(arch, 32 if arch == "test_efficientnet" else 160)
    expected = _hand_macs(bb.model, torch.zeros(1, 3, bb.input_size, bb.input_size))
    if arch == "test_vit":  # attention: q @ k^T and attn @ v, tokens x tokens x dim each, in every block
        tokens, dim = (bb.input_size // 16) ** 2 + 1, bb.model.embed_dim
        expected += len(bb.model.blocks) * 2 * tokens * tokens * dim
    assert count_macs(bb) == expected
    assert count_macs(bb, batch_size=2) == 2 * count_macs(bb)
    assert count_params(bb.model) == sum(p.numel() for p in bb.model.parameters()) > 0
    assert not bb.model.training  # measured in eval mode, left as it was


def test_gradient_norms_per_block_match_a_backward_pass_by_hand():
    bb = _tiny()
    blocks = parameter_blocks(bb.model)
    names_in_blocks = [n for ns in blocks.values() for n in ns]
    assert sorted(names_in_blocks) == sorted(n for n, _ in bb.model.named_parameters())  # a partition
    assert list(blocks)[0] == "conv_stem" and "blocks.0" in blocks and list(blocks)[-1] == "conv_head"
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    # by hand: the same head (seeded as the function seeds it), one backward pass
    ref = __import__("copy").deepcopy(bb.model).train()
    torch.manual_seed(3)
    head = nn.Linear(bb.dim, 3)
    nn.CrossEntropyLoss()(head(ref(x)), y).backward()
    params = dict(ref.named_parameters())
    want = {b: math.sqrt(sum(float(params[n].grad.pow(2).sum()) for n in ns)) for b, ns in blocks.items()}
    norms = block_gradient_norms(bb.model, bb.dim, 3, [(x, y)], steps=2, seed=3, progress=False)
    assert len(norms) == 2 * len(blocks)
    first = norms[norms["step"] == 0].set_index("block")["grad_norm"]
    assert first.to_dict() == pytest.approx(want, rel=1e-4)
    assert norms["depth"].min() == 0 and norms["depth"].max() == 1
    assert (norms[norms["step"] == 1]["grad_norm"] > 0).all()  # the batch is reused for step 2


class _Encoder(nn.Module):  # a transformers-like layout: embeddings, encoder.layer[i], a pooler
    def __init__(self):
        super().__init__()
        self.embeddings = nn.Linear(4, 4)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)])
        self.pooler = nn.Linear(4, 4)


def test_blocks_of_a_model_without_a_group_matcher_cut_at_its_longest_sequence():
    blocks = parameter_blocks(_Encoder())
    assert list(blocks) == ["stem", "encoder.layer.0", "encoder.layer.1", "encoder.layer.2", "head"]
    assert blocks["stem"] == ["embeddings.weight", "embeddings.bias"]
    assert blocks["head"] == ["pooler.weight", "pooler.bias"]


def test_embedding_quality_known_answers():
    # class 0 at 0° and 90°, class 1 at 180° and 270° on the unit circle (scaled: normalised first)
    X = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=float) * np.array([[3], [1], [2], [5]])
    y = np.array([0, 0, 1, 1])
    r2 = math.sqrt(2)
    assert eq.alignment(X, y) == pytest.approx(2.0)  # both same-class pairs at distance √2
    assert eq.distance_ratio(X, y) == pytest.approx(r2 / ((2 + 2 + r2 + r2) / 4))
    sq = np.array([2, 4, 2, 2, 4, 2])  # squared distances of the 6 pairs
    assert eq.uniformity(X) == pytest.approx(math.log(np.mean(np.exp(-2 * sq))))
    # two tight clusters: silhouette 1, alignment 0, ratio 0, kNN right (and wrong on a swapped label)
    T = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    assert eq.silhouette(T, y) == pytest.approx(1.0)
    assert eq.alignment(T, y) == pytest.approx(0.0) and eq.distance_ratio(T, y) == pytest.approx(0.0)
    assert eq.knn_top1(T, y, np.array([[2, 0.1], [0.1, 3]]), np.array([0, 1])) == 1.0
    assert eq.knn_top1(T, y, np.array([[2, 0.1], [0.1, 3]]), np.array([0, 0])) == 0.5
    with pytest.raises(eq.FieldguideError, match="2 or more classes"):
        eq.silhouette(T, np.zeros(4, dtype=int))


def test_predictions_read_at_a_taxonomy_rank():
    groups = ["Quercus", "Quercus", "Pinus", None]  # class 3 has no genus
    y = np.array([0, 1, 2, 2, 3])
    pred = np.array([1, 1, 2, 0, 3])  # 0->1 stays in Quercus; one Pinus read as Quercus
    scores, rows = group_scores(y, pred, groups)
    assert scores[names.TOP1] == pytest.approx(3 / 4)
    by = {r["class"]: r for r in rows}
    assert by["Pinus"]["recall"] == 0.5 and by["Pinus"]["precision"] == 1.0 and by["Pinus"]["support"] == 2
    assert by["Quercus"]["precision"] == pytest.approx(2 / 3) and by["Quercus"]["recall"] == 1.0


def test_class_groups_come_from_the_taxa_table(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    assert class_groups(wh, ["a"]) == {}
    wh.write("taxa", [{"class": c, "rank": r, "name": n, "depth": d} for c, r, n, d in (
        ("Quercus agrifolia", "genus", "Quercus", 1), ("Quercus agrifolia", "species", "Quercus agrifolia", 2),
        ("Quercus agrifolia", "family", "Fagaceae", 0), ("Pinus radiata", "genus", "Pinus", 1))])
    got = class_groups(wh, ["Pinus radiata", "Quercus agrifolia"])
    assert got == {"family": [None, "Fagaceae"], "genus": ["Pinus", "Quercus"]}


@pytest.mark.slow  # two backbones embed, fine-tune and are timed: ~50 s on a loaded 2-core machine
def test_bench_backbones_json_on_a_tiny_store_with_two_tiny_backbones(ingested, tiny_weights, tmp_path):
    from safetensors.torch import save_file
    import timm

    torch.manual_seed(1)
    vit = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(vit))
    result = CliRunner().invoke(app, [
        "--project", str(ingested.root), "bench", "backbones", "--json", "--steps", "1", "--batch-size", "4",
        "--cost-batch-size", "2", "--backbones", f"timm/test_efficientnet={tiny_weights},timm/test_vit={vit}"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rows = {r["backbone"]: r for r in out["backbones"]}
    assert list(rows) == ["timm/test_efficientnet", "timm/test_vit"]
    wh = Warehouse(ingested.warehouse_path)
    for name, r in rows.items():
        assert r["n"] == 6 and 0 <= r["top1"] <= 1 and r["top5"] == 1.0  # 3 classes: top-5 is every class
        assert r["params"] == count_params(timm.create_model(name.split("/")[1], num_classes=0))
        assert r["images_per_s"] > 0 and r["flops"] == 2 * r["macs"]
        assert len(r["per_class"]) == 3 and r["grad_norm_by_block"]
        stored = wh.query("SELECT split, name, value FROM metrics WHERE run_id = ?", [r["run_id"]])
        for split, metric, value in stored.itertuples(index=False):
            assert value == pytest.approx(r[metric]), (split, metric)
        assert set(stored["split"]) == {"test", names.EMBEDDING_SPLIT, names.COST_SPLIT, names.GRADIENTS_SPLIT}
        curves = wh.query("SELECT name FROM curves WHERE run_id = ?", [r["run_id"]])
        assert sorted(set(curves["name"])) == sorted(names.GRAD_NORM_PREFIX + b["block"]
                                                     for b in r["grad_norm_by_block"])
    runs = wh.query("SELECT kind, status, config FROM runs WHERE kind = ?", [names.BENCH_BACKBONE])
    assert list(runs["status"]) == ["completed"] * 2
    assert all(__import__("pathlib").Path(p).is_file() for p in out["plots"]) and len(out["plots"]) == 2
    from fieldguide.models.backbones import load_backbone
    from fieldguide.models.embed import fully_embedded
    from fieldguide.platform.store import release_database

    try:  # embedded now: a second bench needs no write lock; other weights of the same name are not
        assert fully_embedded(ingested, load_backbone("timm/test_efficientnet", tiny_weights))
        assert not fully_embedded(ingested, timm_backbone("test_efficientnet", None))
    finally:
        release_database()
    bad = CliRunner().invoke(app, ["--project", str(ingested.root), "bench", "backbones", "--backbones", "nope"])
    assert bad.exit_code != 0 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.output


def test_a_store_without_a_test_split_gets_the_suites_split_with_photos_of_one_observation_together():
    from fieldguide.suite import suite_split, table_split

    table = pd.DataFrame({"label": ["a"] * 6 + ["b"] * 4, "filepath": [f"/x/{i}.jpg" for i in range(10)],
                          "observation_id": ["o1", "o1", "o2", "o3", "o4", "o5", "o6", "o6", "o7", "o8"]})
    mask = table_split(table)
    assert mask.tolist() == suite_split(table["label"], table["filepath"], table["observation_id"]).tolist()
    assert mask[0] == mask[1] and mask[6] == mask[7]  # one observation's photos on one side
    assert table_split(table.drop(columns="observation_id")).tolist() == suite_split(table["label"], table["filepath"]).tolist()
