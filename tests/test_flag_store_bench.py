"""benchmarks/flag_store.py at a tiny size: the real ingest and ``flag`` on a real store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("flag_store")


def test_synthetic_collection_folds_onto_the_classes(bench):
    X, labels, probs = bench.synthetic_collection(200, 10)
    assert X.shape == (200, 1280) and probs.shape == (200, 10) and probs.dtype == np.float64
    assert labels.min() >= 0 and labels.max() < 10
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_flag_on_a_store(bench, tmp_path):
    from fieldguide.config import open_project
    from fieldguide.models.embed import load_embeddings
    from fieldguide.models.predict import load_pred_probs
    from fieldguide.platform import store
    from fieldguide.platform.review import QUEUE_TAG
    from fieldguide.platform.store import release_database

    n, classes = 300, 10
    try:
        rows = bench.measure(n, classes, tmp_path / "work")
        project = open_project(tmp_path / "work" / f"n{n}_c{classes}" / "project")
        ds = store.dataset(project, create=False)
        assert len(ds) == n
        files = sorted((tmp_path / "work" / f"n{n}_c{classes}" / "images").rglob("*.png"))
        assert len(files) == n and len({f.read_bytes() for f in files}) == n  # distinct files
        assert len(load_embeddings(project)[0]) == n
        pp = load_pred_probs(project)
        assert pp.pred_probs.shape == (n, classes) and sorted(pp.fold.tolist()) == sorted(np.arange(n) % 5)
        assert ds.exists("prediction").count() == n
        queued = ds.match_tags(QUEUE_TAG).count()
        # a second measure reuses everything but runs flag twice again
        again = bench.measure(n, classes, tmp_path / "work")
        assert len(store.dataset(project, create=False)) == n
    finally:
        release_database()
    out = bench.write_csv(rows, tmp_path / "flag_store.csv")
    steps = set(out["step"])
    assert {"images", "ingest", "embeddings (synthetic, written)", "predictions (synthetic, written)", "flag",
            "flag rerun", "flag: signals (kNN graph, cleanlab, Datalab, ...)", "flag: other", "store"} <= steps
    flag = out.set_index("step").loc["flag"]
    assert flag["n"] == n and flag["seconds"] > 0 and flag["peak_mb"] >= 0
    flagged = int(flag["notes"].split("flagged ")[1].split(",")[0])
    reported_queue = int(flag["notes"].split("queued ")[1].split(",")[0])
    assert flagged > 0 and reported_queue == queued > 0  # the report's queue is the store's
    assert "kNN graph (exact" in flag["notes"]  # below 50k samples the graph is exact
    pieces = out[out["step"].str.startswith("flag: ")]
    assert abs(pieces["seconds"].sum() - flag["seconds"]) < 1.0  # each rounded to 0.1 s
    # the rerun: no image, ingest, embedding or prediction step again; the CSV keeps the first run's rows
    assert [r["step"] for r in again if not r["step"].startswith("flag")] == ["store"]
    merged = bench.write_csv(again, tmp_path / "flag_store.csv")
    assert merged["step"].tolist().count("ingest") == 1 and merged["step"].tolist().count("flag") == 1
    assert pd.read_csv(tmp_path / "flag_store.csv")["step"].tolist() == merged["step"].tolist()
