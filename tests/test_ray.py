"""Embeddings and K-fold heads on a real Ray cluster (``--ray``), against the local path.

The cluster: ``ray start --head`` on 127.0.0.1 and a second node joining it, one CPU each (two
workers), a small object store, its own temp dir and free ports; each ``ray start --block``
process is stopped at the end, and with it the processes it started (never ``ray stop``, which
would stop every Ray on the machine). The workers import this checkout (``PYTHONPATH``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import fieldguide
from conftest import blobs, free_port, use_tiny_backbone
from fieldguide.cli import app
from fieldguide.config import dump_config
from fieldguide.models.crossval import cross_val_pred_probs
from fieldguide.models.distributed import connected
from fieldguide.models.embed import embed, load_embeddings, read_cache
from fieldguide.models.heads import make_head
from fieldguide.models.predict import load_pred_probs, predict

REPO = Path(fieldguide.__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _ray_start(temp: Path, log_name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with (temp / log_name).open("w") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
             "--num-cpus", "1", "--object-store-memory", "200000000", "--disable-usage-stats",
             "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )


def _alive_nodes(address: str) -> int:
    import ray

    ray.init(address=address, logging_level="WARNING")
    try:
        return sum(1 for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a two-node Ray cluster on 127.0.0.1 (one CPU per node)."""
    temp = Path(tempfile.mkdtemp(prefix="fgray-", dir="/tmp"))  # short: Ray's socket paths live under it
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs = [_ray_start(temp, "head.log", "--head", "--port", str(port), "--temp-dir", str(temp),
                        "--include-dashboard=false", "--ray-client-server-port", str(free_port()))]
    try:
        deadline = time.monotonic() + 60
        while True:
            assert procs[0].poll() is None, (temp / "head.log").read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not start within 60 s"
                time.sleep(0.5)
        procs.append(_ray_start(temp, "worker.log", "--address", address))
        deadline = time.monotonic() + 60
        while _alive_nodes(address) < 2:
            assert procs[1].poll() is None, (temp / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second Ray node did not join within 60 s"
            time.sleep(1)
        yield address
    finally:
        _stop_nodes(procs)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_nodes(procs: list[subprocess.Popen]) -> None:
    """Stop each ``ray start --block`` and what it started: its session (each was started in a
    session of its own) gets SIGTERM, SIGKILL after a few seconds (a graceful stop of a head can
    take half a minute), then any process left in those sessions (a worker waits for its raylet)."""
    import psutil

    def signal_groups(sig):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def left() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) in {proc.pid for proc in procs}:
                    found.append(p)
        return found

    signal_groups(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_groups(signal.SIGKILL)
    for proc in procs:
        proc.wait(30)
    deadline = time.monotonic() + 30
    while (rest := left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for p in rest:
        with contextlib.suppress(psutil.Error):
            p.kill()


@pytest.fixture
def tiny(ingested, tiny_weights):
    """``ingested`` (24 images) with the tiny backbone in its fieldguide.toml, one image unreadable."""
    p = use_tiny_backbone(ingested, tiny_weights)
    p.config_path.write_text(dump_config(p.config))
    broken = sorted((p.root.parent / "images" / "train" / "blue_bird").glob("*.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    return p, str(broken)


def test_embed_and_kfold_heads_on_ray_match_the_local_path(ray_cluster, tiny):
    p, broken = tiny
    local = embed(p)
    assert (local.embedded, local.skipped[0][0]) == (23, broken)
    directory = Path(local.cache_dir)
    local_ids, local_hashes, local_feats = read_cache(directory)
    predict(p, head="logreg", folds=3)
    local_probs = load_pred_probs(p)
    shutil.rmtree(directory)

    result = CliRunner().invoke(app, ["--project", str(p.root), "embed", "--ray", ray_cluster, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["embedded"], report["cached"], report["skipped"]) == (23, 0, 1)
    assert report["cache_dir"] == str(directory)
    ids, hashes, feats = read_cache(directory)  # the same parquet parts, read back by the normal reader
    assert sorted(ids) == sorted(local_ids) and len(ids) == 23
    row = {sid: i for i, sid in enumerate(ids)}
    order = [row[sid] for sid in local_ids]
    assert [hashes[i] for i in order] == local_hashes
    assert np.allclose(feats[order], local_feats, atol=1e-5)
    assert np.abs(local_feats).max() > 0  # not zeros on both sides
    stored_ids, X = load_embeddings(p)
    assert len(stored_ids) == 23 and np.allclose(X, local_feats[[local_ids.index(s) for s in stored_ids]], atol=1e-5)
    again = embed(p, ray_address=ray_cluster)  # only the unreadable image is tried again, as locally
    assert (again.embedded, again.cached, again.skipped) == (0, 23, [(broken, local.skipped[0][1])])

    predict(p, head="logreg", folds=3, ray_address=ray_cluster)
    on_ray = load_pred_probs(p)
    assert on_ray.run_id != local_probs.run_id and on_ray.sample_ids == local_probs.sample_ids
    assert np.array_equal(on_ray.fold, local_probs.fold)
    assert (on_ray.fold >= 0).sum() == 17  # the labeled train samples with embeddings, out of fold
    assert np.allclose(on_ray.pred_probs, local_probs.pred_probs, atol=1e-8)


def test_folds_on_ray_with_a_class_missing_from_a_training_fold(ray_cluster, monkeypatch):
    """``auto`` joins the cluster RAY_ADDRESS names; a class with one sample is absent from one
    training fold (its column 0 there), as ``cross_val_predict`` gives it."""
    X, y = blobs(n_classes=4, per_class=9, dim=6, seed=3)
    X, y = np.vstack([X, X[:1] + 0.1]), np.r_[y, 5]  # class 5 once; class 4 never
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    with connected("auto") as ray:  # joined once for both heads
        assert ray.get_runtime_context().gcs_address.endswith(":" + ray_cluster.rsplit(":", 1)[1])
        for head in ("logreg", "knn"):
            local, fold = cross_val_pred_probs(make_head(head), X, y, 6, folds=3, seed=1)
            ray_probs, ray_fold = cross_val_pred_probs(make_head(head), X, y, 6, folds=3, seed=1, ray_address="auto")
            assert np.array_equal(fold, ray_fold)
            assert np.allclose(ray_probs, local, atol=1e-8), head
            assert ray_probs[-1, 5] == 0 and not ray_probs[:, 4].any()
            assert np.allclose(ray_probs.sum(axis=1), 1)
    assert not ray.is_initialized()


def test_an_unreachable_or_malformed_address_is_one_error_line(tiny):
    p, _ = tiny
    runner = CliRunner()
    dead = f"127.0.0.1:{free_port()}"
    for args, expected in (
        (["embed", "--ray", dead], f"error: cannot reach the Ray cluster at {dead} ("),
        (["embed", "--ray", "nowhere"], "error: --ray 'nowhere': expected auto, HOST:PORT or ray://HOST:PORT"),
    ):
        result = runner.invoke(app, ["--project", str(p.root), *args])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
        assert "Traceback" not in result.output
    assert not list(p.embeddings_dir.glob("*/*/part-*.parquet"))  # nothing was written
    embed(p)
    result = runner.invoke(app, ["--project", str(p.root), "predict", "--ray", dead])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"error: cannot reach the Ray cluster at {dead} (Connection refused): "
                                                  "start one there with 'ray start --head', or use --ray auto"]
