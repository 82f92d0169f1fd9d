"""Ingest a source (a folder, a CUB folder, a CSV manifest, an iNaturalist export, a Darwin Core
Archive) into the store. The readers, one per format, live in :mod:`fieldguide.platform.sources`;
this module checks what they read and writes it.

An ingest reads and checks everything first and writes only then, so a failed ingest (an
``IngestError``: a missing or malformed votes CSV, a CSV column whose values do not fit the
store's field, ``--strict`` with rejects, ...) leaves the store and the warehouse as they were;
its run row says ``failed`` with the reason.

1. Read: the source into records (file path, label, split, observation fields, taxonomy) and the
   votes CSV (exists, readable, has its columns).
2. Decide classes: class names that differ only in case (``Robin`` / ``robin``, in the source or
   against the store's classes) are reported as notices; ``fold_case`` maps each case variant
   onto the store's spelling, else the first seen.
3. Check each record's image in a thread pool (resolves, exists, UTF-8 name, readable, decodes
   fully, not too large) and describe it (size, channels, content hash). Images may live
   anywhere. A file listed several times is taken once when its rows agree (a notice) and
   rejected when they disagree (labels, split, fields); photos of one observation
   (``observation_id``) that the source puts in different splits are rejected.
4. Compare with the store: a file already there is never added twice; a different label in the
   source is a notice, and ``update_labels`` applies it through :func:`store.set_labels`
   (label history and the warehouse's ``label_events``).
5. Write: new samples in one bulk ``add_samples``, label updates, votes, the class tree (the
   warehouse's ``taxa``), the rejects report (``runs/<run>/rejects.csv`` and the warehouse
   ``rejects`` table, ``kind`` ``reject`` or ``notice``), and the warehouse's samples table.

Rejects are rows or files not ingested, each with its reason; notices are decisions taken on
something ingested (or kept) that the curator should know of.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fieldguide.config import Project
from fieldguide.errors import IngestError, StoreError
from fieldguide.platform import store
from fieldguide.platform.lock import writes
from fieldguide.platform.sources import FORMATS, Notice, Record, Reject, SourceOptions, is_utf8, printable
from fieldguide.platform.sources.images import check_records
from fieldguide.platform.sources.tables import check_field_types, clean
from fieldguide.platform.sources.taxonomy import class_tree
from fieldguide.platform.sources.votes import ingest_votes, read_votes
from fieldguide.platform.taxa import write_taxa

log = logging.getLogger(__name__)

LABEL_ACTOR = "ingest"  # the actor of label changes made by ``update_labels``
# options that only some formats read: given to another format, they are an error, not ignored
FORMAT_OPTIONS = {"images": "--images", "label_rank": "--label-rank", "ranks": "--ranks"}


@dataclass
class IngestReport:
    run_id: str
    source: str
    format: str
    added: int = 0
    existing: int = 0
    rejects: list[Reject] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    votes_added: int = 0
    classes_added: int = 0
    labels_updated: int = 0
    rejects_path: str | None = None
    _notice_at: dict[str, Notice] = field(default_factory=dict, repr=False, compare=False)

    def notice(self, path: str | Path, reason: str) -> None:
        """Add a notice; a second one on the same path joins the first (one row per path)."""
        new = Notice(str(path), reason)
        same = self._notice_at.get(new.path)
        if same is None:
            self.notices.append(new)
            self._notice_at[new.path] = new
        else:
            same.reason += f"; {new.reason}"

    def add(self, problems: Iterable[Reject]) -> None:
        """A reader's or a check's rejects and notices, in their order."""
        for problem in problems:
            if isinstance(problem, Notice):
                self.notice(problem.path, problem.reason)
            else:
                self.rejects.append(problem)

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "source": self.source,
            "format": self.format,
            "added": self.added,
            "existing": self.existing,
            "rejected": len(self.rejects),
            "noticed": len(self.notices),
            "votes_added": self.votes_added,
            "classes_added": self.classes_added,
            "labels_updated": self.labels_updated,
            "rejects_report": self.rejects_path,
        }


# ---- class names that differ only in case --------------------------------------------------
def case_variants(known: Iterable[str], incoming: Iterable[str]) -> dict[str, str]:
    """Each name of ``incoming`` that differs only in case from an earlier name -> that name.

    "Earlier" is ``known`` (the store's classes) first, then ``incoming`` in order, so a case
    variant maps onto the store's spelling, else the first spelling seen.
    """
    known, incoming = list(known), list(incoming)
    first: dict[str, str] = {}
    for name in known + incoming:
        if name:
            first.setdefault(name.casefold(), name)
    return {name: first[name.casefold()] for name in dict.fromkeys(incoming)
            if name and first[name.casefold()] != name}


def _decide_case(known: list[str], incoming: list[str], fold_case: bool, report: IngestReport) -> dict[str, str]:
    """The case variants in the source, each a notice; returns the map to apply (empty unless folding)."""
    variants = case_variants(known, incoming)
    for name, canon in variants.items():
        where = " (in the store)" if canon in known else ""
        decision = (f"mapped onto {canon!r} (--fold-case)" if fold_case
                    else f"kept as its own class (--fold-case maps it onto {canon!r})")
        report.notice(f"class:{name}", f"class {name!r} differs only in case from {canon!r}{where}; {decision}")
    return variants if fold_case else {}


# ---- comparing with the store --------------------------------------------------------------
def _open_dataset(project: Project):
    """The project's dataset, or None before the first ingest (nothing is created)."""
    try:
        return store.dataset(project, create=False)
    except StoreError:
        return None


def _stored(ds) -> dict[str, tuple[str, str | None, list[str]]]:
    """filepath -> (sample id, label, tags) of every sample in the store."""
    if ds is None:
        return {}
    paths, ids, labels, tags = ds.values(["filepath", "id", "ground_truth.label", "tags"])
    return {p: (i, label, t) for p, i, label, t in zip(paths, ids, labels, tags)}


def _label_updates(good: list[tuple[Record, dict]], stored: dict, update_labels: bool,
                   report: IngestReport) -> dict[str, Record]:
    """Files in the store whose label the source changes: each a notice; returns sample id ->
    record of those to update (empty unless ``update_labels``). A source without a label for a
    file changes nothing."""
    updates = {}
    for record, _ in good:
        sid, old, _ = stored.get(str(record.filepath), (None, None, None))
        if sid is None or record.label is None or record.label == old:
            continue
        was = f"in the store as {old!r}" if old is not None else "in the store without a label"
        kept = f"kept {old!r}" if old is not None else "kept it unlabeled"
        decision = f"label set to {record.label!r} (--update-labels)" if update_labels \
            else f"{kept} (--update-labels applies it)"
        report.notice(record.filepath, f"{was}, the source says {record.label!r}; {decision}")
        if update_labels:
            updates[sid] = record
    return updates


# ---- writing to the store ------------------------------------------------------------------
def _to_sample(record: Record, meta: dict):
    import fiftyone as fo

    fields = dict(record.fields)
    location = fields.pop("location", None)
    sample = fo.Sample(
        filepath=str(record.filepath),
        tags=[record.split],
        origin="real",
        filehash=meta["filehash"],
        metadata=fo.ImageMetadata(
            size_bytes=meta["size_bytes"], mime_type=meta["mime_type"], width=meta["width"],
            height=meta["height"], num_channels=meta["num_channels"],
        ),
    )
    if record.label is not None:
        sample["ground_truth"] = fo.Classification(label=record.label)
    if location is not None:
        sample["location"] = fo.GeoLocation(point=list(location))
    if record.taxonomy:
        sample["taxonomy"] = dict(record.taxonomy)  # a dynamic field: rank -> name, coarse to fine
    for key, value in fields.items():
        value = clean(value)
        if value is not None:
            sample[key] = value
    return sample


def _add_samples(ds, new: list[tuple[Record, dict]]) -> None:
    if new:
        samples = [_to_sample(r, m) for r, m in new]
        # FiftyOne's bar prints to stdout: keep stdout for results (--json), bars on a terminal only
        with contextlib.redirect_stdout(sys.stderr):
            ds.add_samples(samples, progress=sys.stderr.isatty())


def _apply_label_updates(project: Project, ds, updates: dict[str, Record], stored: dict, run_id: str) -> int:
    """Set the source's labels through :func:`store.set_labels`; a sample that was ``unlabeled``
    moves to the record's split. Returns how many labels changed."""
    if not updates:
        return 0
    changed = store.set_labels(project, ds, {sid: r.label for sid, r in updates.items()}, source="ingest",
                               actor=LABEL_ACTOR, run_id=run_id, allow_new_classes=True)
    tags = {sid: t for sid, _, t in stored.values()}
    for split in {r.split for r in updates.values()}:
        moved = [sid for sid, r in updates.items() if r.split == split and "unlabeled" in tags[sid]]
        if moved:
            ds.select(moved).untag_samples("unlabeled")
            ds.select(moved).tag_samples(split)
    return changed


def _input_path(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser().resolve()
    if not is_utf8(str(path)):
        raise IngestError(f"{printable(str(path))}: the {what}'s path is not valid UTF-8; rename it")
    return path


def _options(project: Project, fmt: str, *, filepath_column: str, label_column: str, root, images,
             label_rank: str | None, ranks: Sequence[str] | str | None) -> SourceOptions:
    """The reader's options, checked: one the format does not read is an error, not ignored."""
    given = {"images": images, "label_rank": label_rank, "ranks": ranks}
    unread = [FORMAT_OPTIONS[name] for name, value in given.items() if value and name not in FORMATS[fmt].options]
    if unread:
        users = {o: [f for f, s in FORMATS.items() if n in s.options] for n, o in FORMAT_OPTIONS.items()}
        raise IngestError("; ".join(f"{o} does not apply to --format {fmt} (it is for {', '.join(users[o])})"
                                    for o in unread))
    images_dir = _input_path(images, "images folder") if images else None
    if images_dir is not None and not images_dir.is_dir():
        raise IngestError(f"{images_dir}: --images needs a folder")
    return SourceOptions(
        extensions=frozenset(e.lower() for e in project.config.ingest.extensions),
        filepath_column=filepath_column, label_column=label_column,
        root=_input_path(root, "root") if root else None, images=images_dir,
        label_rank=label_rank.strip().lower() if label_rank else None,
        ranks=tuple(r.strip() for r in (ranks.split(",") if isinstance(ranks, str) else ranks or ())
                    if r.strip()),
    )


@writes("ingest")
def ingest(project: Project, source: str | Path, *, fmt: str = "folder",
           filepath_column: str = "filepath", label_column: str = "label",
           root: str | Path | None = None, images: str | Path | None = None,
           label_rank: str | None = None, ranks: Sequence[str] | str | None = None,
           votes: str | Path | None = None, strict: bool = False, fold_case: bool = False,
           update_labels: bool = False) -> IngestReport:
    """Ingest ``source`` into the project's dataset; see the module docstring.

    ``fmt`` is a name of :data:`fieldguide.platform.sources.FORMATS`. ``root``: relative paths in
    a CSV (the manifest, the votes) resolve against it (default: that CSV's folder). ``images``
    (inat, dwca): the folder of the photos, each named ``<id>`` or ``<id>_<k>`` after its
    observation (default: the source's folder). ``label_rank``: the rank that is the label (inat,
    dwca; default the scientific name), or the rank of the label column (csv). ``ranks`` (csv):
    the columns holding the ranks above the label, coarse to fine. ``fold_case`` maps class
    names that differ only in case onto one spelling; ``update_labels`` gives files already in
    the store the source's label (else a notice says it differs).
    """
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")
    source = _input_path(source, "source")
    if not source.exists():
        raise IngestError(f"{source} does not exist")
    if not FORMATS[fmt].fits(source):
        raise IngestError(f"{source}: --format {fmt} needs {FORMATS[fmt].needs}")
    options = _options(project, fmt, filepath_column=filepath_column, label_column=label_column, root=root,
                       images=images, label_rank=label_rank, ranks=ranks)
    votes_path = _input_path(votes, "votes CSV") if votes else None
    config = {"source": str(source), "format": fmt, "strict": strict, "votes": str(votes_path) if votes else None,
              "fold_case": fold_case, "update_labels": update_labels, "root": options.root,
              "images": options.images, "label_rank": options.label_rank, "ranks": list(options.ranks)}
    with store.warehouse(project).run("ingest", config) as run_id:
        report = IngestReport(run_id=run_id, source=str(source), format=fmt)
        plan = _plan(project, source, fmt, options, votes=votes_path, fold_case=fold_case,
                     update_labels=update_labels, report=report)
        if strict and report.rejects:
            _write_rejects(project, report)
            first = report.rejects[0]
            raise IngestError(
                f"{len(report.rejects)} reject(s) with --strict, nothing ingested "
                f"(first: {first.path}: {first.reason}; report {report.rejects_path})"
            )
        _write(project, plan, report)
    return report


@dataclass
class _Plan:
    """What an ingest writes, decided before anything is written."""

    ds: object | None  # the dataset; None before the first ingest
    stored: dict  # filepath -> (sample id, label, tags) of the samples in the store
    new: list[tuple[Record, dict]]  # records (and image metadata) to add
    existing: int  # good files of the source already in the store
    updates: dict[str, Record]  # sample id -> record whose label it takes
    taxa: list[dict]  # rows of the warehouse's class tree
    votes: pd.DataFrame | None  # rows of the votes CSV
    votes_path: Path | None
    votes_root: Path | None  # relative vote paths resolve against it (default: the votes CSV's folder)


def _plan(project: Project, source: Path, fmt: str, options: SourceOptions, *, votes: Path | None,
          fold_case: bool, update_labels: bool, report: IngestReport) -> _Plan:
    """Read and check every input (rejects and notices go to ``report``); writes nothing."""
    vote_rows = read_votes(votes) if votes else None
    problems: list[Reject] = []
    records = FORMATS[fmt].read(source, options, problems)
    report.add(problems)
    ds = _open_dataset(project)
    incoming = [r.label for r in records] + (vote_rows["label"].tolist() if vote_rows is not None else [])
    fold = _decide_case(store.classes(ds) if ds is not None else [], incoming, fold_case, report)
    for record in records:
        record.label = fold.get(record.label, record.label)
    if vote_rows is not None:
        vote_rows["label"] = vote_rows["label"].map(lambda label: fold.get(label, label))
    problems = []
    good = check_records(records, project.config.ingest.workers, problems)
    report.add(problems)
    stored = _stored(ds)
    new = [(r, m) for r, m in good if str(r.filepath) not in stored]
    updates = _label_updates(good, stored, update_labels, report)
    check_field_types(ds, [r for r, _ in new], source)
    # the class tree of the labels the store holds after this ingest: new, kept as they are, or updated
    labeled = [r for r, _ in good if str(r.filepath) not in stored or stored[str(r.filepath)][1] == r.label]
    taxa, conflicts = class_tree(labeled + list(updates.values()))
    for label, why in conflicts.items():
        report.notice(f"class:{label}", why)
    return _Plan(ds, stored, new, len(good) - len(new), updates, taxa, vote_rows, votes, options.root)


def _write(project: Project, plan: _Plan, report: IngestReport) -> None:
    """Samples, label updates, votes, the class tree, the rejects report, the warehouse's samples table."""
    ds = plan.ds if plan.ds is not None else store.dataset(project)
    labels = {r.label for r, _ in plan.new if r.label} | {r.label for r in plan.updates.values()}
    report.classes_added = len(store.add_classes(ds, labels))
    _add_samples(ds, plan.new)
    report.added, report.existing = len(plan.new), plan.existing
    report.labels_updated = _apply_label_updates(project, ds, plan.updates, plan.stored, report.run_id)
    if plan.votes is not None:
        report.votes_added = ingest_votes(ds, plan.votes, plan.votes_path, report.rejects, root=plan.votes_root)
    write_taxa(project, plan.taxa)
    _write_rejects(project, report)
    store.snapshot_samples(project, ds)


def _write_rejects(project: Project, report: IngestReport) -> None:
    rows = [(r.path, r.reason, "reject") for r in report.rejects]
    rows += [(n.path, n.reason, "notice") for n in report.notices]
    path = project.run_dir(report.run_id) / "rejects.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason", "kind"])
        writer.writerows(rows)
    report.rejects_path = str(path)
    store.warehouse(project).write(
        "rejects", [{"run_id": report.run_id, "path": p, "reason": r, "kind": k} for p, r, k in rows]
    )
