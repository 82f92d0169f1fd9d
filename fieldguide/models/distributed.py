"""Embeddings and K-fold heads on a Ray cluster (``--ray auto|ADDRESS``).

- :func:`ray_features` is the Ray source of ``embed``: the image paths the cache lacks go through
  Ray Data, ``map_batches`` over a pool of actors (:class:`EmbedBatch`), each of which loads the
  backbone once and embeds batches of paths; one GPU per actor when the cluster has GPUs, one CPU
  otherwise. The batches come back to the driver as the local loop yields them, and ``embed``
  writes them to the same cache, in parts, as on one machine.
- :func:`fold_probs` is the Ray way of the out-of-fold probabilities: each fold's head fit and
  ``predict_proba`` is a Ray task, over the folds the driver made (the same folds, the same seed).

The workers read the images and the weights by their paths: the nodes share the filesystem (the
same paths on every node) and run the same environment (fieldguide and its dependencies installed).
Ray is imported here only, when a ``--ray`` step runs.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, clone

from fieldguide.errors import ClusterError, FieldguideError

log = logging.getLogger(__name__)

LOCAL = ("", "none", "local")  # ray_address values that mean this machine, without Ray


def wants_ray(address: str | None) -> bool:
    """Whether ``address`` (``--ray`` / ``models.ray_address``) names a Ray cluster."""
    return bool(address) and address.strip().lower() not in LOCAL


# ---- joining a cluster -----------------------------------------------------------------------------
@contextmanager
def connected(address: str):
    """Ray, joined to the cluster at ``address`` for the block (left at its end). ``auto``: the
    running cluster ``ray start`` made on this machine (or ``RAY_ADDRESS``), else a local one that
    lives as long as the block. Already joined (``ray.init`` called by the caller): that one."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs the ray package: pip install 'ray[data]' (or make install)") from None
    if ray.is_initialized():
        yield ray
        return
    _join(ray, address.strip())
    try:
        yield ray
    finally:
        ray.shutdown()


def _join(ray, address: str) -> None:
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    if address.lower() == "auto":
        try:
            ray.init(address="auto", **quiet)
            return
        except ConnectionError as e:
            if os.environ.get("RAY_ADDRESS"):
                raise ClusterError(f"cannot join the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} "
                                   f"({_first_line(e)})") from None
        log.warning("no running Ray cluster on this machine: starting a local one")
        ray.init(include_dashboard=False, **quiet)
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start one there with "
                           "'ray start --head', or use --ray auto") from None
    try:
        ray.init(address=address, **quiet)
    except Exception as e:  # noqa: BLE001 - whatever ray says, the user's fix is the address or the cluster
        raise ClusterError(f"cannot join the Ray cluster at {address} ({_first_line(e)})") from None


def _host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; anything else is a ClusterError."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__


@contextmanager
def _task_errors(what: str):
    """A failure inside a Ray task or actor as a one-line error: a FieldguideError raised there is
    raised as itself; anything else (a worker that died, a missing import) is a ClusterError."""
    import ray

    try:
        yield
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        while isinstance(cause, ray.exceptions.RayError) and getattr(cause, "cause", None) is not None:
            cause = cause.cause
        if isinstance(cause, FieldguideError):
            raise type(cause)(*cause.args) from None
        raise ClusterError(f"{what} failed on the Ray cluster: {_first_line(cause or e)}") from None


# ---- embeddings ------------------------------------------------------------------------------------
class EmbedBatch:
    """Ray Data's callable class: one per actor, holding the backbone; embeds a batch of paths.

    A batch is ``{"pos": (n,), "path": (n,)}``; the answer adds ``embedding`` (n, dim) float32
    (zeros for an unreadable image), ``error`` ("" when read) and ``weights_id`` (of the weights
    this actor loaded, checked against the driver's)."""

    def __init__(self, name: str, weights: str | None, runs_dir: str | None, *, batch_size: int,
                 device: str, num_workers: int):
        from fieldguide.models.backbones import load_backbone

        self.bb = load_backbone(name, weights, runs_dir=Path(runs_dir) if runs_dir else None)
        self.transform = self.bb.transform()
        self.batch_size, self.device, self.num_workers = batch_size, device, num_workers

    def __call__(self, batch: dict) -> dict:
        from fieldguide.models.inference import image_outputs

        paths = [str(p) for p in batch["path"]]
        feats = np.zeros((len(paths), self.bb.dim), dtype=np.float32)
        errors = np.full(len(paths), "", dtype=object)
        for idx, out, bad in image_outputs(self.bb.model, paths, self.transform, self.bb.dim,
                                           batch_size=self.batch_size, num_workers=self.num_workers,
                                           device=self.device, progress=False):
            feats[idx] = out
            for j, err in bad:
                errors[j] = err or "unreadable"
        return {"pos": np.asarray(batch["pos"], dtype=np.int64), "embedding": feats, "error": errors,
                "weights_id": np.full(len(paths), self.bb.weights_id, dtype=object)}


MAX_CPU_ACTORS = 8  # CPU actors by default (``workers`` overrides it)


def ray_features(name: str, weights: str | None, runs_dir: str | Path | None, weights_id: str, paths: list[str], *,
                 address: str, batch_size: int = 64, device: str = "auto", num_workers: int = 2,
                 workers: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]]:
    """Yield ``(indices, features, errors)`` per batch as ``embed``'s local loop does (indices into
    ``paths``, in the order the batches finish), the images embedded on the Ray cluster at
    ``address`` by backbone ``name`` with ``weights`` (loaded by each actor; its ``weights_id``
    must be the driver's).

    ``workers``: actors (default: one per GPU of the cluster, else one per CPU, at most
    :data:`MAX_CPU_ACTORS`). A GPU actor
    decodes its images with ``num_workers`` loader processes; a CPU actor in its own process."""
    if not paths:
        return
    with connected(address) as ray:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        blocks = math.ceil(len(paths) / batch_size)  # a batch each: the actors share them out
        # each actor holds a copy of the backbone: on a wide CPU cluster, a few actors (torch uses the
        # other cores inside each) rather than one per core
        n = max(1, min(workers or gpus or min(int(resources.get("CPU", 1)), MAX_CPU_ACTORS), blocks))
        log.info("embedding %d images on Ray: %d %s actors", len(paths), n, "GPU" if gpus else "CPU")
        ds = ray.data.from_items([{"pos": i, "path": p} for i, p in enumerate(paths)], override_num_blocks=blocks)
        ds = ds.map_batches(
            EmbedBatch, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
            num_gpus=1 if gpus else 0, num_cpus=1,
            fn_constructor_args=(name, weights, str(runs_dir) if runs_dir else None),
            fn_constructor_kwargs={"batch_size": batch_size, "device": device,
                                   "num_workers": num_workers if gpus else 0},
        )
        with _task_errors("embed"):
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                other = set(batch["weights_id"].tolist()) - {weights_id}
                if other:
                    raise ClusterError(f"backbone {name!r}: a Ray worker loaded weights {sorted(other)[0]}, this "
                                       f"machine {weights_id} (the nodes must see the same files at the same paths)")
                ok = batch["error"] == ""
                pos = batch["pos"]
                yield pos[ok], batch["embedding"][ok], [(int(j), str(e)) for j, e in zip(pos[~ok], batch["error"][~ok])]


# ---- K-fold heads ----------------------------------------------------------------------------------
def fit_fold(head: BaseEstimator, X: np.ndarray, y: np.ndarray, train: np.ndarray,
             test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One fold as ``cross_val_predict`` runs it: a clone of ``head`` fit on the rows ``train``,
    its ``predict_proba`` on the rows ``test``. Returns ``(classes_, probabilities)``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        model = clone(head).fit(X[train], y[train])
        return np.asarray(model.classes_, dtype=int), model.predict_proba(X[test])


def fold_probs(head: BaseEstimator, X: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], *,
               address: str) -> np.ndarray:
    """``cross_val_predict(head, X, y, cv=splits, method="predict_proba")`` with each fold a Ray
    task on the cluster at ``address``: (n, number of classes in ``y``) probabilities, the
    classes encoded as ``cross_val_predict`` encodes them (a class absent from a training fold:
    0 in that fold's rows)."""
    classes, encoded = np.unique(np.asarray(y), return_inverse=True)
    out = np.zeros((len(encoded), len(classes)))
    with connected(address) as ray:
        task = ray.remote(num_cpus=1)(fit_fold)
        X_ref, y_ref = ray.put(np.asarray(X)), ray.put(encoded)
        refs = [task.remote(head, X_ref, y_ref, train, test) for train, test in splits]
        log.info("k-fold: %d fold tasks on Ray", len(refs))
        with _task_errors("a fold of the head"):
            for (_, test), (seen, probs) in zip(splits, ray.get(refs)):
                out[np.ix_(test, seen)] = probs
    return out
