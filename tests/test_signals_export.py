"""``fieldguide signals export``: one row per sample, every signal flag wrote, values equal to the
store's and the warehouse's.

A real tiny project (generated images, the tiny backbone, a real embedded MongoDB, a real DuckDB
file) holds what makes every kind of signal say something: a byte-identical copy (near-duplicate),
an odd image (outlier), crowd votes from two annotators (consensus), a training run (the entropy
trajectories), a curator's label change (``label_source``) and review states.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fieldguide.cli import app
from fieldguide.curation.export import BASE_COLUMNS, STORE_SIGNALS, export_signals, signals_table
from fieldguide.curation.flag import flag
from fieldguide.errors import NotReadyError
from fieldguide.models.embed import embed
from fieldguide.models.predict import predict
from fieldguide.models.train import train
from fieldguide.platform import review, store
from fieldguide.platform.ingest import ingest
from conftest import make_image, use_tiny_backbone

#: every column read as text, so that a sample id never turns into a number
TEXT = {c: str for c in ("sample_id", "filepath", "split", "label", "label_source", "review_state",
                         "predicted_label", "near_duplicate_of", "consensus_label")}


def read_export(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=TEXT).set_index("sample_id", drop=False)


def as_float(column: pd.Series) -> pd.Series:
    """A number or boolean column of the CSV as floats (True 1, False 0), NaN where empty."""
    return column.map(lambda v: np.nan if pd.isna(v) else float(v == "True" if isinstance(v, str) else v))


@pytest.fixture
def flagged(project, image_folder, tiny_weights, tmp_path):
    """The generated birds plus a copy of a red bird and a yellow bird among the green ones, two
    annotators' votes on four samples, a short training run, a curator's change, review states;
    then one flag run. Returns ``(project, run_id, curator_changed_id, review_states)``."""
    p = use_tiny_backbone(project, tiny_weights)
    extra = tmp_path / "extra" / "train"
    original = image_folder / "train" / "red_bird" / "red_bird_train_2.jpg"
    (extra / "red_bird").mkdir(parents=True)
    shutil.copy(original, extra / "red_bird" / "copy.jpg")
    make_image(extra / "green_bird" / "odd.jpg", (255, 255, 0), seed=99)
    ingest(p, image_folder)
    ingest(p, tmp_path / "extra")
    reds = sorted((image_folder / "train" / "red_bird").glob("*.jpg"))[:4]
    votes = tmp_path / "votes.csv"
    with votes.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "annotator", "label"])
        for i, path in enumerate(reds):
            w.writerow([path, "ann", "red_bird"])
            w.writerow([path, "bob", "red_bird" if i % 2 else "blue_bird"])
    assert ingest(p, image_folder, votes=votes).votes_added == 8
    embed(p)
    predict(p, head="logreg", folds=3)
    train(p, method="ce", mode="head", epochs=5, progress=False)
    ds = store.dataset(p)
    blue = ds.match_tags("train").match({"ground_truth.label": "blue_bird"}).values("id")[0]
    store.set_labels(p, ds, {blue: "green_bird"}, source="curator", actor="tester")
    ids = ds.values("id")
    states = {ids[0]: review.PUSHED, ids[1]: review.RESOLVED, ids[2]: review.DISMISSED}
    store.set_field(ds, review.FIELD, states)
    run_id = flag(p).run_id
    return p, run_id, blue, states


def store_columns(p, fields: list[str]) -> pd.DataFrame:
    ds = store.dataset(p)
    ds.reload()
    ids, *columns = ds.values(["id", *fields])
    return pd.DataFrame(dict(zip(fields, columns)), index=ids)


def warehouse_signals(p, run_id: str) -> pd.DataFrame:
    sig = store.warehouse(p).query("SELECT sample_id, signal, value FROM signals WHERE run_id = ?", [run_id])
    return sig.pivot(index="sample_id", columns="signal", values="value")


@pytest.mark.slow
def test_the_export_has_one_row_per_sample_and_every_signal(flagged, tmp_path):
    p, run_id, changed, states = flagged
    out, rows = export_signals(p, tmp_path / "out" / "signals.csv")
    df = read_export(out)
    stored = store_columns(p, ["filepath", "ground_truth.label", "tags", "prediction.label", "noise_score",
                               "label_issue", "label_quality", "outlier_score", "knn_disagreement",
                               "annotator_agreement", "entropy_aum", "near_duplicate_of", "consensus_label",
                               "consensus_rank", "error_rank", "mistakenness", "uniqueness", review.FIELD])
    # one row per sample of the store, each sample once
    assert rows == len(df) == len(stored) == 26
    assert df["sample_id"].is_unique and set(df["sample_id"]) == set(stored.index)
    # the columns: the base ones, the store-only signals, then every signal of the run in name order
    wide = warehouse_signals(p, run_id)
    assert list(df.columns) == BASE_COLUMNS + STORE_SIGNALS + sorted(set(wide.columns) - set(BASE_COLUMNS))
    assert {"label_quality", "knn_disagreement", "outlier_score", "is_outlier", "near_duplicate_score",
            "is_near_duplicate", "annotator_agreement", "consensus_quality", "entropy_aum", "mistakenness",
            "uniqueness", "noise_score", "label_issue"} <= set(df.columns)

    stored = stored.loc[df.index]
    assert df["filepath"].tolist() == stored["filepath"].tolist()
    assert df["label"].tolist() == stored["ground_truth.label"].tolist()
    assert df["split"].tolist() == [store.split_of(t) for t in stored["tags"]]
    assert df["predicted_label"].tolist() == stored["prediction.label"].tolist()
    # the label's source: the curator's change, the rest as ingested
    assert df.loc[changed, "label_source"] == "curator"
    assert set(df.drop(index=changed)["label_source"]) == {"ingest"}
    # review states as the store holds them, empty elsewhere
    held = stored[review.FIELD].dropna().to_dict()
    assert df[review.FIELD].dropna().to_dict() == held and held[next(iter(states))] == review.PUSHED
    # the store's signal fields (these hold the latest flag run: this one)
    for name in ("noise_score", "label_quality", "outlier_score", "knn_disagreement", "annotator_agreement",
                 "entropy_aum", "mistakenness", "uniqueness"):
        np.testing.assert_allclose(df[name].astype(float), stored[name].astype(float), err_msg=name)
    np.testing.assert_array_equal(as_float(df["label_issue"]), stored["label_issue"].astype(float))
    for name in STORE_SIGNALS:
        assert df[name].where(df[name].notna(), None).tolist() == stored[name].tolist(), name
    assert df["near_duplicate_of"].notna().sum() == 2 and df["consensus_label"].notna().sum() == 4
    # where the prediction (or the consensus) names another class: the rank they part at (a flat tree)
    assert df["error_rank"].notna().any() and set(df["error_rank"].dropna()) == {"label"}
    # every warehouse signal of the run, sample by sample (empty where the run has no value)
    wide = wide.reindex(df.index)
    for name in wide.columns:
        np.testing.assert_array_equal(as_float(df[name]).to_numpy(), wide[name].to_numpy(), err_msg=name)
    assert wide["entropy_aum"].notna().sum() > 0 and wide["is_near_duplicate"].sum() == 2


@pytest.mark.slow
def test_an_older_run_exports_its_own_signals(flagged):
    p, first, changed, _ = flagged
    wh = store.warehouse(p)
    wh.write("signals", [{"run_id": first, "sample_id": changed, "signal": "noise_score", "value": 0.125}])
    second = flag(p).run_id
    old = signals_table(p, first).set_index("sample_id")
    assert old.loc[changed, "noise_score"] == 0.125  # the first run's value, not the store's
    assert old[STORE_SIGNALS].isna().all().all()  # the store holds the second run's: not mixed in
    new = signals_table(p, second).set_index("sample_id")
    assert new.loc[changed, "noise_score"] == store_columns(p, ["noise_score"]).loc[changed, "noise_score"]
    assert new["near_duplicate_of"].notna().sum() == 2
    assert len(old) == len(new) == 26 and list(old.columns) == list(new.columns)
    with pytest.raises(NotReadyError, match="no flag run 'predict-x'"):
        signals_table(p, "predict-x")


@pytest.mark.slow
def test_the_cli_writes_the_same_table(flagged, tmp_path):
    p, run_id, _, _ = flagged
    out = tmp_path / "signals.csv"
    res = CliRunner().invoke(app, ["--project", str(p.root), "signals", "export", str(out), "--run", run_id])
    assert res.exit_code == 0, res.output
    assert f"wrote 26 rows to {out}" in res.output
    df = read_export(out)
    table = signals_table(p, run_id)
    assert list(df.columns) == list(table.columns) and df["sample_id"].tolist() == table["sample_id"].tolist()
    np.testing.assert_allclose(df["noise_score"].astype(float), table["noise_score"].astype(float))
    res = CliRunner().invoke(app, ["--project", str(p.root), "signals", "export", str(out), "--run", "nope"])
    assert res.exit_code == 1
    assert [ln for ln in res.output.splitlines() if ln.strip()] == [
        f"error: no flag run 'nope' in the warehouse (the latest is {run_id})"]
