"""Read-only queries the dashboards make: one function per question, each returning a DataFrame.

Every call opens a read-only connection, runs one query and closes it
(:meth:`Warehouse.query`), so the CLI can write to the warehouse between two page loads.
A project without a warehouse yet gives empty frames, never an error.
"""

from __future__ import annotations

import json

import duckdb
import pandas as pd

from fieldguide import names
from fieldguide.platform.warehouse import Warehouse

# metrics a leaderboard shows, in this order (missing ones are left out)
LEADERBOARD_METRICS = (
    names.TOP1, names.TOP5, names.MACRO_F1, names.ECE, names.COST_SCORE, *names.COST_METRICS,
)


def _query(wh: Warehouse, sql: str, params: list | None = None) -> pd.DataFrame:
    try:
        return wh.query(sql, params)
    except duckdb.CatalogException:  # a warehouse file no step has written tables to yet
        return pd.DataFrame()


# ---- runs -----------------------------------------------------------------------------
def runs(wh: Warehouse) -> pd.DataFrame:
    """Every run, newest first: run_id, kind, status, started, finished, message."""
    return _query(
        wh, "SELECT run_id, kind, status, started, finished, message FROM runs ORDER BY started DESC"
    )


def completed_kinds(wh: Warehouse) -> set[str]:
    """The kinds of run that completed at least once (``ingest``, ``flag``, ...)."""
    df = _query(wh, "SELECT DISTINCT kind FROM runs WHERE status = 'completed'")
    return set(df["kind"]) if not df.empty else set()


# ---- dataset health -------------------------------------------------------------------
def sample_counts(wh: Warehouse) -> pd.DataFrame:
    """Samples per label, split and origin (columns label, split, origin, n) from the snapshot."""
    return _query(
        wh,
        "SELECT label, coalesce(split, '(none)') AS split, coalesce(origin, 'real') AS origin, "
        "count(*) AS n FROM samples GROUP BY ALL ORDER BY n DESC, label",
    )


def class_fill(wh: Warehouse) -> pd.DataFrame:
    """Per class, where its training labels come from and what is waiting: ``real`` (curated
    real images), ``synthetic`` (kept diffusion augmentations), ``pseudo_accepted`` (pseudo-labels
    a curator accepted) and ``pseudo_pending`` (pseudo-labels on unlabeled samples, not yet
    reviewed: they are not training labels). Columns: class and those four counts."""
    sql = """
        WITH s AS (SELECT label, split, coalesce(origin, 'real') AS origin, pseudo_label FROM samples),
        kinds AS (
            SELECT label AS class,
                   CASE WHEN origin = 'synthetic' THEN 'synthetic'
                        WHEN origin = 'pseudo' OR pseudo_label IS NOT NULL THEN 'pseudo_accepted'
                        ELSE 'real' END AS kind
            FROM s WHERE label IS NOT NULL AND split = 'train'
            UNION ALL
            SELECT pseudo_label AS class, 'pseudo_pending' AS kind
            FROM s WHERE label IS NULL AND pseudo_label IS NOT NULL
        )
        SELECT class,
               count(*) FILTER (WHERE kind = 'real') AS real,
               count(*) FILTER (WHERE kind = 'synthetic') AS synthetic,
               count(*) FILTER (WHERE kind = 'pseudo_accepted') AS pseudo_accepted,
               count(*) FILTER (WHERE kind = 'pseudo_pending') AS pseudo_pending
        FROM kinds GROUP BY class ORDER BY class
    """
    try:
        return _query(wh, sql)
    except duckdb.BinderException:  # a warehouse from before pseudo-labels were mirrored
        return pd.DataFrame()


def ingest_rejects(wh: Warehouse) -> pd.DataFrame:
    """Rejects of every ingest run, newest run first: run_id, started, path, reason.

    Notices (files ingested with a decision reported beside them) are not rejects.
    """
    return _query(
        wh,
        "SELECT j.run_id, r.started, j.path, j.reason FROM rejects j "
        "LEFT JOIN runs r USING (run_id) WHERE coalesce(j.kind, 'reject') = 'reject' "
        "ORDER BY r.started DESC NULLS LAST, j.path",
    )


def latest_signal(wh: Warehouse, signal: str) -> pd.DataFrame:
    """One signal from the newest run that wrote it, with the sample's file and labels.

    Columns: run_id, sample_id, value, filepath, label, predicted_label; highest value first.
    """
    return _query(
        wh,
        """
        WITH latest AS (
            SELECT s.run_id FROM signals s LEFT JOIN runs r USING (run_id)
            WHERE s.signal = ?
            GROUP BY s.run_id, r.started ORDER BY r.started DESC NULLS LAST, s.run_id DESC LIMIT 1
        )
        SELECT s.run_id, s.sample_id, s.value, m.filepath, m.label, m.predicted_label
        FROM signals s JOIN latest USING (run_id) LEFT JOIN samples m USING (sample_id)
        WHERE s.signal = ?
        ORDER BY s.value DESC, s.sample_id
        """,
        [signal, signal],
    )


def datalab_issue(wh: Warehouse, issue: str) -> pd.DataFrame | None:
    """The samples Datalab marks with ``issue`` (``outlier``, ``near_duplicate``) in the newest
    flag run, with the issue's score: :func:`latest_signal`'s columns less ``value``, plus
    ``score`` (low: more severe), most severe first. None when no run wrote the issue yet.

    These are the samples ``flag`` tags (the App's ``outliers`` and ``near_duplicates`` views) and
    counts in its report.
    """
    flags = latest_signal(wh, names.issue_flag(issue))
    if flags.empty:
        return None
    flags = flags[flags["value"] >= 0.5].drop(columns="value")
    scores = latest_signal(wh, names.issue_score(issue))
    if scores.empty:
        return flags.assign(score=float("nan"))
    flags = flags.merge(scores[["sample_id", "value"]].rename(columns={"value": "score"}), on="sample_id", how="left")
    return flags.sort_values(["score", "sample_id"], na_position="last").reset_index(drop=True)


# ---- review queue ---------------------------------------------------------------------
def flagged_over_runs(wh: Warehouse) -> pd.DataFrame:
    """Flagged samples per run, oldest first: run_id, kind, started, flagged.

    The run's ``flagged`` metric, else the count of its ``label_issue`` signals.
    """
    return _query(
        wh,
        """
        SELECT r.run_id, r.kind, r.started, coalesce(m.flagged, s.flagged) AS flagged
        FROM runs r
        LEFT JOIN (SELECT run_id, max(value) AS flagged FROM metrics WHERE name = ?
                   GROUP BY run_id) m USING (run_id)
        LEFT JOIN (SELECT run_id, count(*) FILTER (WHERE value >= 0.5) AS flagged FROM signals
                   WHERE signal = ? GROUP BY run_id) s USING (run_id)
        WHERE m.flagged IS NOT NULL OR s.flagged IS NOT NULL
        ORDER BY r.started
        """,
        [names.FLAGGED, names.LABEL_ISSUE],
    )


def review_states(wh: Warehouse) -> pd.DataFrame:
    """Samples per review state (``review_state`` of the samples snapshot): state, samples, most first.

    Empty when the snapshot has no such column (a warehouse from before review states) or no state.
    """
    try:
        return _query(
            wh,
            "SELECT review_state AS state, count(*) AS samples FROM samples WHERE review_state IS NOT NULL "
            "GROUP BY review_state ORDER BY samples DESC, state",
        )
    except duckdb.BinderException:
        return pd.DataFrame()


def flagged_samples(wh: Warehouse, limit: int = 24) -> pd.DataFrame:
    """The samples the store marks ``label_issue``, highest noise score first.

    Columns: sample_id, filepath, label, predicted_label, confidence, noise_score, split, origin.
    """
    return _query(
        wh,
        "SELECT sample_id, filepath, label, predicted_label, confidence, noise_score, split, origin "
        "FROM samples WHERE label_issue ORDER BY noise_score DESC NULLS LAST, sample_id LIMIT ?",
        [int(limit)],
    )


def flagged_total(wh: Warehouse) -> int:
    df = _query(wh, "SELECT count(*) AS n FROM samples WHERE label_issue")
    return 0 if df.empty else int(df.iloc[0, 0])


def latest_signals(wh: Warehouse, sample_ids: list[str]) -> pd.DataFrame:
    """Each signal's newest value for ``sample_ids``, one row per sample and one column per signal."""
    if not sample_ids:
        return pd.DataFrame()
    df = _query(
        wh,
        """
        SELECT s.sample_id, s.signal, arg_max(s.value, r.started) AS value
        FROM signals s LEFT JOIN runs r USING (run_id)
        WHERE s.sample_id IN (SELECT unnest(?::VARCHAR[]))
        GROUP BY s.sample_id, s.signal
        """,
        [list(sample_ids)],
    )
    if df.empty:
        return df
    return df.pivot(index="sample_id", columns="signal", values="value").reset_index()


def signal_summary(wh: Warehouse) -> pd.DataFrame:
    """Every signal in the newest run that wrote it: signal, run_id, samples, mean, min, max, flagged.

    ``flagged`` counts values of at least 0.5 for the 0/1 signals (``names.FLAG_SIGNALS``) and is
    empty for scores.
    """
    df = _query(
        wh,
        """
        WITH per_run AS (
            SELECT s.signal, s.run_id, max(r.started) AS started, count(*) AS samples,
                   avg(s.value) AS mean, min(s.value) AS min, max(s.value) AS max,
                   count(*) FILTER (WHERE s.value >= 0.5) AS flagged
            FROM signals s LEFT JOIN runs r USING (run_id) GROUP BY s.signal, s.run_id
        )
        SELECT signal, run_id, samples, mean, min, max, flagged FROM per_run
        QUALIFY row_number() OVER (PARTITION BY signal ORDER BY started DESC NULLS LAST, run_id DESC) = 1
        ORDER BY signal
        """,
    )
    if not df.empty:
        df["flagged"] = df["flagged"].where(df["signal"].isin(names.FLAG_SIGNALS))
    return df


# ---- relabeling -----------------------------------------------------------------------
def relabel_tasks(wh: Warehouse) -> pd.DataFrame:
    """Every relabeling task: project, sample_id, task_id, status, pushed, answered, answer."""
    return _query(
        wh,
        "SELECT project, sample_id, task_id, status, pushed, answered, answer FROM relabel_tasks "
        "ORDER BY pushed DESC NULLS LAST, sample_id",
    )


def answer_decision(answer: object) -> str | None:
    """The label a task's stored answer decided: the ``decision`` of the JSON the pull writes
    (None for a tie or no decision), or the answer itself when it is a plain label."""
    if not isinstance(answer, str) or not answer:
        return None
    data = _json_object(answer)
    if data is None:
        return answer
    decision = data.get("decision")
    return str(decision) if decision else None


def relabel_outcomes(wh: Warehouse) -> pd.DataFrame:
    """Answered tasks with the label the sample had when it was pushed, and kept / changed.

    ``answer`` is the label the answer decided (:func:`answer_decision`). The label at push time
    is the ``old`` of the first label event after the push, else the sample's label now (no event
    since). Columns: project, sample_id, answer, answered, label_at_push, outcome.
    """
    df = _query(
        wh,
        """
        SELECT t.project, t.sample_id, t.answer, t.answered,
               coalesce((SELECT arg_min(e.old, e.time) FROM label_events e
                         WHERE e.sample_id = t.sample_id AND e.time >= t.pushed),
                        m.label) AS label_at_push
        FROM relabel_tasks t LEFT JOIN samples m USING (sample_id)
        WHERE t.status = 'answered'
        ORDER BY t.answered DESC NULLS LAST, t.sample_id
        """,
    )
    if not df.empty:
        df["answer"] = df["answer"].map(answer_decision)
        df["outcome"] = [
            "unknown" if pd.isna(before) or pd.isna(answer) else ("kept" if answer == before else "changed")
            for answer, before in zip(df["answer"], df["label_at_push"])
        ]
    return df


def annotators(wh: Warehouse) -> pd.DataFrame:
    """Annotators from the newest run that scored them: run_id, annotator, quality, agreement, num_labels."""
    return _query(
        wh,
        """
        WITH latest AS (
            SELECT a.run_id FROM annotators a LEFT JOIN runs r USING (run_id)
            GROUP BY a.run_id, r.started ORDER BY r.started DESC NULLS LAST, a.run_id DESC LIMIT 1
        )
        SELECT a.run_id, a.annotator, a.quality, a.agreement, a.num_labels
        FROM annotators a JOIN latest USING (run_id)
        ORDER BY a.quality DESC NULLS LAST, a.annotator
        """,
    )


def label_events(wh: Warehouse, limit: int = 200) -> pd.DataFrame:
    """The newest label changes: time, sample_id, old, new, source, actor, run_id."""
    return _query(
        wh,
        "SELECT time, sample_id, old, new, source, actor, run_id FROM label_events "
        "ORDER BY time DESC NULLS LAST, event_id LIMIT ?",
        [int(limit)],
    )


# ---- models ---------------------------------------------------------------------------
def metric_splits(wh: Warehouse) -> list[str]:
    """Splits that have model metrics (top1 or macro_f1), ``test`` first."""
    df = _query(
        wh, "SELECT DISTINCT split FROM metrics WHERE name IN (?, ?) ORDER BY split", [names.TOP1, names.MACRO_F1]
    )
    splits = [] if df.empty else [s for s in df["split"] if s is not None]
    return sorted(splits, key=lambda s: (s != "test", s != "val", s))


def _json_object(text: object) -> dict | None:
    """``text`` parsed as a JSON object, or None (not a string, not JSON, not an object)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _backbone(config: object) -> str | None:
    data = _json_object(config)
    if data is None:
        return None
    models = data.get("models")
    value = data.get("backbone") or (models.get("backbone") if isinstance(models, dict) else None)
    return str(value) if value else None


def leaderboard(wh: Warehouse, split: str) -> pd.DataFrame:
    """One row per run with accuracy metrics on ``split``, best macro-F1 (then top-1) first.

    Columns: run_id, kind, backbone, started and those of :data:`LEADERBOARD_METRICS` that any
    run has; params and images/s come from ``backbone_costs`` where the run has none.
    """
    df = _query(
        wh,
        "SELECT r.run_id, r.kind, r.started, coalesce(r.config, '{}') AS config, m.name, m.value, "
        "coalesce(p.config, '{}') AS predict_config FROM metrics m JOIN runs r USING (run_id) "
        "LEFT JOIN runs p ON p.run_id = json_extract_string(r.config, '$.predict_run') "
        "WHERE (m.split = ? OR m.split = ?) AND r.run_id IN "
        "(SELECT run_id FROM metrics WHERE split = ? AND name IN (?, ?))",
        [split, names.COST_SPLIT, split, names.TOP1, names.MACRO_F1],
    )
    if df.empty:
        return df
    values = df.pivot_table(index="run_id", columns="name", values="value", aggfunc="first")
    info = df.drop_duplicates("run_id").set_index("run_id")[["kind", "started", "config", "predict_config"]]
    wide = info.join(values).rename_axis("run_id").reset_index()
    # an evaluate run names the predict run it scored; that run names the backbone
    wide["backbone"] = wide["config"].map(_backbone).fillna(wide["predict_config"].map(_backbone))
    costs = _query(wh, "SELECT backbone, params, macs, images_per_s FROM backbone_costs")
    if not costs.empty:
        costs = costs.set_index("backbone")
        for col in ("params", "macs", "images_per_s"):
            from_costs = wide["backbone"].map(costs[col])
            wide[col] = wide[col].fillna(from_costs) if col in wide else from_costs
    metrics = [m for m in LEADERBOARD_METRICS if m in wide and wide[m].notna().any()]
    order = [m for m in (names.MACRO_F1, names.TOP1) if m in metrics]
    wide = wide.sort_values(order + ["started"], ascending=False, na_position="last")
    return wide[["run_id", "kind", "backbone", *metrics, "started"]].reset_index(drop=True)


def curve_runs(wh: Warehouse) -> pd.DataFrame:
    """Runs with training curves, newest first: run_id, kind, method (the run's training method,
    ``two-stage-entropy``, ``ce``, ...; from its config), started, steps."""
    return _query(
        wh,
        "SELECT c.run_id, any_value(r.kind) AS kind, any_value(json_extract_string(r.config, '$.method')) AS method, "
        "any_value(r.started) AS started, max(c.step) AS steps "
        "FROM curves c LEFT JOIN runs r USING (run_id) GROUP BY c.run_id "
        "ORDER BY started DESC NULLS LAST, c.run_id",
    )


def curves(wh: Warehouse, run_ids: list[str]) -> pd.DataFrame:
    """Per-step curves of ``run_ids``: run_id, step, name, value."""
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "step", "name", "value"])
    return _query(
        wh,
        "SELECT run_id, step, name, value FROM curves WHERE run_id IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY run_id, name, step",
        [list(run_ids)],
    )


def class_metric_runs(wh: Warehouse) -> pd.DataFrame:
    """Runs with per-class metrics, newest first: run_id, split, kind, started, classes."""
    return _query(
        wh,
        "SELECT c.run_id, c.split, any_value(r.kind) AS kind, any_value(r.started) AS started, "
        "count(*) AS classes FROM class_metrics c LEFT JOIN runs r USING (run_id) "
        "GROUP BY c.run_id, c.split ORDER BY started DESC NULLS LAST, c.run_id, c.split",
    )


def class_f1_change(wh: Warehouse, run_a: str, run_b: str, split: str) -> pd.DataFrame:
    """Per-class F1 of two runs on ``split``: class, f1_a, f1_b, change (b - a), support.

    Biggest drop first; a class one run lacks has an empty F1 there.
    """
    return _query(
        wh,
        """
        SELECT coalesce(a.class, b.class) AS class, a.f1 AS f1_a, b.f1 AS f1_b,
               b.f1 - a.f1 AS change, coalesce(b.support, a.support) AS support
        FROM (SELECT * FROM class_metrics WHERE run_id = ? AND split = ?) a
        FULL OUTER JOIN (SELECT * FROM class_metrics WHERE run_id = ? AND split = ?) b USING (class)
        ORDER BY change ASC NULLS LAST, class
        """,
        [run_a, split, run_b, split],
    )


def confusion_runs(wh: Warehouse) -> pd.DataFrame:
    """Runs with a confusion matrix, newest first: run_id, split, kind, started."""
    return _query(
        wh,
        "SELECT c.run_id, c.split, any_value(r.kind) AS kind, any_value(r.started) AS started "
        "FROM confusions c LEFT JOIN runs r USING (run_id) GROUP BY c.run_id, c.split "
        "ORDER BY started DESC NULLS LAST, c.run_id, c.split",
    )


def confusions(wh: Warehouse, run_id: str, split: str) -> pd.DataFrame:
    """The confusion matrix of one run as rows: true_label, predicted_label, count."""
    return _query(
        wh,
        "SELECT true_label, predicted_label, count FROM confusions WHERE run_id = ? AND split = ? "
        "ORDER BY true_label, predicted_label",
        [run_id, split],
    )
