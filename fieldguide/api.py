"""fieldguide from Python: a project and its steps, the same functions as the CLI verbs.

Each method of :class:`Project` calls the function its ``fieldguide`` verb calls, with the same
defaults (the project's ``fieldguide.toml``), and returns that function's report; the store and
the warehouse come back as pandas DataFrames, a saved view as the FiftyOne view. Expected failures
raise :class:`~fieldguide.errors.FieldguideError` with one line that names the thing and the fix.

This module calls every step (platform, models, curation, the loop), so it sits in the room of the
CLI; ``import fieldguide`` stays light: the package imports it the first time ``open_project`` or
``init_project`` is used.

Example (README, "Python API")::

    import fieldguide as fg

    p = fg.init_project("birds")          # an existing project: fg.open_project("birds")
    p.ingest("photos", fmt="folder")      # the options of `fieldguide ingest`, as keywords
    p.embed()
    p.predict()
    report = p.flag()
    print(f"flagged {report.flagged} of {report.assessed}")

    queue = p.samples(view="to_review")   # a DataFrame: one row per sample, most doubtful first
    print(queue[["filepath", "label", "prediction", "noise_score"]].head())
    top = queue.head(3)
    p.set_labels(dict(zip(top.sample_id, top.prediction)))  # accept the model's label: in label_history
    p.signals().to_csv("signals.csv", index=False)           # what `fieldguide signals export` writes
    print(p.runs()[["run_id", "kind", "status"]])
    p.close()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fieldguide import config
from fieldguide.errors import FieldguideError
from fieldguide.platform import review, store
from fieldguide.platform.samples import has_field

if TYPE_CHECKING:
    import pandas as pd

    from fieldguide.curation.flag import FlagReport
    from fieldguide.models.embed import EmbedReport
    from fieldguide.models.predict import PredictReport
    from fieldguide.models.train import TrainReport
    from fieldguide.platform.exports import ExportReport
    from fieldguide.platform.ingest import IngestReport
    from fieldguide.platform.labelstudio import PullReport, PushReport

#: the columns :meth:`Project.samples` always has: column -> the sample field it reads (None where
#: the store has no such field yet: nothing predicted, flagged or reviewed)
SAMPLE_COLUMNS = {"prediction": "prediction.label", "confidence": "prediction.confidence",
                  "noise_score": "noise_score", "label_issue": "label_issue", "review_state": review.FIELD}


def open_project(path: str | Path | None = None) -> Project:
    """The project at ``path`` (default: ``FIELDGUIDE_PROJECT``, else the current folder), its
    ``fieldguide.toml`` read and validated once. Raises :class:`~fieldguide.errors.ConfigError`
    when the folder holds no valid project file."""
    return Project(config.open_project(path))


def init_project(path: str | Path, name: str | None = None, *, new_id: bool = False) -> Project:
    """``fieldguide init``: create ``path/fieldguide.toml`` (kept as it is when it exists) and open
    the project. ``name`` defaults to the folder's name; ``new_id`` gives a copied project an
    identity of its own (its dataset is renamed)."""
    project = config.init_project(path, name)
    if new_id:
        store.renew_identity(project)
    return Project(project)


class Project:
    """A fieldguide project: its steps, its samples as DataFrames, its saved views and its runs.

    ``project`` is the :class:`fieldguide.config.Project` the lower-level functions take (its
    ``config`` is the validated ``fieldguide.toml``; changing it changes this session only).
    Every step holds the project's write lock, as from the CLI. :meth:`close` (or a ``with``
    block) stops the project's embedded database when this process started it.
    """

    def __init__(self, project: config.Project):
        self.project = project

    @property
    def root(self) -> Path:
        return self.project.root

    @property
    def config(self):
        """The validated ``fieldguide.toml`` (:class:`fieldguide.config.sections.Config`)."""
        return self.project.config

    def __repr__(self) -> str:
        return f"<fieldguide project {self.config.project.name!r} at {self.root}>"

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect, and stop the embedded MongoDB this process started (the next call starts it)."""
        store.release_database()

    # ---- the steps, one per CLI verb ---------------------------------------------------------------
    def ingest(self, source: str | Path, *, fmt: str = "folder", filepath_column: str = "filepath",
               label_column: str = "label", root: str | Path | None = None, images: str | Path | None = None,
               label_rank: str | None = None, ranks: Iterable[str] | str | None = None,
               votes: str | Path | None = None, strict: bool = False, fold_case: bool = False,
               update_labels: bool = False) -> IngestReport:
        """``fieldguide ingest``: add the images and labels of ``source`` (a folder, a CUB folder, a CSV,
        an iNaturalist export or a Darwin Core Archive; ``fmt``) to the store. Re-running adds
        nothing twice. Options as the verb's (``ranks``: a list or ``"family,genus"``); see
        :func:`fieldguide.platform.ingest.ingest`. Returns its report (added, existing, rejects, ...)."""
        from fieldguide.platform.ingest import ingest

        return ingest(self.project, source, fmt=fmt, filepath_column=filepath_column, label_column=label_column,
                      root=root, images=images, label_rank=label_rank, ranks=ranks, votes=votes, strict=strict,
                      fold_case=fold_case, update_labels=update_labels)

    def embed(self, backbone: str | None = None, weights: str | None = None, *, batch_size: int | None = None,
              device: str | None = None) -> EmbedReport:
        """``fieldguide embed``: embed the images the cache does not hold yet (default backbone,
        weights, batch size and device: ``[models]``)."""
        from fieldguide.models.embed import embed

        return embed(self.project, backbone, weights, batch_size=batch_size, device=device)

    def predict(self, *, head: str | None = None, folds: int | None = None,
                backbone: str | None = None, backbones: list[str] | None = None,
                metadata: str | None = None, decision: str | None = None) -> PredictReport:
        """``fieldguide predict``: out-of-sample predictions for every embedded sample (K-fold for the
        labeled training samples; default head and K: ``[predict]``); ``metadata`` auto | none
        (default ``models.metadata``): the date and place prior. ``backbones``: heads across these
        backbones, combined (default ``models.backbones``, else every backbone embedded for the
        samples when there are two or more); ``backbone``: one backbone."""
        from fieldguide.models.predict import predict

        return predict(self.project, head=head, folds=folds, backbone=backbone, backbones=backbones,
                       metadata=metadata, decision=decision)

    def evaluate(self, split: str = "test") -> dict:
        """``fieldguide evaluate``: top-1/5, macro-F1, ECE, per-class scores, confusions and cost of the
        latest predictions on ``split``; returns the metrics (also in the warehouse)."""
        from fieldguide.models.evaluate import evaluate

        return evaluate(self.project, split=split)

    def flag(self, *, backbone: str | None = None, include_test: bool = False, unknown: int = 0) -> FlagReport:
        """``fieldguide flag``: the label-issue signals, ``noise_score``, ``label_issue``, the review
        queue (test samples only with ``include_test``) and the saved views ``to_review``,
        ``outliers``, ``near_duplicates``, ``scarce_classes``."""
        from fieldguide.curation.flag import flag

        return flag(self.project, backbone=backbone, include_test=include_test, unknown=unknown)

    def train(self, *, method: str | None = None, mode: str | None = None, epochs: int | None = None,
              backbone: str | None = None, resume: str | None = None, metadata: str | None = None) -> TrainReport:
        """``fieldguide train``: noise-tolerant training on the current labels (default method, mode and
        epochs: ``[train]``); ``resume`` continues a stopped run from its last checkpoint; ``metadata``
        auto | none (default ``models.metadata``): the date and place prior on the test probabilities."""
        from fieldguide.models.train import train

        return train(self.project, method=method, mode=mode, epochs=epochs, backbone=backbone, resume=resume,
                     metadata=metadata)

    def retrain(self, *, method: str | None = None, mode: str | None = None, epochs: int | None = None,
                flagged: str | None = None) -> tuple[TrainReport, dict]:
        """``fieldguide retrain``: train with the unresolved flagged samples kept, down-weighted or
        excluded (``flagged``; default ``train.flagged``); returns the report and the comparison with
        the previous training run (top-1, macro-F1 and per-class F1 changes)."""
        from fieldguide.models.train import retrain

        return retrain(self.project, method=method, mode=mode, epochs=epochs, flagged=flagged)

    def push(self, view: str = "to_review", *, limit: int | None = None) -> PushReport:
        """``fieldguide relabel push``: send the samples of the saved ``view`` (the first ``limit``) to
        the project's Label Studio; a sample never gets two tasks."""
        from fieldguide.platform.labelstudio import push

        return push(self.project, view=view, limit=limit)

    def pull(self) -> PullReport:
        """``fieldguide relabel pull``: apply the answers from Label Studio (ground truth and label
        history); re-running applies nothing twice."""
        from fieldguide.platform.labelstudio import pull

        return pull(self.project)

    def loop(self, *, force: bool = False, push_limit: int | None = None,
             echo: Callable[[str], None] = print) -> dict:
        """``fieldguide loop``: embed, predict, flag, relabel push/pull, retrain, evaluate, unchanged
        steps skipped; ``echo`` gets each progress line. Returns ``{step: "ran" | "skipped" | reason}``."""
        from fieldguide.loop import run_loop

        return run_loop(self.project, echo=echo, force=force, push_limit=push_limit)

    def export(self, directory: str | Path, *, fmt: str, view: str | None = None, split: str | None = None,
               copy: bool = False, include_pseudo: bool = False, include_synthetic: bool = False,
               overwrite: bool = False) -> ExportReport:
        """``fieldguide export``: the current labels as ``csv``, ``imagenet``, ``fiftyone``, ``coco`` or
        ``dwca`` in ``directory`` (new or empty), written whole or not at all."""
        from fieldguide.platform.exports import export

        return export(self.project, directory, fmt=fmt, view=view, split=split, copy=copy,
                      include_pseudo=include_pseudo, include_synthetic=include_synthetic, overwrite=overwrite)

    def export_signals(self, out: str | Path, *, run: str | None = None) -> tuple[Path, int]:
        """``fieldguide signals export``: write :meth:`signals` to the CSV ``out``; returns ``(path, rows)``."""
        from fieldguide.curation.export import export_signals

        return export_signals(self.project, out, run_id=run)

    def status(self) -> dict:
        """``fieldguide status --json``: samples per split, class and origin, ranks, rejects, recent runs."""
        from fieldguide.platform.status import project_status

        return project_status(self.project)

    # ---- the store and the warehouse as tables -----------------------------------------------------
    def samples(self, view: str | None = None, *, split: str | None = None,
                fields: Iterable[str] = ()) -> pd.DataFrame:
        """One row per sample of the store, of its saved ``view`` (``to_review``, ``outliers``, ...; in
        the view's order) and/or of ``split``: ``sample_id``, ``filepath``, ``label``, ``split``,
        ``origin``, ``prediction``, ``confidence``, ``noise_score``, ``label_issue``,
        ``review_state`` (None where the step that writes one has not run), then one column per
        field path of ``fields`` (e.g. ``"observer"``, ``"pseudo_label.label"``), as stored."""
        from fieldguide.platform.exports.selection import select_view

        fields = list(fields)
        ds = self.dataset()
        missing = [f for f in fields if not has_field(ds, f.split(".")[0])]
        if missing:
            raise FieldguideError(f"no sample field {missing[0]!r} in the store of {self.root} "
                                  "(run the step that writes it first, or check the name)")
        present = {col: path for col, path in SAMPLE_COLUMNS.items() if has_field(ds, path.split(".")[0])}
        extra = [f for f in dict.fromkeys(fields) if f not in (*present.values(), "filepath", "origin")]
        df = store.samples_table(select_view(ds, view=view, split=split), [*present.values(), *extra])
        df = df.rename(columns={"id": "sample_id", **{path: col for col, path in present.items()}})
        for col in SAMPLE_COLUMNS:
            if col not in df:
                df[col] = None
        return df[["sample_id", "filepath", "label", "split", "origin", *SAMPLE_COLUMNS, *extra]]

    def signals(self, run: str | None = None) -> pd.DataFrame:
        """One row per sample with every signal of the flag run ``run`` (default: the latest), the
        table ``fieldguide signals export`` writes (see :func:`fieldguide.curation.export.signals_table`)."""
        from fieldguide.curation.export import signals_table

        return signals_table(self.project, run)

    def runs(self, kind: str | None = None) -> pd.DataFrame:
        """The warehouse's ``runs`` (of ``kind``: ``ingest``, ``embed``, ``flag``, ``train``, ...), oldest
        first: run_id, kind, config (JSON), status, started, finished, message, pid, host."""
        where = " WHERE kind = ?" if kind else ""
        return store.warehouse(self.project).query(f"SELECT * FROM runs{where} ORDER BY started",
                                                   [kind] if kind else [])

    def dataset(self):
        """The project's FiftyOne dataset (``fiftyone.core.dataset.Dataset``)."""
        return store.dataset(self.project, create=False)

    def view(self, name: str):
        """The saved view ``name`` (``to_review``, ``outliers``, ``near_duplicates``, ``scarce_classes``,
        ...) as a FiftyOne view, e.g. for ``fiftyone.launch_app(p.view("to_review"))``."""
        from fieldguide.platform.exports.selection import select_view

        return select_view(self.dataset(), view=name, split=None)

    # ---- a curator's decisions ---------------------------------------------------------------------
    def set_label(self, sample_ids: str | Iterable[str], label: str | None, *, actor: str | None = None):
        """Set the label of one sample id, or of each of several, to ``label`` (None removes it).
        See :meth:`set_labels`."""
        ids = [sample_ids] if isinstance(sample_ids, str) else list(sample_ids)
        return self.set_labels(dict.fromkeys(ids, label), actor=actor)

    def set_labels(self, labels: Mapping[str, str | None], *, actor: str | None = None):
        """A curator's decisions, sample id -> label, as from the App's ``set_label``
        (:func:`fieldguide.platform.review.decide`): each is recorded in the sample's
        ``label_history`` and the warehouse's ``label_events`` (source ``curator``, ``actor``
        default ``project.curator``) under a ``set_label`` run; the sample leaves the review queue
        (``resolved``, or ``dismissed`` when the label was already its own) and its Label Studio
        task, if open, is closed. Unknown sample ids or classes are errors and nothing changes.
        Returns the :class:`~fieldguide.platform.review.Decision` (run_id, changed, confirmed,
        closed_tasks, problems)."""
        return review.decide(self.project, dict(labels), actor=actor)

    def confirm(self, sample_ids: str | Iterable[str], *, actor: str | None = None):
        """Confirm the given labels of the samples (``dismissed``: out of the queue until the
        evidence changes); returns the :class:`~fieldguide.platform.review.Decision`."""
        return review.confirm(self.project, [sample_ids] if isinstance(sample_ids, str) else list(sample_ids),
                              actor=actor)
