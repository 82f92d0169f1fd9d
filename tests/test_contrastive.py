"""Cross-contrastive pre-training (fieldguide.models.contrastive) on tiny arrays, and its text encoder
on a tiny random BERT saved to a folder and on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from fieldguide.errors import ModelError
from fieldguide.models import metadata as md
from fieldguide.models.contrastive import PAIRS, CrossContrastive, class_text, embed_texts, text_model_path

from conftest import blobs


def seasonal(y: np.ndarray, seed: int = 0, missing: float = 0.0) -> np.ndarray:
    """Encoded metadata: class c observed around day 60·c (±6 days); a ``missing`` share without a date."""
    rng = np.random.default_rng(seed)
    start = dt.datetime(2023, 1, 1)
    days = 60 * y + rng.normal(0, 6, len(y))
    when = [start + dt.timedelta(days=float(d % 365)) for d in days]
    when = [None if rng.random() < missing else t for t in when]
    return md.encode(when, [None] * len(y))


@pytest.fixture(scope="module")
def aligned():
    X, y = blobs(n_classes=6, per_class=25, dim=16, spread=1.0, seed=1)
    M = seasonal(y, seed=1, missing=0.2)  # a fifth without a date: the encoder learns the missing value
    text = np.random.default_rng(2).normal(size=(6, 12)).astype(np.float32)
    head = CrossContrastive(text, dim=16, hidden=32, pretrain_epochs=60, finetune_epochs=20,
                            batch_size=64, lr=3e-3, seed=0).fit(X, y, M)
    return X, y, M, text, head


def test_pre_training_lowers_each_pair_loss(aligned):
    *_, head = aligned
    for pair in PAIRS:
        curve = head.history_[pair]
        assert len(curve) == 60
        assert curve[-1] < 0.8 * curve[0], (pair, curve[0], curve[-1])


def test_matching_image_text_metadata_end_nearer_than_others(aligned):
    X, y, M, text, head = aligned
    z = head.embed(X, M)
    zi, zm, zt = z["image"], z["metadata"], z["text"]
    other = y[:, None] != y[None, :]
    it = zi @ zt.T  # (n, classes)
    own = it[np.arange(len(y)), y]
    assert (it.argmax(1) == y).mean() > 0.9
    assert own.mean() > it[np.arange(len(y))[:, None], np.arange(6)[None, :]][y[:, None] != np.arange(6)].mean() + 0.3
    dated = M[:, md.COLUMNS.index("day_missing")] == 0  # an undated row's vector is every undated row's
    im = (zi @ zm.T)[np.ix_(dated, dated)]  # image i with metadata j
    assert np.diag(im).mean() > im[other[np.ix_(dated, dated)]].mean() + 0.3
    tm = zm @ zt.T  # (n, classes): metadata i with each class's text
    assert (tm.argmax(1) == y)[dated].mean() > 0.9


def test_classifies_and_samples_without_metadata_get_predictions(aligned):
    X, y, M, text, head = aligned
    probs = head.predict_proba(X, M)
    assert probs.shape == (len(y), 6) and np.allclose(probs.sum(1), 1)
    assert (probs.argmax(1) == y).mean() > 0.9
    gone = md.encode([None] * len(y), [None] * len(y))  # every sample without its date
    blind = head.predict_proba(X, gone)
    assert np.isfinite(blind).all() and np.allclose(blind.sum(1), 1)
    assert (blind.argmax(1) == y).mean() > 0.5  # the image still carries the class


def test_no_metadata_in_the_collection_is_the_image_alone_and_seeded_fits_repeat():
    X, y = blobs(n_classes=4, per_class=12, dim=8, seed=3)
    none = md.encode([None] * len(y), [None] * len(y))
    kw = dict(dim=8, hidden=16, pretrain_epochs=5, finetune_epochs=5, seed=4)
    with_flags = CrossContrastive(**kw).fit(X, y, none)
    without = CrossContrastive(**kw).fit(X, y)
    assert not with_flags.uses_metadata_
    assert np.array_equal(with_flags.predict_proba(X, none), without.predict_proba(X))
    other_seed = CrossContrastive(**{**kw, "seed": 5}).fit(X, y).predict_proba(X)
    assert not np.array_equal(other_seed, without.predict_proba(X))


def test_class_text_names_the_ranks_it_has():
    assert class_text("Quercus_agrifolia", {"family": "Fagaceae", "genus": "Quercus"}) == \
        "a photo of Quercus agrifolia, genus Quercus, family Fagaceae"
    assert class_text("Black_footed_Albatross") == "a photo of Black footed Albatross"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random one-layer BERT and its word-piece tokenizer, saved to a folder like a real model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "genus", "family", ","] + \
        list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def test_text_embeddings_from_a_local_folder_pool_over_real_tokens_only(tiny_bert):
    texts = [class_text("Quercus_agrifolia", {"genus": "Quercus", "family": "Fagaceae"}), "a photo of Salvia"]
    E = embed_texts(texts, tiny_bert, device="cpu")
    assert E.shape == (2, 24)
    assert np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-5)
    assert not np.allclose(E[0], E[1])
    alone = embed_texts(texts[1:], tiny_bert, device="cpu")  # no padding: the mask made padding inert
    assert np.allclose(alone[0], E[1], atol=1e-5)


def test_text_model_folder_without_a_model_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        text_model_path(tmp_path)


def test_the_real_minilm_puts_one_genus_nearer_than_another_family():
    E = embed_texts([class_text("Quercus_agrifolia", {"genus": "Quercus", "family": "Fagaceae"}),
                     class_text("Quercus_lobata", {"genus": "Quercus", "family": "Fagaceae"}),
                     class_text("Black_footed_Albatross", {"genus": "Phoebastria", "family": "Diomedeidae"})],
                    device="cpu")
    assert E.shape == (3, 384)
    assert E[0] @ E[1] > E[0] @ E[2] + 0.1
