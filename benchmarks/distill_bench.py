"""Proteus distillation on CPU: EfficientNet-Lite0 into a ViT and a hybrid on a collection's images.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/distill_bench.py --cache /work/main/benchmarks/.cache \\
        [--collection inat-plants-dev|cub100] [--students vit_tiny_patch16_224,levit_128s] [--image-size 96] \\
        [--epochs 15] [--cached-views 4]

Each student is distilled from random init (no labels; token, patch and feature levels; MSE +
cosine; strong augmentation) on the collection's train images (cub100: its own split;
inat-plants-dev: the suite's, 30% of each species to test, ``random.Random(7)``), the teacher's
targets cached on ``--cached-views`` fixed views per image (0: the online path, a teacher pass
per batch), with the checkpoints of :func:`fieldguide.models.distill.distill_images` (a rerun
resumes). Then the distilled student,
the same architecture at random init and the teacher are scored on frozen features: 1-NN (cosine)
test top-1 and plain LR test top-1 (``LogisticRegression(C=10)`` on L2-normalised features). The
teacher's features come from the suite's cache (224 px; the collection is ingested and embedded
there first when it is not yet); the students' are computed here, at
their input size. Writes ``benchmarks/results/distill.csv``, replacing the rows of the students
it runs and keeping the others (so students can run in separate processes). No GPU: GPU figures
are missing.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def knn_top1(X_train, y_train, X_test, y_test) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    from fieldguide.suite.baselines import l2n

    knn = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(l2n(X_train), y_train)
    return float((knn.predict(l2n(X_test)) == y_test).mean())


def lr_top1(X_train, y_train, X_test, y_test, n_classes: int) -> float:
    from fieldguide.suite.baselines import plain_lr_probs

    return float((plain_lr_probs(X_train, y_train, X_test, n_classes).argmax(1) == y_test).mean())


def embed_paths(bb, paths: list[str]) -> tuple[np.ndarray, float]:
    from fieldguide.models.embed import iter_features

    X = np.zeros((len(paths), bb.dim), dtype=np.float32)
    t = time.perf_counter()
    for idx, feats, bad in iter_features(bb, paths, batch_size=64, num_workers=1, device="cpu",
                                         desc=f"embed {bb.name}"):
        assert not bad, bad
        X[idx] = feats
    return X, len(paths) / (time.perf_counter() - t)


def collection_split(cache: Path, data: Path, collection: str, teacher: str):
    """The collection's :class:`~fieldguide.suite.collections.Features` with the teacher's embeddings
    (ingested and embedded into ``cache/<collection>`` when not yet there) and ``(paths, labels as
    indices, test mask)`` of its labeled images in that order: cub100 by its own split, a collection
    without one by the suite's (30% of each species to test, ``random.Random(7)``; for
    inat-plants-dev the same train rows, in the same order, as the metadata.csv split this script
    read before ``--collection``: checked equal to the last digit)."""
    from fieldguide.suite.collections import bundled_collections, collection_features

    f = collection_features(bundled_collections(data)[collection], cache, backbone=teacher)
    paths = f.paths_train + f.paths_test
    test = np.r_[np.zeros(len(f.paths_train), bool), np.ones(len(f.paths_test), bool)]
    return f, paths, np.r_[f.y_train, f.y_test], test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    ap.add_argument("--collection", default="inat-plants-dev",
                    help="A bundled collection (cub100, inat-plants-dev).")
    ap.add_argument("--teacher", default="efficientnet_lite0")
    ap.add_argument("--students", default="vit_tiny_patch16_224,levit_128s")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--teacher-size", type=int, default=160, help="The teacher's input size on each view.")
    ap.add_argument("--cached-views", type=int, default=4)
    ap.add_argument("--token-weight", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--limit", type=int, default=0, help="Distil on the first N train images only (a smoke run).")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "distill",
                    help="Checkpoints and students (a rerun resumes from them).")
    ap.add_argument("--evaluate-checkpoint", action="store_true",
                    help="Score each student's run as its last checkpoint stands (it may still be running).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill.csv")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from fieldguide.models.backbones import count_params, load_backbone, save_student
    from fieldguide.models.checkpoints import CheckpointWriter
    from fieldguide.models.distill import create_student, distill_images
    from fieldguide.platform.warehouse import now

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    coll = args.collection
    f, paths, y, test = collection_split(args.cache, args.data, coll, args.teacher)
    Xt_tr, yt_tr, Xt_te, yt_te, classes = f.X_train, f.y_train, f.X_test, f.y_test, f.classes
    train_paths = [p for p, t in zip(paths, test) if not t][:args.limit or None]
    teacher = load_backbone(args.teacher)
    rows = [{"collection": coll, "backbone": args.teacher, "arch": args.teacher, "init": "teacher (ImageNet)",
             "image_size": teacher.input_size, "params_m": count_params(teacher.model) / 1e6, "epochs": np.nan,
             "distill_seconds": np.nan, "distill_images_per_s": np.nan,
             "knn_top1": knn_top1(Xt_tr, yt_tr, Xt_te, yt_te),
             "lr_top1": lr_top1(Xt_tr, yt_tr, Xt_te, yt_te, len(classes)), "device": "cpu (2 shared cores)"}]
    for arch in [a.strip() for a in args.students.split(",") if a.strip()]:
        name = f"{arch} (random init, {args.image_size} px)"
        done = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame({"collection": [], "backbone": []})
        if not args.evaluate_checkpoint and name not in set(done.loc[done["collection"] == coll, "backbone"]):
            torch.manual_seed(0)
            random_bb, _ = create_student(arch, args.image_size)
            rows.append(scored_row(random_bb, paths, y, test, len(classes), collection=coll, backbone=name,
                                   arch=arch, init="random", image_size=args.image_size, epochs=0))
            write_rows(rows, args.out)
        student, kwargs = create_student(arch, args.image_size)
        prefix = "" if coll == "inat-plants-dev" else f"{coll}-"  # inat-plants-dev's folders predate --collection
        folder = args.work / (f"{prefix}{arch}-{args.image_size}px-{args.epochs}ep-v{args.cached_views}"
                              f"-t{args.teacher_size}-w{args.token_weight:g}-lr{args.lr:g}")
        folder.mkdir(parents=True, exist_ok=True)
        ckpt_path = folder / "last.pt"
        resumed = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
        recipe = {"cached_views": args.cached_views, "teacher_size": args.teacher_size, "token_weight": args.token_weight,
                  "lr": args.lr, "batch_size": args.batch_size}
        name = f"{arch} (distilled, {args.cached_views or 'no'} cached views, {args.image_size} px"
        if args.evaluate_checkpoint:  # the run as its checkpoint stands, while it goes on
            state = resumed["state"]
            student.model.load_state_dict({k.removeprefix("student."): v for k, v in resumed["model"].items()
                                           if k.startswith("student.")})
            per_epoch = -(-len(train_paths) // args.batch_size)
            epochs = round(state.epoch + state.step / per_epoch, 1)
            name += f", {epochs:g} of {args.epochs} ep)"
        else:
            writer = CheckpointWriter(ckpt_path, {"arch": arch}, resumed["started"] if resumed else now())
            _, state = distill_images(teacher, student, train_paths, epochs=args.epochs, lr=args.lr,
                                      batch_size=args.batch_size, num_workers=1, device="cpu",
                                      cached_views=args.cached_views, teacher_size=args.teacher_size,
                                      token_weight=args.token_weight, views_path=folder / "views.pt",
                                      state=resumed["state"] if resumed else None, resumed=resumed, checkpoint=writer)
            save_student(folder / "student", student.model, {
                "arch": arch, "kwargs": kwargs, "input_size": args.image_size, "mean": student.mean, "std": student.std,
                "interpolation": student.interpolation, "crop_pct": student.crop_pct, "teacher": args.teacher})
            epochs = args.epochs
            name += f", {args.epochs} ep)"
        rows.append(scored_row(student, paths, y, test, len(classes), collection=coll, backbone=name, arch=arch,
                               init="distilled", image_size=args.image_size, epochs=epochs, **recipe,
                               views_seconds=state.views_seconds, distill_seconds=state.seconds,
                               distill_images_per_s=state.images / state.seconds if state.seconds else np.nan))
        logging.info("%s: %s", arch, rows[-1])
        write_rows(rows, args.out)
    print(write_rows(rows, args.out).to_string(index=False))


def scored_row(bb, paths, y, test, n_classes: int, **row) -> dict:
    """``row`` with the backbone's parameters and the 1-NN and LR test top-1 of its features."""
    from fieldguide.models.backbones import count_params

    X, _ = embed_paths(bb, paths)
    return {**row, "params_m": count_params(bb.model) / 1e6,
            "knn_top1": knn_top1(X[~test], y[~test], X[test], y[test]),
            "lr_top1": lr_top1(X[~test], y[~test], X[test], y[test], n_classes), "device": "cpu (2 shared cores)"}


def write_rows(rows: list[dict], out: Path) -> pd.DataFrame:
    """``rows`` into ``out``, replacing the rows of the same (collection, backbone) and keeping the others."""
    df = pd.DataFrame(rows)
    if out.exists():
        old = pd.read_csv(out)
        key = ["collection", "backbone"]
        new_keys = pd.MultiIndex.from_frame(df[key])
        df = pd.concat([old[~pd.MultiIndex.from_frame(old[key]).isin(new_keys)], df], ignore_index=True)
    order = df["init"].map({"random": 1, "distilled": 2}).fillna(0)  # per collection: the teacher, then per student
    df = (df.assign(_student=order > 0, _order=order)
          .sort_values(["collection", "_student", "arch", "_order"], kind="stable", key=_collection_order)
          .drop(columns=["_student", "_order"]))
    teacher = df[df["init"].str.startswith("teacher")].groupby("collection")["knn_top1"].first()
    df["knn_gap_to_teacher"] = df["knn_top1"] - df["collection"].map(teacher)
    df.to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.4f")
    return df


def _collection_order(col: pd.Series) -> pd.Series:
    """inat-plants-dev (the first collection measured) before the others, which are in name order."""
    return col.map(lambda c: (c != "inat-plants-dev", c)) if col.name == "collection" else col


if __name__ == "__main__":
    main()
