"""Embedding extraction with a cache per (backbone, weights, sample).

The cache of a backbone lives in ``PROJECT/embeddings/<backbone>/<weights id>/part-*.parquet``:
rows of (sample_id, filehash, embedding). A sample is embedded again only when it is new or its
file changed (another hash). Parts are written every few batches, so an interrupted run
resumes where it stopped. Unreadable images are skipped and reported, never a crash.

With ``ray_address`` (``embed --ray auto|ADDRESS``, ``models.ray_address``) the images are
embedded on a Ray cluster (:func:`fieldguide.models.distributed.ray_features`) and this process
writes the same cache from the batches that come back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fieldguide.config import Project
from fieldguide.errors import ModelError, NotReadyError
from fieldguide.models.backbones import Backbone, count_macs, count_params, load_backbone
from fieldguide.models.inference import image_outputs
from fieldguide.platform import samples, store
from fieldguide.platform.warehouse import now
from fieldguide.platform.lock import writes

log = logging.getLogger(__name__)

FLUSH_EVERY = 1024


@dataclass
class EmbedReport:
    run_id: str
    backbone: str
    dim: int
    embedded: int = 0
    cached: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    cache_dir: str = ""

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "backbone": self.backbone, "dim": self.dim,
            "embedded": self.embedded, "cached": self.cached, "skipped": len(self.skipped),
            "seconds": round(self.seconds, 2), "images_per_s": round(self.images_per_s, 2),
            "cache_dir": self.cache_dir,
        }


def iter_features(bb: Backbone, paths: list[str], *, batch_size: int = 64, num_workers: int = 2,
                  device: str = "auto", desc: str = "embedding"):
    """Yield ``(indices, features, errors)`` per batch: features is a float32 array (n, dim)."""
    return image_outputs(bb.model, paths, bb.transform(), bb.dim, batch_size=batch_size, num_workers=num_workers,
                         device=device, desc=desc)


# ---- the cache -------------------------------------------------------------------------------------
def cache_dir(project: Project, backbone: str, weights_id: str) -> Path:
    return project.embeddings_dir / backbone.replace("/", "_") / weights_id


def _write_part(directory: Path, ids: list[str], hashes: list[str], feats: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    n = len(list(directory.glob("part-*.parquet")))
    flat = pa.array(feats.astype(np.float32).ravel())
    table = pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "filehash": pa.array(hashes, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, feats.shape[1]),
    })
    tmp = directory / f".part-{n:05d}.tmp"
    pq.write_table(table, tmp)
    tmp.rename(directory / f"part-{n:05d}.parquet")  # a half-written part is never read


def write_embeddings(project: Project, backbone: str, weights_id: str, ids: list[str], hashes: list[str],
                     feats: np.ndarray, *, part_rows: int | None = FLUSH_EVERY) -> Path:
    """Add the rows ``(ids[i], hashes[i], feats[i])`` to the cache of ``backbone`` with the weights
    ``weights_id``, in parts of ``part_rows`` rows (None: one part), and make these weights the
    backbone's current ones (what :func:`load_embeddings` reads). Returns the cache folder."""
    directory = cache_dir(project, backbone, weights_id)
    step = part_rows or max(len(ids), 1)
    for start in range(0, len(ids), step):
        _write_part(directory, ids[start:start + step], hashes[start:start + step], feats[start:start + step])
    _current_file(project, backbone).parent.mkdir(parents=True, exist_ok=True)
    _current_file(project, backbone).write_text(weights_id)
    return directory


def read_cache(directory: Path) -> tuple[list[str], list[str], np.ndarray]:
    """All cached rows (the newest row per sample wins)."""
    parts = sorted(directory.glob("part-*.parquet"))
    if not parts:
        return [], [], np.zeros((0, 0), dtype=np.float32)
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    feats = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    ids = table.column("sample_id").to_pylist()
    hashes = table.column("filehash").to_pylist()
    last = {sid: i for i, sid in enumerate(ids)}
    keep = sorted(last.values())
    return [ids[i] for i in keep], [hashes[i] for i in keep], feats[keep]


def _current_file(project: Project, backbone: str) -> Path:
    return project.embeddings_dir / backbone.replace("/", "_") / "CURRENT"


def _stored_files(project: Project, ds=None) -> tuple[list[str], list[str], list[str | None]]:
    """``(sample ids, file paths, file hashes)`` of every sample in the store, in store order."""
    table = samples.arrays(ds if ds is not None else store.dataset(project, create=False), ["filepath", "filehash"])
    return table["id"].tolist(), table["filepath"].tolist(), table["filehash"].tolist()


# ---- the step ---------------------------------------------------------------------------------------
@writes('embed')
def embed(project: Project, backbone: str | None = None, weights: str | None = None, *,
          batch_size: int | None = None, num_workers: int | None = None, device: str | None = None,
          bb: Backbone | None = None, ray_address: str | None = None) -> EmbedReport:
    """Embed every sample of the store that the cache does not hold yet (or whose file changed).
    ``ray_address``: ``auto`` or a Ray cluster's address to embed there (default:
    models.ray_address; empty or ``none``: on this machine)."""
    from fieldguide.models.distributed import wants_ray

    cfg = project.config.models
    name = backbone or cfg.backbone
    weights = weights if weights is not None else (cfg.weights or None)
    # a backbone loaded here (bench backbones) stays here unless a cluster is asked for by name
    address = ray_address if ray_address is not None else ("" if bb is not None else cfg.ray_address)
    if bb is not None and wants_ray(address):
        raise ModelError(f"backbone {bb.name!r}: a loaded backbone cannot go to a Ray cluster (name it instead)")
    if bb is None:
        bb = load_backbone(name, weights, runs_dir=project.runs_dir)
    ids, paths, hashes = _stored_files(project)
    directory = cache_dir(project, bb.name, bb.weights_id)
    todo = _not_cached(directory, ids, hashes)
    wh = store.warehouse(project)
    config = {"backbone": bb.name, "weights_id": bb.weights_id, "batch_size": batch_size or cfg.batch_size,
              **({"ray": address} if wants_ray(address) else {})}
    with wh.run("embed", config) as run_id:
        report = EmbedReport(run_id=run_id, backbone=bb.name, dim=bb.dim,
                             cached=len(ids) - len(todo), cache_dir=str(directory))
        start = time.perf_counter()
        buf_ids, buf_hashes, buf_feats = [], [], []
        todo_paths = [paths[i] for i in todo]
        loader = dict(batch_size=batch_size or cfg.batch_size, device=device or cfg.device,
                      num_workers=cfg.num_workers if num_workers is None else num_workers)
        if wants_ray(address):
            from fieldguide.models.distributed import ray_features

            batches = ray_features(name, _absolute(weights), project.runs_dir.resolve(), bb.weights_id, todo_paths,
                                   address=address, **loader)
        else:
            batches = iter_features(bb, todo_paths, **loader)
        with closing(batches):
            for idx, feats, bad in batches:
                for j, err in bad:
                    report.skipped.append((todo_paths[j], err))
                for j, f in zip(idx, feats):
                    k = todo[j]
                    buf_ids.append(ids[k])
                    buf_hashes.append(hashes[k] or "")
                    buf_feats.append(f)
                if len(buf_ids) >= FLUSH_EVERY:
                    _write_part(directory, buf_ids, buf_hashes, np.stack(buf_feats))
                    report.embedded += len(buf_ids)
                    buf_ids, buf_hashes, buf_feats = [], [], []
        if buf_ids:
            _write_part(directory, buf_ids, buf_hashes, np.stack(buf_feats))
            report.embedded += len(buf_ids)
        report.seconds = time.perf_counter() - start
        report.images_per_s = report.embedded / report.seconds if report.embedded else 0.0
        directory.mkdir(parents=True, exist_ok=True)
        _current_file(project, bb.name).write_text(bb.weights_id)
        rows = [{"run_id": run_id, "split": "all", "name": k, "value": float(v)} for k, v in (
            ("embedded", report.embedded), ("cached", report.cached), ("skipped", len(report.skipped)),
            ("seconds", report.seconds), ("images_per_s", report.images_per_s))]
        wh.write("metrics", rows)
        if report.skipped:
            wh.write("rejects", [{"run_id": run_id, "path": p, "reason": r} for p, r in report.skipped])
        # images/s means something only over a few batches; keep an earlier measurement otherwise
        if report.embedded >= 256:
            record_cost(project, bb, report.images_per_s)
        elif wh.query("SELECT 1 FROM backbone_costs WHERE backbone = ?", [bb.name]).empty:
            record_cost(project, bb, None)
    return report


def _absolute(weights: str | None) -> str | None:
    """``weights`` as an absolute path when it is a local file or folder (a Ray worker's working
    folder is not this one)."""
    return str(Path(weights).resolve()) if weights and Path(weights).exists() else weights


def _not_cached(directory: Path, ids: list[str], hashes: list[str | None]) -> list[int]:
    """Positions of the samples ``ids`` (with file ``hashes``) the cache ``directory`` lacks or
    holds for another file."""
    cached_ids, cached_hashes, _ = read_cache(directory)
    have = dict(zip(cached_ids, cached_hashes))
    return [i for i, (sid, h) in enumerate(zip(ids, hashes)) if sid not in have or have[sid] != h]


def fully_embedded(project: Project, bb: Backbone) -> bool:
    """Whether every sample of the store has its current embedding by ``bb`` (these weights), so
    that ``embed`` would write nothing and a reader needs no write lock."""
    current = _current_file(project, bb.name)
    if not current.exists() or current.read_text().strip() != bb.weights_id:
        return False
    ids, _, hashes = _stored_files(project)
    return not _not_cached(cache_dir(project, bb.name, bb.weights_id), ids, hashes)


def record_cost(project: Project, bb: Backbone, images_per_s: float | None) -> dict:
    """Parameters, MACs at the input size, and measured images/s, into ``backbone_costs``."""
    row = {"backbone": bb.name, "params": count_params(bb.model), "macs": count_macs(bb),
           "input_size": bb.input_size, "images_per_s": images_per_s, "measured": now()}
    store.warehouse(project).write("backbone_costs", [row])
    return row


def load_embeddings(project: Project, backbone: str | None = None, ds=None) -> tuple[list[str], np.ndarray]:
    """The cached embeddings of the samples now in the store, in store order.

    Returns ``(sample_ids, X)``: samples without an embedding (not embedded yet, or whose file
    changed since) are left out.
    """
    name = backbone or project.config.models.backbone
    current = _current_file(project, name)
    if not current.exists():
        raise NotReadyError(f"no embeddings for backbone {name!r} yet (run 'fieldguide embed --backbone {name}')")
    directory = cache_dir(project, name, current.read_text().strip())
    cached_ids, cached_hashes, feats = read_cache(directory)
    ids, _, hashes = _stored_files(project, ds)
    row = {sid: (i, h) for i, (sid, h) in enumerate(zip(cached_ids, cached_hashes))}
    keep = [(sid, row[sid][0]) for sid, h in zip(ids, hashes) if sid in row and row[sid][1] == (h or "")]
    if not keep:
        raise NotReadyError(f"no cached embeddings for the samples in the store (run 'fieldguide embed --backbone {name}')")
    return [sid for sid, _ in keep], feats[[i for _, i in keep]]


def embedded_table(project: Project, backbone: str | None = None, ds=None,
                   fields: Iterable[str] = ()) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """``(sample_ids, X, table)``: :func:`load_embeddings` and the store's samples table
    (:func:`~fieldguide.platform.store.samples_table` with ``fields``) indexed by id, in the same
    order as the rows of ``X``: the one way a step gets arrays aligned with its samples."""
    ds = ds if ds is not None else store.dataset(project, create=False)
    ids, X = load_embeddings(project, backbone, ds)
    return ids, X, store.samples_table(ds, list(fields)).set_index("id").loc[ids]


def import_embeddings(project: Project, source: Project, backbone: str | None = None) -> int:
    """Copy ``source``'s cached embeddings of the same image files (matched by content hash)
    into ``project``'s cache, so a scratch project over the same images needs no re-embedding.

    Returns how many samples got an embedding; the rest are embedded by the next ``embed``.
    """
    name = backbone or project.config.models.backbone
    current = _current_file(source, name)
    if not current.exists():
        raise NotReadyError(f"project {source.root} has no embeddings for backbone {name!r}")
    weights_id = current.read_text().strip()
    src_ids, src_hashes, feats = read_cache(cache_dir(source, name, weights_id))
    by_hash = {h: i for i, h in enumerate(src_hashes) if h}
    ids, _, hashes = _stored_files(project)
    directory = cache_dir(project, name, weights_id)
    have = dict(zip(*read_cache(directory)[:2]))
    rows = [(sid, h, by_hash[h]) for sid, h in zip(ids, hashes) if h in by_hash and have.get(sid) != h]
    write_embeddings(project, name, weights_id, [r[0] for r in rows], [r[1] for r in rows],
                     feats[[r[2] for r in rows]], part_rows=None)
    return len(rows)


def embedded_backbones(project: Project) -> list[str]:
    """The backbones with a cache in the project, named as ``embed --backbone`` names them (the
    warehouse's embed runs give the name of a cache folder; the folder's name otherwise), in name order."""
    import json

    runs = store.warehouse(project).query("SELECT DISTINCT config FROM runs WHERE kind = 'embed'")
    named = [json.loads(c or "{}").get("backbone") for c in runs.get("config", [])]
    by_folder = {n.replace("/", "_"): n for n in [project.config.models.backbone, *named] if n}
    return sorted(by_folder.get(c.parent.name, c.parent.name) for c in project.embeddings_dir.glob("*/CURRENT"))


def joint_embedded_table(project: Project, backbones: list[str], ds=None, fields: Iterable[str] = (), *,
                         missing: str = "error") -> tuple[list[str], np.ndarray, pd.DataFrame, dict[str, int]]:
    """:func:`embedded_table` over several backbones: ``(sample_ids, X, table, widths)`` where
    the rows of ``X`` hold each backbone's embedding of one sample side by side, in the order of
    ``backbones`` (``widths``: backbone -> its number of columns), samples in store order.

    ``missing="error"``: every backbone must embed every sample that one of them embeds; the
    first that does not is a :class:`NotReadyError` naming the ``embed`` to run. ``"drop"``: the
    samples are those the first backbone embeds, and a backbone lacking one of them is left out
    (``widths`` lacks it)."""
    ds = ds if ds is not None else store.dataset(project, create=False)
    loaded = {}
    for name in backbones:
        try:
            loaded[name] = load_embeddings(project, name, ds)
        except NotReadyError:
            if missing == "error" or name == backbones[0]:
                raise
            loaded[name] = ([], None)
    ids = loaded[backbones[0]][0]
    if missing == "error":
        embedded = set().union(*(set(i) for i, _ in loaded.values()))
        ids = [sid for sid in _stored_files(project, ds)[0] if sid in embedded]
    blocks, widths = [], {}
    for name, (own_ids, feats) in loaded.items():
        row = {sid: i for i, sid in enumerate(own_ids)}
        lacking = sum(sid not in row for sid in ids)
        if lacking and missing == "error":
            raise NotReadyError(f"backbone {name!r}: {lacking} of the {len(ids)} samples embedded by "
                                f"{', '.join(repr(b) for b in backbones if b != name)} have no embedding "
                                f"(run 'fieldguide embed --backbone {name}')")
        if lacking:
            log.info("backbone %s left out: %d samples without an embedding", name, lacking)
            continue
        blocks.append(feats[[row[sid] for sid in ids]])
        widths[name] = feats.shape[1]
    table = store.samples_table(ds, list(fields)).set_index("id").loc[ids]
    return ids, np.concatenate(blocks, axis=1), table, widths
