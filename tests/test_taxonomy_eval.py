"""The class tree on the model side: per-rank metrics, roll-up, back-off, open-set scores, costs,
and ``evaluate --json`` on a tiny store with ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import blobs
from fieldguide.errors import FieldguideError
from fieldguide.models.costs import (dangerous_cost_matrix, decide, expected_cost_decision, fungiclef_track3,
                                    keep_label_cost)
from fieldguide.models.open_set import (DEFAULT_SCORES, SCORES, energy_score, fit_combiner, max_softmax_score,
                                        open_set_auroc, score_table, simulated_unknowns)
from fieldguide.models.taxonomy import (backoff, backoff_metrics, flat_tree, rank_metrics, roll_up,
                                        taxonomic_distance, tree_from_lineages, tree_from_taxa)

# family F1 > genus G1 > a1, a2; F1 > G2 > b1; F2 > G3 > c1
LINEAGES = {"a1": {"family": "F1", "genus": "G1"}, "a2": {"family": "F1", "genus": "G1"},
            "b1": {"family": "F1", "genus": "G2"}, "c1": {"family": "F2", "genus": "G3"}}


@pytest.fixture
def tree():
    return tree_from_lineages(list(LINEAGES), LINEAGES, leaf_rank="species")


def test_roll_up_and_rank_metrics_on_a_hand_tree(tree):
    probs = np.array([[0.4, 0.4, 0.1, 0.1],    # a1: species wrong-or-right tie -> a1; genus G1 0.8
                      [0.1, 0.2, 0.6, 0.1],    # a2 -> b1: genus wrong, family right
                      [0.3, 0.3, 0.3, 0.1]])   # c1 -> a1: family wrong
    y = np.array([0, 1, 3])
    np.testing.assert_allclose(roll_up(probs, tree, 1), [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(roll_up(probs, tree, 2), [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    m = rank_metrics(y, probs, tree)
    assert m["top1_species"] == pytest.approx(1 / 3)
    assert m["top1_genus"] == pytest.approx(1 / 3)
    assert m["top1_family"] == pytest.approx(2 / 3)
    assert m["confusion_family"].tolist() == [[2, 0], [1, 0]]
    # errors: a2 -> b1 climbs to the family (2), c1 -> a1 to the root (3)
    assert m["mean_taxonomic_distance"] == pytest.approx(2.5)
    assert taxonomic_distance(tree, [0, 0, 0, 0], [0, 1, 2, 3]).tolist() == [0, 1, 2, 3]
    flat = rank_metrics(y, probs, flat_tree(LINEAGES))
    assert set(k for k in flat if k.startswith("top1_")) == {"top1_class"}


def test_tree_from_taxa_rows_matches_the_lineages(tree):
    rows = [{"class": c, "rank": r, "name": n, "depth": d}
            for c, lin in LINEAGES.items() for d, (r, n) in enumerate([*lin.items(), ("species", c)])]
    got = tree_from_taxa(list(LINEAGES), rows[::-1])
    assert got.ranks == ("family", "genus") and got.leaf_rank == "species"
    np.testing.assert_array_equal(got.parents, tree.parents)
    assert tree_from_taxa(["x"], []).ranks == ()


def test_backoff_picks_the_deepest_rank_over_the_threshold(tree):
    probs = np.array([[0.95, 0.02, 0.02, 0.01],   # species
                      [0.45, 0.45, 0.05, 0.05],   # genus G1 (0.9)
                      [0.3, 0.3, 0.3, 0.1],       # family F1 (0.9)
                      [0.4, 0.05, 0.05, 0.5]])    # nothing reaches 0.9
    level, node = backoff(probs, tree, 0.9)
    assert level.tolist() == [0, 1, 2, -1]
    assert node.tolist() == [0, 0, 0, -1]
    m = backoff_metrics(np.array([0, 1, 2, 3]), probs, tree, 0.9)
    assert m["backoff_coverage_species"] == m["backoff_coverage_genus"] == m["backoff_coverage_family"] == 0.25
    assert m["backoff_precision_genus"] == 1.0 and m["backoff_abstained"] == 0.25


def test_expected_cost_rule_lowers_the_cost_against_argmax():
    rng = np.random.default_rng(0)
    n, C = 400, 4
    dangerous = np.array([True, False, False, False])  # class 0 is poisonous, class 1 its edible look-alike
    y = rng.integers(0, C, n)
    probs = rng.dirichlet(np.ones(C), n) * 0.5
    probs[np.arange(n), y] += 0.3
    confusable = y <= 1
    probs[confusable, 1 - y[confusable]] += 0.2    # 0 and 1 look alike
    probs /= probs.sum(axis=1, keepdims=True)
    cost = dangerous_cost_matrix(dangerous)
    assert cost[0, 1] == 100 and cost[1, 0] == 1 and cost[2, 3] == 1
    argmax, bayes = probs.argmax(axis=1), expected_cost_decision(probs, cost)
    np.testing.assert_array_equal(decide(probs, cost, "expected_cost"), bayes)
    plain, careful = fungiclef_track3(y, argmax, dangerous), fungiclef_track3(y, bayes, dangerous)
    assert careful["fungiclef_track3"] < plain["fungiclef_track3"]
    assert cost[y, bayes].mean() < cost[y, argmax].mean()
    assert (y[bayes != 0] == 0).sum() < (y[argmax != 0] == 0).sum()  # fewer poisonous called edible
    np.testing.assert_array_equal(expected_cost_decision(probs, 1 - np.eye(C)), argmax)


def test_a_dangerous_class_error_ranks_above_an_equal_noise_harmless_one():
    from fieldguide.platform.review import QUEUE_ORDERS

    # classes: 0 poisonous, 1 and 2 edible; both samples are labeled edible 1, equally noisy, and
    # the model puts 0.6 on another class: the poisonous one for the first, edible 2 for the second
    cost = dangerous_cost_matrix(np.array([True, False, False]))
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])
    error_cost = keep_label_cost(probs, np.array([1, 1]), cost)
    assert error_cost == pytest.approx([0.6 * 100 + 0.1 * 1, 0.1 * 100 + 0.6 * 1])
    noise = np.array([0.5, 0.5])
    priority = noise * error_cost
    assert priority[0] > priority[1]  # the one that may be poisonous comes first
    assert QUEUE_ORDERS["cost"][0] == ("cost_priority", -1)
    np.testing.assert_allclose(keep_label_cost(probs, np.array([1, 2]), 1 - np.eye(3)), 1 - probs[[0, 1], [1, 2]])
    with pytest.raises(FieldguideError, match="cost matrix"):
        keep_label_cost(probs, np.array([1, 1]), np.eye(2))


def test_open_set_scores_separate_held_out_classes():
    from fieldguide.models.heads import make_head

    X, y = blobs(n_classes=6, per_class=20, dim=16, spread=0.8)
    unknown = y >= 5
    test = np.zeros(len(y), dtype=bool)
    test[np.random.default_rng(1).choice(len(y), 40, replace=False)] = True
    train = ~unknown & ~test
    head = make_head("logreg").fit(X[train], y[train])
    table = score_table(head, X[train], y[train], X[test], pca_dims=8)
    assert table.shape == (test.sum(), len(SCORES))
    probs = head.predict_proba(X[test])
    np.testing.assert_allclose(table[:, list(SCORES).index("max_softmax")], max_softmax_score(probs))
    assert energy_score(np.zeros((2, 3))) == pytest.approx([-np.log(3)] * 2)
    assert energy_score(np.zeros((2, 3)), 2.0) == pytest.approx([-2 * np.log(3)] * 2)
    aucs = {name: open_set_auroc(unknown[test], table[:, j]) for j, name in enumerate(SCORES)}
    assert all(0.5 < a <= 1 for a in aucs.values()), aucs
    sim, target = simulated_unknowns(make_head("logreg"), X[train], y[train], scores=DEFAULT_SCORES, rounds=1,
                                     pca_dims=8)
    assert sim.shape == (len(target), len(DEFAULT_SCORES)) and 0 < target.mean() < 1
    combiner = fit_combiner(sim, target)
    used = table[:, [list(SCORES).index(s) for s in DEFAULT_SCORES]]
    assert open_set_auroc(unknown[test], combiner.predict_proba(used)[:, 1]) > 0.5
    with pytest.raises(FieldguideError, match="open-set score"):
        score_table(head, X[train], y[train], X[test], scores=("nope",))
    assert np.isnan(open_set_auroc(np.zeros(3, dtype=bool), np.arange(3.0)))


def test_evaluate_json_has_rank_keys_on_a_store_with_ranks(predicted, tmp_path, monkeypatch):
    from fieldguide.cli import app
    from fieldguide.config import dump_config
    from fieldguide.models.predict import predict
    from fieldguide.platform import store
    from fieldguide.platform.panels import sample_card
    from fieldguide.plugins.curator.panels import sample_markdown
    from fieldguide.platform.taxa import load_taxonomy, read_taxa

    taxonomy = tmp_path / "taxonomy.csv"
    taxonomy.write_text("class,genus,family\nred_bird,Rubra,Avidae\ngreen_bird,Rubra,Avidae\n"
                        "blue_bird,Caerula,Avidae\n")
    info = load_taxonomy(predicted, taxonomy)
    assert info["classes"] == 3 and info["ranks"] == ["family", "genus"]
    assert {(r["class"], r["rank"], r["name"]) for r in read_taxa(predicted)} >= {("red_bird", "genus", "Rubra")}
    predicted.config.classes.costs = ["red_bird"]
    predicted.config_path.write_text(dump_config(predicted.config))
    report = predict(predicted, head="logreg", folds=3, decision="expected_cost")  # back-off climbs the tree now
    assert report.decision == "expected_cost"
    monkeypatch.setenv("FIELDGUIDE_PROJECT", str(predicted.root))
    res = CliRunner().invoke(app, ["taxonomy", str(tmp_path / "missing.csv")])
    assert res.exit_code != 0 and res.output.startswith("error:") and "missing.csv" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    for rank in ("species", "genus", "family"):
        assert 0 <= m[f"top1_{rank}"] <= 1 and f"macro_f1_{rank}" in m and f"backoff_coverage_{rank}" in m
    assert m["top1_species"] == pytest.approx(m["top1"])
    assert m["top1_family"] == 1.0  # one family: the roll-up cannot miss
    assert m["top1_genus"] >= m["top1_species"]
    assert m["classification_error"] == pytest.approx(1 - m["top1"])
    assert m["fungiclef_track3"] == pytest.approx(m["classification_error"] + m["poisonous_confusion_cost"])
    assert m["fungiclef_track3_expected"] is not None and m["cost_score_expected"] >= 0
    assert "open_set_auroc" not in m  # every test class was trained on
    ds = store.dataset(predicted, create=False)
    assert "unknown_score" in ds.get_field_schema() and ds.has_saved_view("unknown")
    test_id = next(s.id for s in ds if s["unknown_score"] is not None)  # the test samples are scored
    card = sample_card(predicted, test_id, links=False)
    assert 0 <= card["unknown_score"] <= 1
    assert card["backoff"] is None or card["backoff"]["rank"] in ("species", "genus", "family")
    assert "unknown species score" in sample_markdown(card)
