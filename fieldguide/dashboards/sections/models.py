"""Models: a leaderboard of runs, training curves (mean entropy and λ for two-stage entropy
runs), per-class F1 changes between two runs, the confusion matrix and most-confused pairs."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from fieldguide import names
from fieldguide.dashboards import context, queries


def most_confused(matrix: pd.DataFrame, limit: int = 15) -> pd.DataFrame:
    """Off-diagonal cells of ``matrix`` (from :func:`queries.confusions`), most frequent first.

    Columns: true_label, predicted_label, count, share (of the true class's samples).
    """
    off = matrix[(matrix["true_label"] != matrix["predicted_label"]) & (matrix["count"] > 0)].copy()
    if off.empty:
        return pd.DataFrame(columns=["true_label", "predicted_label", "count", "share"])
    totals = matrix.groupby("true_label")["count"].sum()
    off["share"] = off["count"] / off["true_label"].map(totals)
    off = off.sort_values(["count", "true_label", "predicted_label"], ascending=[False, True, True])
    return off.head(limit).reset_index(drop=True)


def lambda_switch(curve: pd.DataFrame) -> int | None:
    """The first step where λ turns negative after being positive (explore -> exploit), if any."""
    lam = curve[curve["name"] == names.LAMBDA].sort_values("step")
    was_positive = False
    for step, value in zip(lam["step"], lam["value"]):
        if value > 0:
            was_positive = True
        elif value < 0 and was_positive:
            return int(step)
    return None


def leaderboard_section(wh) -> None:
    st.subheader("Leaderboard")
    splits = queries.metric_splits(wh)
    split = st.selectbox("Split", splits, key="leaderboard_split") if len(splits) > 1 else splits[0]
    board = queries.leaderboard(wh, split)
    st.caption(f"{len(board)} runs on the {split} split, best macro-F1 first.")
    fmt = {m: st.column_config.NumberColumn(m, format="%.3f") for m in ("top1", "top5", "macro_f1", "ece")}
    fmt.update({m: st.column_config.NumberColumn(m, format="%.0f") for m in ("params", "macs")})
    fmt["images_per_s"] = st.column_config.NumberColumn("images/s", format="%.1f")
    fmt["cost_score"] = st.column_config.NumberColumn("cost_score", format="%.3f")
    st.dataframe(board, hide_index=True, alt="leaderboard", column_config=fmt)
    speed_section(board)


def speed_section(board: pd.DataFrame) -> None:
    """Macro-F1 against images/s, one point per backbone measured: a trade-off needs two speeds."""
    if not {names.MACRO_F1, names.IMAGES_PER_S} <= set(board.columns):
        return
    known = board.dropna(subset=[names.MACRO_F1, names.IMAGES_PER_S])
    speeds = known[names.IMAGES_PER_S].round(1).unique()
    if len(speeds) < 2:
        if len(known):
            backbones = ", ".join(sorted(known["backbone"].dropna().unique())) or "backbone unknown"
            st.caption(f"Every run with a measured speed runs at {speeds[0]:.1f} images/s ({backbones}): "
                       "no accuracy-speed trade-off to plot.")
        return
    base = alt.Chart(known).encode(
        x=alt.X(f"{names.IMAGES_PER_S}:Q", title="images/s (more is faster)",
                scale=alt.Scale(zero=False, nice=True, padding=60)),
        y=alt.Y(f"{names.MACRO_F1}:Q", title="macro-F1", scale=alt.Scale(domain=[0, 1])),
        tooltip=["run_id", "kind", "backbone", names.MACRO_F1, names.IMAGES_PER_S],
    )
    points = base.mark_circle(size=140, opacity=0.8).encode(color=alt.Color("backbone:N", legend=None))
    labels = base.mark_text(align="left", dx=9, color="#333").encode(text="backbone:N")
    st.altair_chart(alt.layer(points, labels).properties(height=300, title="accuracy against speed"),
                    width="stretch")


def curves_section(wh) -> None:
    st.subheader("Training curves")
    runs = queries.curve_runs(wh)
    if runs.empty:
        st.caption("No training curves yet (fieldguide train writes loss, accuracy, mean entropy and λ).")
        return
    method = dict(zip(runs["run_id"], runs["method"]))
    default = runs["run_id"].head(2).tolist()
    chosen = st.multiselect("Runs", runs["run_id"].tolist(), default=default, key="curve_runs")
    data = queries.curves(wh, chosen)
    if data.empty:
        st.caption("Pick at least one run.")
        return
    labelled = data.assign(run=[f"{r} ({method.get(r) or 'method unknown'})" for r in data["run_id"]])
    chart = alt.Chart(labelled).mark_line(point=True).encode(
        x=alt.X("step:Q", title="epoch", axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format=".3~g")),
        color=alt.Color("run:N", title="run", legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=400)),
        tooltip=["run_id", "name", "step", "value"],
    ).properties(height=160, width=230).facet(
        facet=alt.Facet("name:N", title=None, sort=list(names.CURVES)), columns=3)
    st.altair_chart(chart.resolve_scale(y="independent"), width="content")
    rows = []
    for run_id, curve in data.groupby("run_id"):
        last = curve.sort_values("step").groupby("name")["value"].last()
        rows.append({
            "run_id": run_id,
            "method": method.get(run_id),
            "epochs": int(curve["step"].max()),
            "lambda_switch_epoch": lambda_switch(curve),
            "final_loss": last.get(names.LOSS),
            "final_train_acc": last.get(names.TRAIN_ACC),
            "final_eval_acc": last.get(names.EVAL_ACC),
            "final_mean_entropy": last.get(names.MEAN_ENTROPY),
        })
    acc = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(pd.DataFrame(rows), hide_index=True, alt="curve summary",
                 column_config={c: acc for c in ("final_loss", "final_train_acc", "final_eval_acc",
                                                 "final_mean_entropy")})


def class_f1_section(wh) -> None:
    st.subheader("Per-class F1: what changed between two runs")
    runs = queries.class_metric_runs(wh)
    if runs.empty:
        st.caption("No per-class metrics yet (fieldguide evaluate writes them).")
        return
    split = runs["split"].iloc[0]
    splits = runs["split"].unique().tolist()
    if len(splits) > 1:
        split = st.selectbox("Split", splits, key="f1_split")
    ids = runs[runs["split"] == split]["run_id"].tolist()
    if len(ids) < 2:
        st.caption(f"Only one run ({ids[0]}) has per-class metrics on {split}; evaluate another to compare.")
        return
    left, right = st.columns(2)
    run_a = left.selectbox("Before (A)", ids, index=1, key="f1_run_a")
    run_b = right.selectbox("After (B)", ids, index=0, key="f1_run_b")
    change = queries.class_f1_change(wh, run_a, run_b, split)
    known = change.dropna(subset=["change"])
    cols = st.columns(3)
    cols[0].metric("Classes better", int((known["change"] > 0).sum()))
    cols[1].metric("Classes worse", int((known["change"] < 0).sum()))
    cols[2].metric("Mean F1 change", f"{known['change'].mean():+.3f}" if len(known) else "n/a")
    if (known["change"] != 0).any():
        shown = pd.concat([known.head(15), known.tail(15)]).drop_duplicates("class")
        st.altair_chart(alt.Chart(shown).mark_bar().encode(
            x=alt.X("change:Q", title="F1 change (B - A)"),
            y=alt.Y("class:N", sort="x", title=None),
            color=alt.condition("datum.change < 0", alt.value("#d62728"), alt.value("#2ca02c")),
            tooltip=["class", "f1_a", "f1_b", "change", "support"],
        ).properties(height=alt.Step(22)), width="stretch")
    elif len(known):
        st.caption(f"Every class has the same F1 in {run_a} and {run_b}.")
    st.dataframe(change, hide_index=True, alt="class f1 change")


def confusion_section(wh, max_classes: int) -> None:
    """A bigger matrix than ``max_classes`` (dashboards.matrix_max_classes) shows the classes with the most
    confusions."""
    st.subheader("Confusion matrix")
    runs = queries.confusion_runs(wh)
    if runs.empty:
        st.caption("No confusion matrix yet (fieldguide evaluate writes one).")
        return
    options = [f"{r.run_id} ({r.split})" for r in runs.itertuples()]
    picked = st.selectbox("Run", options, key="confusion_run") if len(options) > 1 else options[0]
    row = runs.iloc[options.index(picked)]
    matrix = queries.confusions(wh, row["run_id"], row["split"])
    pairs = most_confused(matrix)
    classes = sorted(set(matrix["true_label"]) | set(matrix["predicted_label"]))
    if pairs.empty:
        st.caption(f"No confusion: every {row['split']} sample of {row['run_id']} is predicted as its label.")
    if len(classes) > max_classes and not pairs.empty:
        involved = pd.concat([pairs["true_label"], pairs["predicted_label"]]).unique().tolist()
        classes = sorted(involved)[:max_classes]
        st.caption(f"Showing the {len(classes)} classes in the most-confused pairs.")
    shown = matrix[matrix["true_label"].isin(classes) & matrix["predicted_label"].isin(classes)]
    base = alt.Chart(shown).encode(
        x=alt.X("predicted_label:N", sort=classes, title="predicted", axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("true_label:N", sort=classes, title="true"),
        tooltip=["true_label", "predicted_label", "count"],
    )
    heat = base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues")))
    layers = [heat]
    if len(classes) <= 25:  # the counts fit in the cells
        layers.append(base.mark_text(fontSize=11).encode(
            text="count:Q", color=alt.condition(alt.datum.count > shown["count"].max() / 2,
                                                alt.value("white"), alt.value("#333"))))
    cell = max(12, min(44, 640 // max(len(classes), 1)))
    st.altair_chart(alt.layer(*layers).properties(width=alt.Step(cell), height=alt.Step(cell)), width="content")
    if pairs.empty:
        return
    st.markdown("**Most-confused pairs**")
    st.dataframe(pairs, hide_index=True, alt="most confused",
                 column_config={"share": st.column_config.NumberColumn("share", format="%.2f")})


def main() -> None:
    ctx = context.current()
    st.title("Models")
    wh = ctx.warehouse
    if not queries.metric_splits(wh) and queries.curve_runs(wh).empty:
        context.show_empty(ctx, "No model metrics yet: evaluate a model (or train one).", "evaluate")
        return
    if queries.metric_splits(wh):
        leaderboard_section(wh)
    curves_section(wh)
    class_f1_section(wh)
    confusion_section(wh, ctx.project.config.dashboards.matrix_max_classes)


main()
