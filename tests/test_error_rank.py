"""Taxonomy-aware label quality: ``error_rank`` orders the review queue, the crowd's consensus backs
off to the common ancestor (iNaturalist's > 2/3 rule). The tree's questions on tiny trees, then a
real store ingested with ranks and a real ``flag`` run over the probabilities ``predict`` would write."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_image
from fieldguide.cli.main import app
from fieldguide.curation.error_rank import taxonomy_evidence
from fieldguide.curation.export import signals_table
from fieldguide.curation.flag import flag
from fieldguide.platform import review, store
from fieldguide.platform.fields import write_values
from fieldguide.platform.ingest import ingest
from fieldguide.platform.tree import LABEL_RANK, ClassTree

SPECIES = {"Corvus major": ("Corvidae", "Corvus"), "Corvus minor": ("Corvidae", "Corvus"),
           "Pica pica": ("Corvidae", "Pica"), "Parus major": ("Paridae", "Parus")}


def tree(species=SPECIES) -> ClassTree:
    rows = [{"class": s, "rank": r, "name": n, "depth": d}
            for s, (f, g) in species.items() for d, (r, n) in enumerate((("family", f), ("genus", g), ("species", s)))]
    return ClassTree.from_rows(rows)


# ---- the tree's questions -----------------------------------------------------------------------------------
def test_error_rank_is_the_coarsest_rank_where_the_lineages_part():
    t = tree()
    assert t.error_rank("Corvus major", "Parus major") == "family"
    assert t.error_rank("Corvus major", "Pica pica") == "genus"
    assert t.error_rank("Corvus major", "Corvus minor") == "species"
    # no error: the same class, nothing to compare, or one lies within the other
    assert {t.error_rank("Corvus major", e) for e in ("Corvus major", None, "Corvus", "Corvidae")} == {None}
    assert t.severity("family") > t.severity("genus") > t.severity("species") > t.severity(LABEL_RANK)
    # a flat tree: two classes differ at the label itself
    assert ClassTree().error_rank("wren", "robin") == LABEL_RANK


@pytest.mark.parametrize("votes, want", [
    (["Corvus major", "Corvus major", "Corvus minor", "Corvus minor"], ("Corvus", "genus")),  # 2-2 in one genus
    (["Corvus major", "Corvus major", "Corvus major", "Corvus minor"], ("Corvus major", "species")),  # 3/4 > 2/3
    (["Corvus major", "Corvus major", "Corvus minor"], ("Corvus", "genus")),  # 2/3 is not more than 2/3
    (["Corvus major", "Pica pica", "Corvus minor"], ("Corvidae", "family")),
    (["Corvus major", "Parus major"], None),  # no common ancestor in this tree
    (["Corvus", "Corvus major", "Corvus minor", "Corvus major"], ("Corvus", "genus")),  # a genus-level vote
    ([], None),
])
def test_community_taxon_backs_off_to_the_common_ancestor(votes, want):
    assert tree().community_taxon(votes) == want


def test_consensus_backs_off_only_where_the_identifiers_disagree_below_an_ancestor():
    t = tree()
    got = taxonomy_evidence(
        t, labels=["Corvus minor", "Corvus major", "Corvus major", "Parus major"],
        predicted=["Corvus minor", "Parus major", "Corvus major", "Parus major"],
        votes=[["Corvus major", "Corvus major", "Corvus minor", "Corvus minor"], [], ["Pica pica"] * 3, []],
        crowd=["Corvus major", None, "Pica pica", None])
    assert got.consensus == ["Corvus", None, "Pica pica", None]
    assert got.consensus_rank == ["genus", None, "species", None]
    # the evidence: the consensus where there are votes, else the prediction
    assert got.error_rank == [None, "family", "genus", None]
    assert np.isnan(got.error_severity[[0, 3]]).all() and got.error_severity[1] > got.error_severity[2]


# ---- a real store, a real flag run ----------------------------------------------------------------------------
def _project_with_ranks(project, area):
    """4 species x 4 train images (family, genus columns), crowd votes split 2-2 on one image."""
    rows = ["filepath,label,family,genus,split"]
    paths = {}
    for k, (species, (family, genus)) in enumerate(SPECIES.items()):
        for j in range(4):
            path = make_image(area / "images" / f"{species.replace(' ', '_')}_{j}.jpg", (40 * k + 20, 90, 200 - 40 * k),
                              seed=k * 10 + j)
            paths[(species, j)] = str(path)
            rows.append(f"{path},{species},{family},{genus},train")
    (area / "manifest.csv").write_text("\n".join(rows) + "\n")
    split_votes = paths[("Corvus minor", 0)]
    (area / "votes.csv").write_text("filepath,annotator,label\n" + "".join(
        f"{split_votes},{who},{label}\n" for who, label in (("ana", "Corvus major"), ("bo", "Corvus major"),
                                                            ("cy", "Corvus minor"), ("di", "Corvus minor"))))
    ingest(project, area / "manifest.csv", fmt="csv", ranks="family,genus", votes=area / "votes.csv")
    return paths


def _predict_run(project, probs_by_path: dict[str, dict[str, float]], paths: dict) -> None:
    """What ``predict`` writes: a completed run, its out-of-sample ``pred_probs.npz`` and the
    ``prediction`` field. Every
    sample's true class gets 0.9 unless ``probs_by_path`` says otherwise."""
    ds = store.dataset(project, create=False)
    ids, filepaths, labels = ds.values(["id", "filepath", "ground_truth.label"])
    classes = list(SPECIES)
    probs = np.full((len(ids), len(classes)), 0.1 / (len(classes) - 1))
    for i, (path, label) in enumerate(zip(filepaths, labels)):
        probs[i, classes.index(label)] = 0.9
        for c, p in probs_by_path.get(path, {}).items():
            probs[i, classes.index(c)] = p
    top = probs.argmax(axis=1)
    write_values(ds, {"prediction": {sid: {"label": classes[t], "confidence": float(probs[i, t]),
                                           "logits": np.log(probs[i]).tolist()} for i, (sid, t) in enumerate(zip(ids, top))}})
    wh = store.warehouse(project)
    run_id = wh.start_run("predict")
    out = project.runs_dir / run_id
    out.mkdir(parents=True)
    np.savez_compressed(out / "pred_probs.npz", sample_ids=np.array(ids), classes=np.array(classes), pred_probs=probs,
                        fold=np.arange(len(ids)) % 3, labels=np.array(labels), splits=np.array(["train"] * len(ids)))
    wh.finish_run(run_id)


def test_a_label_in_another_family_ranks_above_one_in_a_sister_species_at_equal_noise(project, tmp_path):
    paths = _project_with_ranks(project, tmp_path)
    # two "Corvus major" labels the model is as sure are wrong: one is a tit (another family), the
    # other its sister species; the sister is ingested first, so the store's order would list it first
    sister, other_family = paths[("Corvus major", 0)], paths[("Corvus major", 1)]
    rest = {"Corvus major": 0.02, "Pica pica": 0.02}
    _predict_run(project, {sister: {**rest, "Corvus minor": 0.94, "Parus major": 0.02},
                           other_family: {**rest, "Parus major": 0.94, "Corvus minor": 0.02}}, paths)
    flag(project)
    ds = store.dataset(project, create=False)
    by_path = {path: dict(zip(("id", "noise", "rank", "severity", "consensus", "consensus_rank"), row)) for path, *row in zip(
        *ds.values(["filepath", "id", "noise_score", "error_rank", "error_severity", "consensus_label", "consensus_rank"]))}
    a, b = by_path[other_family], by_path[sister]
    assert (a["rank"], b["rank"]) == ("family", "species")
    assert a["noise"] == b["noise"] and a["severity"] > b["severity"]
    queue = ds.load_saved_view("to_review").values("id")
    assert a["id"] in queue and b["id"] in queue and queue.index(a["id"]) < queue.index(b["id"])
    # ordered by error rank first: the family error heads the queue
    assert review.queue(ds, order="error_rank")["id"].tolist()[0] == a["id"]
    # the crowd split 2-2 between two Corvus species: a genus-level consensus, with its rank
    split = by_path[paths[("Corvus minor", 0)]]
    assert (split["consensus"], split["consensus_rank"], split["rank"]) == ("Corvus", "genus", None)
    # the CLI lists the queue with its error ranks; the export and the warehouse carry them
    res = CliRunner().invoke(app, ["-p", str(project.root), "review", "status", "--top", "5", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)["queue"]
    assert [r["error_rank"] for r in listed if r["id"] in (a["id"], b["id"])] == ["family", "species"]
    res = CliRunner().invoke(app, ["-p", str(project.root), "review", "status", "--top", "1", "--order", "nope"])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith("error: ")
    table = signals_table(project).set_index("sample_id")
    assert table.loc[a["id"], "error_rank"] == "family" and table.loc[split["id"], "consensus_rank"] == "genus"
    assert table.loc[a["id"], "error_severity"] == a["severity"]
    wh = store.warehouse(project).query("SELECT sample_id, error_rank FROM samples WHERE error_rank IS NOT NULL")
    assert dict(zip(wh["sample_id"], wh["error_rank"])) == {
        sid: r["rank"] for sid, r in ((r["id"], r) for r in by_path.values()) if r["rank"] is not None}
